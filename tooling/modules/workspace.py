"""workspace: six file primitives (write, read, edit, glob, grep, delete) over the app's workspace.

The original Digitorn keeps a session-scoped virtual workspace that a preview client renders; here
the workspace is the app's workspace folder on disk (the same one filesystem, shell and git see), so
what the agent writes through ``workspace.*`` is what the other modules read. Names and parameters
follow the original (``path``, ``content``, ``old_string``/``new_string``, ``pattern``); results add
``language`` and ``lines`` as the original does.

Config: ``workspace`` (default: the filesystem module's workspace, else the app's own folder; see
:mod:`tooling.modules._workspace`), ``max_file_bytes`` (default 1 MiB), ``max_results`` (glob and
grep, default 1000).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tooling.modules._workspace import (
    Beneath,
    is_protected,
    module_workspace,
    relative,
    resolve_in,
)
from tooling.modules.base import Module, ToolError, action
from tooling.modules.filesystem import _glob_regex, _read_all, _write_all, compile_pattern

DEFAULT_MAX_FILE_BYTES = 1024 * 1024
DEFAULT_MAX_RESULTS = 1000
_PATH = {"type": "string", "minLength": 1, "description": "Forward-slash path relative to the workspace root."}
_LANGUAGES = {
    ".py": "python", ".js": "javascript", ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript",
    ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".md": "markdown", ".html": "html", ".css": "css",
    ".sh": "shell", ".sql": "sql", ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c",
    ".cpp": "cpp", ".rb": "ruby", ".php": "php", ".toml": "toml", ".xml": "xml", ".tex": "latex",
    ".txt": "text", ".csv": "csv",
}


def _language(path: Path) -> str:
    return _LANGUAGES.get(path.suffix.lower(), "text")




class WorkspaceModule(Module):
    id = "workspace"
    description = "The app's working files: write, read, edit, find and delete files of the workspace."
    config_schema = {
        "type": "object",
        "properties": {
            "workspace": {"type": "string"},
            "max_file_bytes": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_FILE_BYTES},
            "max_results": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_RESULTS},
            "instructions": {"type": "string", "description": "Layout conventions for the agent (free text)."},
        },
        "additionalProperties": False,
    }

    @property
    def root(self) -> Path:
        return module_workspace(self)

    @property
    def max_bytes(self) -> int:
        return int(self.config.get("max_file_bytes") or DEFAULT_MAX_FILE_BYTES)

    # Reads, writes and deletes open the file from the workspace's directory descriptor in one step
    # (tooling.modules._workspace.Beneath, as filesystem does): no check-then-open window for a
    # swapped symlink, hard-linked files refused.
    def _file(self, path: str) -> Path:
        """The file's path (for names and messages only: content goes through _read_text/_write)."""
        with Beneath(self.root) as ws:
            target = ws.resolve(path, field="params.path")
            if not target.exists or target.is_dir or target.is_root:
                raise ToolError(f"params.path: File not found: {path}")
            return self.root / target.rel

    def _read_text(self, resolved: Path, path: str) -> str:
        with Beneath(self.root) as ws:
            target = ws.resolve(path, field="params.path")
            if not target.exists or target.is_dir or target.is_root:
                raise ToolError(f"params.path: File not found: {path}")
            fd = ws.open_file(target, os.O_RDONLY, field="params.path", user_path=path)
            try:
                size = os.fstat(fd).st_size
                if size > self.max_bytes:
                    raise ToolError(
                        f"params.path: '{path}' is {size} bytes; the limit is {self.max_bytes} (max_file_bytes)."
                    )
                data = _read_all(fd, self.max_bytes)
            finally:
                os.close(fd)
        if b"\x00" in data[:8192]:
            raise ToolError(f"params.path: '{path}' is a binary file.")
        return data.decode("utf-8", errors="replace")

    def _write(self, path: str, content: str) -> Path:
        with Beneath(self.root) as ws:
            target = ws.resolve(path, field="params.path", make_parents=True)
            if target.is_root or target.is_dir:
                raise ToolError(f"params.path: '{path}' is a folder.")
            # No O_TRUNC: open_file checks the hard-link count first, then the content goes.
            fd = ws.open_file(target, os.O_WRONLY | os.O_CREAT, field="params.path", user_path=path)
            try:
                os.ftruncate(fd, 0)
                _write_all(fd, content.encode("utf-8"))
            finally:
                os.close(fd)
            return self.root / target.rel

    def _files(self, base: Path):
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames if d != ".git" and not is_protected(Path(os.path.realpath(here / d)), self.root)
            )
            for name in sorted(filenames):
                path = here / name
                real = Path(os.path.realpath(path))
                if real.is_file() and real.is_relative_to(self.root) and not is_protected(real, self.root):
                    yield path

    def _describe(self, resolved: Path, content: str) -> dict[str, Any]:
        return {
            "path": relative(self.root, resolved),
            "language": _language(resolved),
            "size": len(content.encode("utf-8")),
            "lines": content.count("\n") + (1 if content and not content.endswith("\n") else 0),
        }

    @action(
        description="Workspace write: create or replace a workspace file with its full content.",
        parameters={"properties": {"path": _PATH, "content": {"type": "string"}}, "required": ["path", "content"]},
        risk_level="medium",
        side_effects=("filesystem_write",),
        aliases=("WsWrite",),
        tags=("workspace", "files", "write"),
    )
    def write(self, path: str, content: str) -> dict[str, Any]:
        if len(content.encode("utf-8")) > self.max_bytes:
            raise ToolError(f"params.content: larger than {self.max_bytes} bytes (max_file_bytes).")
        resolved = self._write(path, content)
        return self._describe(resolved, content)

    @action(
        description="Workspace read: a workspace file with numbered lines, for follow-up workspace edits.",
        parameters={"properties": {"path": _PATH}, "required": ["path"]},
        aliases=("WsRead",),
        tags=("workspace", "files", "read"),
    )
    def read(self, path: str) -> dict[str, Any]:
        resolved = self._file(path)
        content = self._read_text(resolved, path)
        numbered = "\n".join(f"{n}\t{line}" for n, line in enumerate(content.splitlines(), start=1))
        return {**self._describe(resolved, content), "content": numbered}

    @action(
        description="Workspace edit: replace the unique exact old_string by new_string in a workspace file.",
        parameters={
            "properties": {"path": _PATH, "old_string": {"type": "string", "minLength": 1}, "new_string": {"type": "string"}},
            "required": ["path", "old_string", "new_string"],
        },
        risk_level="medium",
        side_effects=("filesystem_write",),
        aliases=("WsEdit",),
        tags=("workspace", "files", "edit"),
    )
    def edit(self, path: str, old_string: str, new_string: str) -> dict[str, Any]:
        resolved = self._file(path)
        content = self._read_text(resolved, path)
        count = content.count(old_string)
        if count == 0:
            raise ToolError(f"params.old_string: old_string not found in {path}")
        if count > 1:
            raise ToolError(f"params.old_string: old_string appears {count} times in {path} - make it more specific")
        updated = content.replace(old_string, new_string, 1)
        if len(updated.encode("utf-8")) > self.max_bytes:
            raise ToolError(f"params.new_string: the edited file would exceed {self.max_bytes} bytes.")
        resolved = self._write(path, updated)
        return self._describe(resolved, updated)

    @action(
        description="List workspace files whose path matches a glob pattern ('*', '**', '?', '[...]').",
        parameters={"properties": {"pattern": {"type": "string", "minLength": 1}}, "required": ["pattern"]},
        aliases=("WsGlob",),
        tags=("workspace", "files", "search"),
    )
    def glob(self, pattern: str) -> dict[str, Any]:
        regex = _glob_regex(pattern.lstrip("/").removeprefix("./"))
        limit = int(self.config.get("max_results") or DEFAULT_MAX_RESULTS)
        matches = []
        for path in self._files(self.root):
            rel = relative(self.root, path)
            if regex.match(rel):
                matches.append(rel)
                if len(matches) >= limit:
                    break
        return {"matches": matches, "count": len(matches), "truncated": len(matches) >= limit}

    @action(
        description="Search workspace file contents for a regex; returns path, line number and text of each match.",
        parameters={
            "properties": {
                "pattern": {"type": "string", "minLength": 1},
                "path": {"type": "string", "default": "", "description": "Only files under this prefix."},
            },
            "required": ["pattern"],
        },
        aliases=("WsGrep",),
        tags=("workspace", "files", "search"),
    )
    def grep(self, pattern: str, path: str = "") -> dict[str, Any]:
        regex = compile_pattern(pattern, False)  # RE2: linear time, no catastrophic backtracking
        base = resolve_in(self.root, path or ".")
        limit = int(self.config.get("max_results") or DEFAULT_MAX_RESULTS)
        matches: list[dict[str, Any]] = []
        files = [base] if base.is_file() else (self._files(base) if base.is_dir() else [])
        for file in files:
            try:
                if file.stat().st_size > self.max_bytes:
                    continue
                data = file.read_bytes()
            except OSError:
                continue
            if b"\x00" in data[:8192]:
                continue
            for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
                if regex.search(line):
                    matches.append({"path": relative(self.root, file), "line": number, "text": line[:500]})
                    if len(matches) >= limit:
                        return {"matches": matches, "count": len(matches), "truncated": True}
        return {"matches": matches, "count": len(matches), "truncated": False}

    @action(
        description="Delete one file from the workspace.",
        parameters={"properties": {"path": _PATH}, "required": ["path"]},
        risk_level="high",
        side_effects=("filesystem_delete",),
        irreversible=True,
        aliases=("WsDelete",),
        tags=("workspace", "files", "delete"),
    )
    def delete(self, path: str) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            target = ws.resolve(path, field="params.path")  # a link out of the workspace is refused
            if not target.exists or target.is_dir or target.is_root:
                raise ToolError(f"params.path: File not found: {path}")
            os.unlink(target.name, dir_fd=target.dir_fd)  # relative to the folder just opened: no race
        return {"path": target.rel, "deleted": True}
