"""rag: a searchable index of the workspace's files (and of texts given in the call), per knowledge base.

Action names follow the original Digitorn's rag module: ``ingest`` (texts), ``ingest_file``,
``ingest_directory`` (incremental: unchanged files are skipped, vanished ones dropped), ``query``
(one knowledge base, results with citations and a ``context_block``), ``search`` (the Go port's
direct search, every knowledge base unless one is named), ``list_knowledge_bases``,
``delete_knowledge_base``; ``remove`` drops documents (a file or folder's files, or text ids)
from the index — the original has no per-document removal.

Text is cut into chunks of ``chunk_size`` characters overlapping by ``chunk_overlap`` (cuts prefer a
paragraph, line, sentence or word boundary), embedded with the static model tool search uses
(:func:`tooling.search.default_embedder`) and stored as rows of ``RagDocument``/``RagChunk``, vectors
as float32 bytes. A query ranks chunks by ``0.6 · cosine + 0.4 · BM25`` (normalised), so exact
words (names, codes) count as well as meaning; with the model switched off it is BM25 alone.

Incremental: a file is re-read only when its size or mtime changed, re-embedded only when its
SHA-256 changed. With ``sources`` in the config (workspace folders), every ``query``/``search``
first brings those folders' index up to date the same way (``auto_sync``, default on).

Paths are opened through :class:`~tooling.modules._workspace.Beneath` (no check-then-open), hard-
linked files and non-regular files are refused, binary files skipped. numpy and the embedder are
imported inside the functions that use them: most apps never index anything.

Config: ``workspace`` (default: the filesystem module's), ``chunk_size`` (500), ``chunk_overlap``
(50), ``max_file_bytes`` (2 MiB), ``max_files`` (per directory call, 2000), ``max_chunks`` (per app,
50 000), ``extensions`` (default: every text file, and PDFs), ``sources``, ``auto_sync``,
``knowledge_base`` (the default one's name, "default").
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import os
import re
import stat as stat_mod
from collections import Counter
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Sum

from tooling.models import RagChunk, RagDocument
from tooling.modules._workspace import Beneath, Target, module_workspace
from tooling.modules.base import Module, ToolError, action
from tooling.search import STOPWORDS, default_embedder, stem, words

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 500
DEFAULT_CHUNK_OVERLAP = 50
DEFAULT_MAX_FILE_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_FILES = 2000
DEFAULT_MAX_CHUNKS = 50_000
DEFAULT_KB = "default"
MAX_QUERY_CHARS = 2000
MAX_DOCUMENTS_PER_CALL = 500
_MAX_SOURCE_CHARS = 1024  # RagDocument.source_id
_KB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Weighted fusion of the two rankings; cosine of the static model is rescaled like tool search's.
_SEM_WEIGHT = 0.6
_COS_FLOOR, _COS_CEIL = 0.1, 0.9
_BM25_K1, _BM25_B = 1.2, 0.75

_KB_PARAM = {
    "type": "string",
    "description": "Knowledge base name (letters, digits, '_', '-', '.'); default 'default' (alias: kb).",
}
_KB_ALIAS = {"kb": "knowledge_base"}


# -- text -----------------------------------------------------------------------------------------


def chunk_text(text: str, size: int, overlap: int) -> list[tuple[int, int, str]]:
    """(start, end, piece) windows of at most ``size`` characters overlapping by ``overlap``.

    A cut lands on the last paragraph, line, sentence or word break of the window's second half,
    so chunks rarely split a word; every step advances, so any text terminates.
    """
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("chunk_overlap must be at least 0 and below chunk_size")
    out: list[tuple[int, int, str]] = []
    n, start = len(text), 0
    while start < n:
        end = min(start + size, n)
        if end < n:
            window = text[start:end]
            for sep in ("\n\n", "\n", ". ", " "):
                cut = window.rfind(sep, size // 2)
                if cut > 0:
                    end = start + cut + len(sep)
                    break
        piece = text[start:end]
        if piece.strip():
            out.append((start, end, piece))
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return out


def _terms(text: str) -> list[str]:
    return [stem(w) for w in words(text) if w not in STOPWORDS]


def _padded_terms(text: str) -> tuple[str, int]:
    """The stored form of a chunk's words: " s1 s2 s1 " and how many there are."""
    terms = _terms(text)
    return (" " + " ".join(terms) + " " if terms else ""), len(terms)


def _bm25(query: str, chunks: list[tuple[str, int]]) -> list[float]:
    """BM25 for ``query`` of every (padded terms, term count) chunk; the chunk set is the corpus."""
    q = set(_terms(query))
    if not q or not chunks:
        return [0.0] * len(chunks)
    n = len(chunks)
    avg = sum(length for _, length in chunks) / n or 1.0
    tfs = {t: [terms.count(f" {t} ") for terms, _ in chunks] for t in q}
    scores = [0.0] * n
    for counts in tfs.values():
        df = sum(1 for c in counts if c)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, tf in enumerate(counts):
            if tf:
                length = chunks[i][1]
                scores[i] += idf * tf * (_BM25_K1 + 1) / (tf + _BM25_K1 * (1 - _BM25_B + _BM25_B * length / avg))
    return scores


def _embedder():
    return default_embedder()


def _model_key(embedder) -> str:
    return f"{embedder.name}:{embedder.dim}" if embedder is not None else ""


def _decode(raw: bytes, rel: str) -> str | None:
    """The UTF-8 text of a file, None for binary content (NUL bytes or not UTF-8)."""
    if rel.lower().endswith(".pdf"):
        return _pdf_text(raw, rel)
    if b"\x00" in raw[:8192]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _pdf_text(raw: bytes, rel: str) -> str:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            raise ToolError(f"'{rel}' is an encrypted PDF; it cannot be indexed.")
        return "\n\n".join((page.extract_text() or "") for page in reader.pages)
    except ToolError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise ToolError(f"'{rel}' is not a readable PDF ({type(exc).__name__}).")


def _newlines(text: str) -> list[int]:
    """Offsets of every newline, for line numbers by bisection (a 2 MiB file has many chunks)."""
    return [m.start() for m in re.finditer("\n", text)]


def _line_at(newlines: list[int], index: int) -> int:
    return bisect.bisect_left(newlines, index) + 1



# query and search take the same parameters (search covers every knowledge base unless one is named).
_SEARCH_PARAMS = {
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
        "knowledge_base": _KB_PARAM,
        "top_k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5},
        "min_score": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
    },
    "required": ["query"],
}

class RagModule(Module):
    id = "rag"
    description = (
        "Knowledge bases over the workspace's documents: index files and texts, then retrieve the passages "
        "most relevant to a question (retrieval-augmented generation)."
    )
    config_schema = {
        "type": "object",
        "properties": {
            "workspace": {"type": "string"},
            "chunk_size": {"type": "integer", "minimum": 50, "maximum": 20000, "default": DEFAULT_CHUNK_SIZE},
            "chunk_overlap": {"type": "integer", "minimum": 0, "maximum": 5000, "default": DEFAULT_CHUNK_OVERLAP},
            "max_file_bytes": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_FILE_BYTES},
            "max_files": {"type": "integer", "minimum": 1, "maximum": 100000, "default": DEFAULT_MAX_FILES},
            "max_chunks": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_CHUNKS},
            "extensions": {"type": "array", "items": {"type": "string"}},
            # A folder of the workspace, or the original's source object ({type: file, path,
            # knowledge_base, extensions, recursive, max_files, ...}).
            "sources": {"type": "array", "items": {"type": ["string", "object"]}},
            "auto_sync": {"type": "boolean", "default": True},
            "knowledge_base": {"type": "string"},
        },
        "additionalProperties": False,
    }

    # -- settings ---------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return module_workspace(self)

    def _setting(self, name: str, default: int) -> int:
        value = self.config.get(name)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else default

    def _chunking(self, size: int | None = None, overlap: int | None = None) -> tuple[int, int]:
        size = size or self._setting("chunk_size", DEFAULT_CHUNK_SIZE)
        overlap = self._setting("chunk_overlap", DEFAULT_CHUNK_OVERLAP) if overlap is None else overlap
        if overlap >= size:
            raise ToolError(
                f"params.chunk_overlap: {overlap} must be smaller than the chunk size ({size})."
            )
        return size, overlap

    def _kb(self, name: str | None, field: str = "params.knowledge_base") -> str:
        name = name if name not in (None, "") else (self.config.get("knowledge_base") or DEFAULT_KB)
        if not isinstance(name, str) or not _KB_NAME.match(name):
            raise ToolError(
                f"{field}: '{str(name)[:80]}' is not a knowledge base name (1-64 letters, digits, '_', '-', '.')."
            )
        return name

    def _docs(self, kb: str | None = None):
        rows = RagDocument.objects.filter(app_id=self.context.app_id, workspace=str(self.root))
        return rows if kb is None else rows.filter(knowledge_base=kb)

    def _extensions(self, given: list[str] | None) -> tuple[str, ...] | None:
        values = given if given is not None else self.config.get("extensions")
        if not values:
            return None
        return tuple(("." + e.lower().lstrip(".")) for e in values if isinstance(e, str) and e.strip("."))

    # -- indexing ---------------------------------------------------------------------------
    def _store(
        self,
        kb: str,
        kind: str,
        source_id: str,
        text: str,
        *,
        size: int,
        mtime_ns: int,
        sha: str,
        chunking: tuple[int, int],
        metadata: dict | None = None,
    ) -> int:
        """Replace a document's chunks with fresh ones; returns the chunk count."""
        import numpy as np

        pieces = chunk_text(text, *chunking)
        max_chunks = self._setting("max_chunks", DEFAULT_MAX_CHUNKS)
        embedder = _embedder()
        vectors = None
        if embedder is not None and pieces:
            vectors = np.asarray(embedder.embed([p for _, _, p in pieces]), dtype="<f4")
        newlines = _newlines(text)
        rows = []
        for i, (start, end, piece) in enumerate(pieces):
            terms, term_count = _padded_terms(piece)
            rows.append(
                RagChunk(
                    position=i,
                    text=piece,
                    start_char=start,
                    end_char=end,
                    start_line=_line_at(newlines, start),
                    end_line=_line_at(newlines, max(start, end - 1)),
                    vector=vectors[i].tobytes() if vectors is not None else b"",
                    terms=terms,
                    term_count=term_count,
                )
            )
        try:
            with transaction.atomic():
                doc, _ = RagDocument.objects.select_for_update().get_or_create(
                    app_id=self.context.app_id,
                    workspace=str(self.root),
                    knowledge_base=kb,
                    kind=kind,
                    source_id=source_id,
                    defaults={"sha256": sha},
                )
                held = self._docs().aggregate(n=Sum("chunk_count"))["n"] or 0
                total = held - doc.chunk_count + len(rows)
                if total > max_chunks:
                    raise ToolError(
                        f"config.max_chunks: the app's index would hold {total} chunks, above rag.max_chunks "
                        f"({max_chunks}); remove documents or raise the limit."
                    )
                doc.chunks.all().delete()
                for row in rows:
                    row.document = doc
                RagChunk.objects.bulk_create(rows)
                doc.size, doc.mtime_ns, doc.sha256 = size, mtime_ns, sha
                doc.model = _model_key(embedder)
                doc.chunk_count = len(rows)
                doc.metadata = metadata or {}
                doc.save()
        except IntegrityError:
            raise ToolError(f"'{source_id}' was being indexed by another call at the same time; try again.")
        return len(rows)

    def _index_file(
        self, ws: Beneath, target: Target, kb: str, chunking: tuple[int, int], *, strict: bool, force: bool = False
    ) -> str:
        """Index one file if it changed: 'indexed', 'unchanged', or 'skipped' (binary, too large, …).

        ``strict`` (one named file) turns skips into tool errors.
        """
        rel = target.rel
        if len(rel) > _MAX_SOURCE_CHARS:
            if strict:
                raise ToolError(f"params.path: the path is {len(rel)} characters; the index keeps paths up to "
                                f"{_MAX_SOURCE_CHARS}.")
            return "skipped"
        existing = self._docs(kb).filter(kind=RagDocument.Kind.FILE, source_id=rel).first()
        try:
            fd = ws.open_file(target, os.O_RDONLY, field="params.path", user_path=rel)
        except ToolError:
            if strict:
                raise
            return "skipped"
        try:
            st = os.fstat(fd)
            model = _model_key(_embedder())
            if (
                not force
                and existing is not None
                and existing.size == st.st_size
                and existing.mtime_ns == st.st_mtime_ns
                and existing.model == model
            ):
                return "unchanged"
            limit = self._setting("max_file_bytes", DEFAULT_MAX_FILE_BYTES)
            if st.st_size > limit:
                if strict:
                    raise ToolError(f"params.path: '{rel}' is {st.st_size} bytes, above rag.max_file_bytes ({limit}).")
                return "skipped"
            chunks, left = [], limit + 1
            while left > 0:
                block = os.read(fd, min(left, 1 << 20))
                if not block:
                    break
                chunks.append(block)
                left -= len(block)
            raw = b"".join(chunks)
        finally:
            os.close(fd)
        sha = hashlib.sha256(raw).hexdigest()
        if not force and existing is not None and existing.sha256 == sha and existing.model == model:
            RagDocument.objects.filter(pk=existing.pk).update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            return "unchanged"
        try:
            text = _decode(raw, rel)
        except ToolError as exc:
            if strict:
                raise ToolError(f"params.path: {exc.message}")
            return "skipped"
        if text is None:
            if strict:
                raise ToolError(f"params.path: '{rel}' is not UTF-8 text (binary files are not indexed).")
            return "skipped"
        self._store(
            kb, RagDocument.Kind.FILE, rel, text, size=st.st_size, mtime_ns=st.st_mtime_ns, sha=sha,
            chunking=chunking,
        )
        return "indexed"

    def _walk(self, ws: Beneath, base: Target, extensions: tuple[str, ...] | None, recursive: bool):
        """(rel, Target) of the regular files under ``base``; hidden names and other kinds skipped."""
        if not base.is_dir:
            yield base
            return
        top = ws.open_dir(base)
        prefix = "" if base.rel == "." else base.rel + "/"
        for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            if not recursive:
                dirnames[:] = []
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            here = "" if dirpath == "." else dirpath[2:] + "/"
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                if extensions and not name.lower().endswith(extensions):
                    continue
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat_mod.S_ISREG(st.st_mode) and not ws.is_data_dir(st):
                    yield Target(dirfd, name, st, prefix + here + name, [])

    def _sync_dir(
        self,
        path: str,
        kb: str,
        *,
        extensions: tuple[str, ...] | None,
        recursive: bool,
        max_files: int,
        chunking: tuple[int, int],
        force: bool = False,
        field: str = "params.path",
    ) -> dict[str, Any]:
        counts = Counter()
        seen: set[str] = set()
        truncated = cancelled = False
        with Beneath(self.root) as ws:
            base = ws.resolve(path, field=field)
            if not base.exists:
                raise ToolError(f"{field}: '{path}' does not exist in the workspace.")
            if not base.is_dir:
                raise ToolError(f"{field}: '{path}' is a file; use rag.ingest_file for one file.")
            for target in self._walk(ws, base, extensions, recursive):
                if self.context.cancelled():
                    cancelled = True
                    break
                if len(seen) >= max_files:
                    truncated = True
                    break
                seen.add(target.rel)
                counts[self._index_file(ws, target, kb, chunking, strict=False, force=force)] += 1
        removed = 0
        if not truncated and not cancelled:
            # Files indexed under this folder that are gone (or no longer match) leave the index.
            prefix = "" if base.rel == "." else base.rel + "/"
            stale = self._docs(kb).filter(kind=RagDocument.Kind.FILE)
            if prefix:
                stale = stale.filter(source_id__startswith=prefix)
            if not recursive:
                stale = [d for d in stale if "/" not in d.source_id[len(prefix) :]]
            gone = [d.pk for d in stale if d.source_id not in seen]
            if gone:
                RagDocument.objects.filter(pk__in=gone).delete()
            removed = len(gone)
        return {
            "knowledge_base": kb,
            "directory": base.rel,
            "files": len(seen),
            "indexed": counts["indexed"],
            "unchanged": counts["unchanged"],
            "skipped": counts["skipped"],
            "removed": removed,
            "truncated": truncated,
            "cancelled": cancelled,
        }

    def _auto_sync(self) -> None:
        sources = self.config.get("sources") or []
        if not sources or self.config.get("auto_sync") is False:
            return
        default_kb = self._kb(None, field="config.knowledge_base")
        for index, source in enumerate(sources):
            if isinstance(source, str):
                source = {"path": source}
            if source.get("type", "file") not in ("file", "files", "directory", "folder"):
                continue  # the original's database/url sources: not indexed by this build (README)
            where = f"config.sources[{index}]"
            try:
                self._sync_dir(
                    str(source.get("path") or "."),
                    self._kb(source.get("knowledge_base"), field=f"{where}.knowledge_base") if source.get(
                        "knowledge_base") else default_kb,
                    extensions=self._extensions(source.get("extensions")),
                    recursive=source.get("recursive", True) is not False,
                    max_files=int(source.get("max_files") or self._setting("max_files", DEFAULT_MAX_FILES)),
                    chunking=self._chunking(),
                    field=f"{where}.path",
                )
            except ToolError as exc:
                # A source outside the workspace (a path written for another machine) must not make
                # every query fail: it is skipped and said once per sync in the log.
                log.warning("rag: app %s: %s skipped: %s", self.context.app_id, where, exc.message)

    # -- retrieval --------------------------------------------------------------------------
    def _retrieve(self, query: str, kb: str | None, top_k: int, min_score: float) -> list[dict[str, Any]]:
        import numpy as np

        if not isinstance(query, str) or not query.strip():
            raise ToolError("params.query: must not be empty; say what to look for.")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolError(f"params.query: {len(query)} characters; the limit is {MAX_QUERY_CHARS}.")
        self._auto_sync()
        # Only what ranking needs is loaded for every chunk; texts come for the top_k alone.
        rows = list(
            RagChunk.objects.filter(
                document__app_id=self.context.app_id, document__workspace=str(self.root),
                **({"document__knowledge_base": kb} if kb else {}),
            ).values_list("id", "terms", "term_count", "vector", "document__model")
        )
        if not rows:
            return []
        keyword = np.asarray(_bm25(query, [(r[1], r[2]) for r in rows]), dtype=np.float64)
        if keyword.max() > 0:
            keyword /= keyword.max()
        embedder = _embedder()
        model = _model_key(embedder)
        semantic = np.zeros(len(rows), dtype=np.float64)
        usable = [i for i, r in enumerate(rows) if model and r[4] == model and len(r[3])]
        if usable:
            q = np.asarray(embedder.embed([query]), dtype=np.float32)[0]
            matrix = np.frombuffer(b"".join(bytes(rows[i][3]) for i in usable), dtype="<f4").reshape(len(usable), -1)
            cos = matrix @ q
            semantic[usable] = np.clip((cos - _COS_FLOOR) / (_COS_CEIL - _COS_FLOOR), 0.0, 1.0)
            score = _SEM_WEIGHT * semantic + (1 - _SEM_WEIGHT) * keyword
        else:
            score = keyword
        order = [int(i) for i in np.argsort(-score, kind="stable")[:top_k]]
        picked = [i for i in order if round(float(score[i]), 4) > 0 and round(float(score[i]), 4) >= min_score]
        chunks = RagChunk.objects.select_related("document").in_bulk([rows[i][0] for i in picked])
        results = []
        for i in picked:
            value = round(float(score[i]), 4)
            c = chunks.get(rows[i][0])
            if c is None:
                continue  # removed by another call since the ranking query
            doc = c.document
            location = f"lines {c.start_line}-{c.end_line}" if c.start_line != c.end_line else f"line {c.start_line}"
            results.append(
                {
                    "text": c.text,
                    "score": value,
                    "doc_id": f"{doc.kind}:{doc.source_id}#{c.position}",
                    "knowledge_base": doc.knowledge_base,
                    "citation": {
                        "source_type": doc.kind,
                        "source_id": doc.source_id,
                        "location": location,
                        "chunk_index": c.position,
                    },
                    "metadata": doc.metadata or {},
                }
            )
        return results

    @staticmethod
    def _context_block(results: list[dict[str, Any]]) -> str:
        if not results:
            return ""
        parts = ["## Retrieved context"]
        for n, r in enumerate(results, start=1):
            cite = r["citation"]
            parts.append(f"[{n}] (source: {cite['source_id']}, {cite['location']})\n{r['text'].strip()}")
        return "\n\n".join(parts)

    # -- actions ----------------------------------------------------------------------------
    @action(
        description="Retrieve the passages of a knowledge base most relevant to a question, with citations "
        "(source file and lines) and a ready-to-quote context block.",
        parameters=_SEARCH_PARAMS,
        aliases=("ask_knowledge_base", "retrieve", "semantic_search", "interroger", "base_de_connaissances"),
        tags=("rag", "knowledge", "retrieval", "documents"),
        param_aliases=_KB_ALIAS,
    )
    def query(
        self, query: str, knowledge_base: str | None = None, top_k: int = 5, min_score: float = 0.0
    ) -> dict[str, Any]:
        kb = self._kb(knowledge_base)
        results = self._retrieve(query, kb, top_k, min_score)
        return {
            "knowledge_base": kb,
            "query": query,
            "results": results,
            "count": len(results),
            "context_block": self._context_block(results),
        }

    @action(
        description="Semantic search of the indexed documents (every knowledge base unless one is named): "
        "the chunks closest in meaning to the query, with their source.",
        parameters=_SEARCH_PARAMS,
        aliases=("search_documents", "search_knowledge", "rechercher_documents"),
        tags=("rag", "knowledge", "retrieval", "documents"),
        param_aliases=_KB_ALIAS,
    )
    def search(
        self, query: str, knowledge_base: str | None = None, top_k: int = 5, min_score: float = 0.0
    ) -> dict[str, Any]:
        kb = self._kb(knowledge_base) if knowledge_base else None
        results = self._retrieve(query, kb, top_k, min_score)
        return {"query": query, "results": results, "count": len(results)}

    @action(
        description="Add texts to a knowledge base: each is chunked, embedded and becomes searchable; "
        "re-ingesting an id replaces its text. With 'path', adds a workspace file or folder instead.",
        parameters={
            "properties": {
                "documents": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "maxItems": MAX_DOCUMENTS_PER_CALL,
                },
                "text": {"type": "string", "minLength": 1, "description": "One text (instead of documents)."},
                "path": {
                    "type": "string",
                    "minLength": 1,
                    "description": "A workspace file or folder (as rag.ingest_file / rag.ingest_directory).",
                },
                "ids": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200}},
                "metadata": {"type": "array", "items": {"type": "object"}},
                "knowledge_base": _KB_PARAM,
            },
        },
        risk_level="low",
        side_effects=("state_mutation",),
        aliases=("add_documents", "add_text", "index_text", "ajouter_documents"),
        tags=("rag", "knowledge", "index"),
        param_aliases={**_KB_ALIAS, "content": "text"},
    )
    def ingest(
        self,
        documents: list[str] | None = None,
        text: str | None = None,
        ids: list[str] | None = None,
        metadata: list[dict] | None = None,
        knowledge_base: str | None = None,
        path: str | None = None,
    ) -> dict[str, Any]:
        kb = self._kb(knowledge_base)
        if path is not None:
            # The Go port's ingest{text | path}: one action to add whatever the agent has.
            if documents or text or ids or metadata:
                raise ToolError("params.path: give either a path or texts (documents/text), not both.")
            with Beneath(self.root) as ws:
                is_dir = ws.resolve(path).is_dir
            if is_dir:
                return self.ingest_directory(path=path, knowledge_base=kb)
            return self.ingest_file(path=path, knowledge_base=kb)
        if documents and text:
            raise ToolError("params.documents: give either documents (a list) or text (one), not both.")
        texts = list(documents or ([text] if text else []))
        if not texts:
            raise ToolError("params.documents: give the texts to index (documents: [...] or text: '...').")
        if ids is not None and len(ids) != len(texts):
            raise ToolError(f"params.ids: {len(ids)} ids for {len(texts)} documents; give one per document.")
        if metadata is not None and len(metadata) != len(texts):
            raise ToolError(f"params.metadata: {len(metadata)} entries for {len(texts)} documents.")
        limit = self._setting("max_file_bytes", DEFAULT_MAX_FILE_BYTES)
        chunking = self._chunking()
        out_ids, chunks = [], 0
        for i, body in enumerate(texts):
            data = body.encode("utf-8")
            if len(data) > limit:
                raise ToolError(f"params.documents[{i}]: {len(data)} bytes, above rag.max_file_bytes ({limit}).")
            sha = hashlib.sha256(data).hexdigest()
            doc_id = ids[i] if ids else sha[:16]
            chunks += self._store(
                kb, RagDocument.Kind.TEXT, doc_id, body, size=len(data), mtime_ns=0, sha=sha, chunking=chunking,
                metadata=metadata[i] if metadata else None,
            )
            out_ids.append(doc_id)
        return {"knowledge_base": kb, "added": len(out_ids), "ids": out_ids, "chunks": chunks}

    @action(
        description="Index one workspace file (text, Markdown, code or PDF) into a knowledge base; "
        "an unchanged file is skipped, a changed one re-indexed.",
        parameters={
            "properties": {
                "path": {"type": "string", "minLength": 1, "description": "File path relative to the workspace."},
                "knowledge_base": _KB_PARAM,
                "chunk_size": {"type": "integer", "minimum": 50, "maximum": 20000},
                "chunk_overlap": {"type": "integer", "minimum": 0, "maximum": 5000},
                "force": {"type": "boolean", "default": False, "description": "Re-embed even if unchanged."},
            },
            "required": ["path"],
        },
        side_effects=("state_mutation",),
        aliases=("add_file", "index_file", "indexer_fichier"),
        tags=("rag", "knowledge", "index", "file"),
        param_aliases={**_KB_ALIAS, "file_path": "path"},
    )
    def ingest_file(
        self,
        path: str,
        knowledge_base: str | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        kb = self._kb(knowledge_base)
        chunking = self._chunking(chunk_size, chunk_overlap)
        if chunk_size or chunk_overlap is not None:
            force = True  # another chunking of the same bytes is a change
        with Beneath(self.root) as ws:
            target = ws.resolve(path)
            if not target.exists:
                raise ToolError(f"params.path: '{path}' does not exist in the workspace.")
            if target.is_dir:
                raise ToolError(f"params.path: '{path}' is a folder; use rag.ingest_directory.")
            status = self._index_file(ws, target, kb, chunking, strict=True, force=force)
            rel = target.rel
        doc = self._docs(kb).filter(kind=RagDocument.Kind.FILE, source_id=rel).first()
        return {"knowledge_base": kb, "file": rel, "status": status, "chunks": doc.chunk_count if doc else 0}

    @action(
        description="Index every text file of a workspace folder into a knowledge base, incrementally: "
        "new and changed files are (re-)embedded, unchanged ones skipped, deleted ones dropped.",
        parameters={
            "properties": {
                "path": {"type": "string", "default": ".", "description": "Folder relative to the workspace."},
                "knowledge_base": _KB_PARAM,
                "extensions": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "recursive": {"type": "boolean", "default": True},
                "max_files": {"type": "integer", "minimum": 1, "maximum": 100000},
                "force": {"type": "boolean", "default": False, "description": "Re-embed every file."},
            },
        },
        side_effects=("state_mutation",),
        aliases=("index_workspace", "index_folder", "reindex", "sync_index", "indexer_dossier"),
        tags=("rag", "knowledge", "index", "folder"),
        param_aliases=_KB_ALIAS,
    )
    def ingest_directory(
        self,
        path: str = ".",
        knowledge_base: str | None = None,
        extensions: list[str] | None = None,
        recursive: bool = True,
        max_files: int | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        kb = self._kb(knowledge_base)
        return self._sync_dir(
            path, kb, extensions=self._extensions(extensions), recursive=recursive,
            max_files=max_files or self._setting("max_files", DEFAULT_MAX_FILES), chunking=self._chunking(),
            force=force,
        )

    @action(
        description="Drop documents from a knowledge base's index (the files themselves stay): a file, "
        "every file under a folder, or ingested texts by id.",
        parameters={
            "properties": {
                "path": {"type": "string", "minLength": 1, "description": "File or folder relative to the workspace."},
                "ids": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                "knowledge_base": _KB_PARAM,
            },
        },
        side_effects=("state_mutation",),
        aliases=("unindex", "remove_document", "remove_from_index", "take_out_of_index", "desindexer", "retirer"),
        tags=("rag", "knowledge", "index"),
        param_aliases=_KB_ALIAS,
    )
    def remove(self, path: str | None = None, ids: list[str] | None = None, knowledge_base: str | None = None):
        kb = self._kb(knowledge_base)
        if not path and not ids:
            raise ToolError("params.path: name a file or folder to drop from the index, or give ids of texts.")
        rows = self._docs(kb)
        removed: list[str] = []
        if path:
            # Normalised the way indexing stored it, without touching the file (it may be gone).
            norm = os.path.normpath(path.strip())
            if os.path.isabs(norm):
                if not Path(norm).is_relative_to(self.root):
                    raise ToolError(f"params.path: '{path}' is outside the workspace.")
                norm = os.path.relpath(norm, self.root)
            if norm.startswith(".."):
                raise ToolError(f"params.path: '{path}' is outside the workspace.")
            files = rows.filter(kind=RagDocument.Kind.FILE)
            if norm != ".":
                from django.db.models import Q

                files = files.filter(Q(source_id=norm) | Q(source_id__startswith=norm + "/"))
            removed += list(files.values_list("source_id", flat=True))
            files.delete()
        if ids:
            texts = rows.filter(kind=RagDocument.Kind.TEXT, source_id__in=ids)
            removed += list(texts.values_list("source_id", flat=True))
            texts.delete()
        return {"knowledge_base": kb, "removed": removed, "count": len(removed)}

    @action(
        description="List the app's knowledge bases with their document and chunk counts.",
        parameters={"properties": {}},
        aliases=("list_kbs", "knowledge_base_stats", "rag_stats"),
        tags=("rag", "knowledge"),
    )
    def list_knowledge_bases(self) -> dict[str, Any]:
        from django.db.models import Count, Max

        rows = (
            self._docs()
            .values("knowledge_base")
            .annotate(doc_count=Count("id"), chunk_count=Sum("chunk_count"), updated=Max("indexed_at"))
            .order_by("knowledge_base")
        )
        kbs = [
            {
                "name": r["knowledge_base"],
                "doc_count": r["doc_count"],
                "chunk_count": r["chunk_count"] or 0,
                "updated_at": r["updated"].isoformat() if r["updated"] else None,
            }
            for r in rows
        ]
        embedder = _embedder()
        return {
            "knowledge_bases": kbs,
            "count": len(kbs),
            "embedding_model": _model_key(embedder) or None,
            "retrieval": "hybrid" if embedder is not None else "bm25",
        }

    @action(
        description="Delete a knowledge base's whole index (its files stay in the workspace).",
        parameters={"properties": {"name": _KB_PARAM}, "required": ["name"]},
        risk_level="medium",
        side_effects=("state_mutation",),
        aliases=("delete_kb", "drop_knowledge_base"),
        tags=("rag", "knowledge"),
        param_aliases={"knowledge_base": "name", "kb": "name"},
    )
    def delete_knowledge_base(self, name: str) -> dict[str, Any]:
        kb = self._kb(name, field="params.name")
        rows = self._docs(kb)
        count = rows.count()
        if not count:
            known = sorted(set(self._docs().values_list("knowledge_base", flat=True)))
            raise ToolError(f"params.name: no knowledge base '{kb}'; known: {known}.")
        rows.delete()
        return {"knowledge_base": kb, "deleted": True, "documents": count}
