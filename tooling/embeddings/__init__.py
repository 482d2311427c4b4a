"""The offline static embedding model used by tool search.

``minilm-static.npz`` beside this file is all-MiniLM-L6-v2 distilled by ``distill.py`` into a
model2vec-style static model: one vector per WordPiece token, PCA-reduced and stored as float16,
plus the tokenizer's vocabulary. Embedding a text is: tokenize, look the token vectors up, average
them, L2-normalise. That needs numpy and :mod:`tooling.embeddings.wordpiece` only, never torch,
and nothing is fetched from anywhere at run time.

The file holds, without pickles:

- ``embeddings``: float16 ``(vocab_size, dim)``
- ``vocab``: the tokens, UTF-8, one per line (line ``i`` is token id ``i``)
- ``meta``: UTF-8 JSON (source model, dims, tokenizer settings, how it was made)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from digitorn_site.lazy import lazy_module
from tooling.embeddings.wordpiece import WordPieceTokenizer

# numpy loads on the first index build or search, not when the registry is imported (issue 14).
np = lazy_module("numpy")

MODEL_PATH = Path(__file__).resolve().parent / "minilm-static.npz"
# Overrides the model file; "off" disables semantic search (keyword-only).
MODEL_ENV_VAR = "DIGITORN_EMBEDDING_MODEL"
_MAX_TOKENS = 512


class EmbeddingModelError(Exception):
    """The model file is missing or not a model this loader understands."""


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 row vectors of one width."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class StaticEmbedder:
    """Mean of per-token static vectors, L2-normalised (the model2vec inference rule)."""

    def __init__(self, embeddings: np.ndarray, vocab: Sequence[str], *, meta: dict[str, Any] | None = None):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(vocab):
            raise EmbeddingModelError(
                f"embeddings have shape {embeddings.shape} but the vocabulary has {len(vocab)} tokens"
            )
        self.meta = dict(meta or {})
        self.name = str(self.meta.get("name", "static"))
        self.embeddings = embeddings
        self.dim = int(embeddings.shape[1])
        tokenizer_options: dict[str, Any] = {
            "unk_token": str(self.meta.get("unk_token", "[UNK]")),
            "prefix": str(self.meta.get("continuing_subword_prefix", "##")),
        }
        if "special_tokens" in self.meta:
            tokenizer_options["special_tokens"] = tuple(self.meta["special_tokens"])
        self.tokenizer = WordPieceTokenizer(vocab, **tokenizer_options)
        self._unk_id = self.tokenizer.unk_id

    def token_ids(self, text: str) -> list[int]:
        # model2vec drops unknown tokens rather than averaging in the [UNK] vector.
        ids = [i for i in self.tokenizer.encode(text) if i != self._unk_id]
        return ids[:_MAX_TOKENS]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = self.token_ids(text)
            if ids:
                out[row] = self.embeddings[ids].astype(np.float32).mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


def load_embedder(path: str | os.PathLike[str] | None = None) -> StaticEmbedder:
    """Load a static model file; raises :class:`EmbeddingModelError` saying what is wrong."""
    model_path = Path(path) if path is not None else MODEL_PATH
    if not model_path.is_file():
        raise EmbeddingModelError(f"embedding model file not found: {model_path}")
    try:
        with np.load(model_path, allow_pickle=False) as data:
            embeddings = data["embeddings"]
            vocab = bytes(data["vocab"]).decode("utf-8").split("\n")
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise EmbeddingModelError(f"embedding model file {model_path} cannot be read: {exc}") from exc
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise EmbeddingModelError(f"embedding model file {model_path}: embeddings are {embeddings.dtype}, not floats")
    return StaticEmbedder(embeddings, vocab, meta=meta)


def configured_model_path() -> Path | None:
    """The model file to use: ``$DIGITORN_EMBEDDING_MODEL`` if set (None when "off"), else the shipped one."""
    value = os.environ.get(MODEL_ENV_VAR, "").strip()
    if not value:
        return MODEL_PATH
    if value.lower() in ("off", "none", "0", "false"):
        return None
    return Path(value).expanduser()


__all__ = [
    "MODEL_ENV_VAR",
    "MODEL_PATH",
    "Embedder",
    "EmbeddingModelError",
    "StaticEmbedder",
    "configured_model_path",
    "load_embedder",
]
