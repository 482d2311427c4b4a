"""pdf: text, metadata and text search of PDF files in the app's workspace (read-only), with pypdf.

Config: ``workspace`` (default: the filesystem module's workspace, else the app's own folder; see
:mod:`tooling.modules._workspace`), ``max_file_bytes`` (largest PDF opened, default 20 MiB),
``max_pages`` (pages read per call, default 200) and ``max_chars`` (text returned per call, default
200 000). A corrupt, encrypted or truncated file is a tool error that names the file, never a crash.

pypdf is imported inside the actions: the daemon imports every module at start and most apps never
open a PDF.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from tooling.modules._workspace import Beneath, module_workspace
from tooling.modules.base import Module, ToolError, action
from tooling.modules.filesystem import _read_all

DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PAGES = 200
DEFAULT_MAX_CHARS = 200_000
_PATH = {"type": "string", "minLength": 1, "description": "PDF path relative to the workspace."}
_PAGES = {
    "type": "string",
    "description": "Pages to read, 1-based: '3', '1-5', '1,4,9-12'; default all (up to max_pages).",
}


def _parse_pages(spec: str | None, count: int, limit: int) -> list[int]:
    """0-based page indexes from a '1,3-5' spec; errors name params.pages."""
    if not spec:
        return list(range(min(count, limit)))
    pages: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise ToolError(f"params.pages: '{part}' is not a page number or range like '2-5'.")
        start = int(match.group(1))
        end = int(match.group(2) or start)
        if start < 1 or end < start:
            raise ToolError(f"params.pages: '{part}' is not a valid range (pages start at 1).")
        if start > count:
            raise ToolError(f"params.pages: page {start} does not exist; the document has {count} pages.")
        pages.extend(range(start - 1, min(end, count)))
        if len(pages) > limit:
            raise ToolError(f"params.pages: at most {limit} pages per call; ask for a smaller range.")
    return pages


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, int | float | bool):
        return value
    return str(value)


class PdfModule(Module):
    id = "pdf"
    description = "Read PDF documents in the workspace: extract their text, metadata and search them."
    config_schema = {
        "type": "object",
        "properties": {
            "workspace": {"type": "string"},
            "max_file_bytes": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_FILE_BYTES},
            "max_pages": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_PAGES},
            "max_chars": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_CHARS},
        },
        "additionalProperties": False,
    }

    @property
    def root(self) -> Path:
        return module_workspace(self)

    def _open(self, path: str) -> tuple[Any, str]:
        """A pypdf reader for a workspace file, or a ToolError saying why not."""
        import io

        cap = int(self.config.get("max_file_bytes") or DEFAULT_MAX_FILE_BYTES)
        # Opened from the workspace's directory descriptor in one step (no check-then-open window for a
        # swapped symlink; hard links refused), then parsed from memory.
        with Beneath(self.root) as ws:
            target = ws.resolve(path, field="params.path")
            rel = target.rel
            if not target.exists or target.is_dir or target.is_root:
                raise ToolError(f"params.path: '{path}' is not a file in the workspace.")
            fd = ws.open_file(target, os.O_RDONLY, field="params.path", user_path=path)
            try:
                size = os.fstat(fd).st_size
                if size > cap:
                    raise ToolError(f"params.path: '{rel}' is {size} bytes; this app opens PDFs up to {cap} bytes.")
                data = _read_all(fd, cap)
            finally:
                os.close(fd)
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError

        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted:
                # Only the empty user password is tried: many "encrypted" PDFs are just restricted.
                try:
                    if not reader.decrypt(""):
                        raise ToolError(f"params.path: '{rel}' is password-protected.")
                except ToolError:
                    raise
                except Exception as exc:  # noqa: BLE001 - missing crypto backend, odd handlers
                    raise ToolError(f"params.path: '{rel}' is encrypted and cannot be opened ({exc}).")
            len(reader.pages)  # forces the page tree: a broken one fails here, inside the guard
        except ToolError:
            raise
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError,
                RecursionError, AssertionError) as exc:
            raise ToolError(f"params.path: '{rel}' is not a readable PDF ({type(exc).__name__}: {exc}).")
        return reader, rel

    def _page_text(self, reader: Any, index: int, rel: str) -> str:
        try:
            return reader.pages[index].extract_text() or ""
        except Exception as exc:  # noqa: BLE001 - one damaged page must not lose the others
            raise ToolError(f"params.path: page {index + 1} of '{rel}' cannot be read ({type(exc).__name__}).")

    @action(
        description="Extract the text of a PDF in the workspace, all pages or a page range like '1-3'.",
        parameters={
            "properties": {
                "path": _PATH,
                "pages": _PAGES,
                "max_chars": {"type": "integer", "minimum": 1, "description": "Cut the text after this many characters."},
            },
            "required": ["path"],
        },
        aliases=("read_pdf", "pdf_to_text", "lire_pdf", "extraire_texte_pdf"),
        tags=("pdf", "document", "text", "read"),
    )
    def extract_text(self, path: str, pages: str | None = None, max_chars: int | None = None) -> dict[str, Any]:
        reader, rel = self._open(path)
        count = len(reader.pages)
        wanted = _parse_pages(pages, count, int(self.config.get("max_pages") or DEFAULT_MAX_PAGES))
        cap = min(max_chars or DEFAULT_MAX_CHARS, int(self.config.get("max_chars") or DEFAULT_MAX_CHARS))
        out: list[dict[str, Any]] = []
        total = 0
        truncated = False
        for index in wanted:
            text = self._page_text(reader, index, rel)
            if total + len(text) > cap:
                text = text[: cap - total]
                truncated = True
            total += len(text)
            out.append({"page": index + 1, "text": text})
            if truncated:
                break
        return {
            "path": rel,
            "page_count": count,
            "pages": out,
            "text": "\n\n".join(p["text"] for p in out),
            "truncated": truncated or (len(wanted) < count and not pages),
        }

    @action(
        description="Metadata of a PDF: page count, title, author, subject, creator, producer, dates, encryption.",
        parameters={"properties": {"path": _PATH}, "required": ["path"]},
        aliases=("info", "properties", "page_count", "pdf_info", "metadonnees", "proprietes"),
        tags=("pdf", "document", "metadata"),
    )
    def metadata(self, path: str) -> dict[str, Any]:
        reader, rel = self._open(path)
        try:
            meta = reader.metadata or {}
            fields = {
                "title": getattr(meta, "title", None),
                "author": getattr(meta, "author", None),
                "subject": getattr(meta, "subject", None),
                "creator": getattr(meta, "creator", None),
                "producer": getattr(meta, "producer", None),
                "created": getattr(meta, "creation_date", None),
                "modified": getattr(meta, "modification_date", None),
            }
            raw = {str(k): _plain(v) for k, v in dict(meta).items()}
        except Exception as exc:  # noqa: BLE001 - a malformed info dictionary is still "no metadata"
            fields, raw = {}, {"error": f"metadata unreadable ({type(exc).__name__})"}
        return {
            "path": rel,
            "page_count": len(reader.pages),
            "encrypted": bool(reader.is_encrypted),
            "pdf_version": getattr(reader, "pdf_header", ""),
            **{k: _plain(v) for k, v in fields.items()},
            "raw": raw,
        }

    @action(
        description="Find the pages of a PDF document containing a word or phrase (case-insensitive), with snippets.",
        parameters={
            "properties": {
                "path": _PATH,
                "query": {"type": "string", "minLength": 1},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
            },
            "required": ["path", "query"],
        },
        aliases=("find_in_pdf", "grep_pdf", "chercher_pdf"),
        tags=("pdf", "document", "search"),
    )
    def search(self, path: str, query: str, max_results: int = 50) -> dict[str, Any]:
        reader, rel = self._open(path)
        count = len(reader.pages)
        needle = query.lower()
        matches: list[dict[str, Any]] = []
        for index in range(min(count, int(self.config.get("max_pages") or DEFAULT_MAX_PAGES))):
            text = self._page_text(reader, index, rel)
            low = text.lower()
            start = low.find(needle)
            while start != -1 and len(matches) < max_results:
                snippet = " ".join(text[max(0, start - 80) : start + len(query) + 80].split())
                matches.append({"page": index + 1, "snippet": snippet})
                start = low.find(needle, start + len(needle))
            if len(matches) >= max_results:
                break
        return {"path": rel, "query": query, "matches": matches, "count": len(matches)}
