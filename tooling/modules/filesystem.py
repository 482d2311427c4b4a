"""filesystem: read and change files inside the app's workspace, and nowhere else.

Config: ``workspace`` (see :mod:`tooling.modules._workspace` for where it lives when unset or
relative) and ``max_file_bytes`` (largest file read or written, default 1 MiB). Paths in params are
relative to the workspace (absolute paths are accepted when they point inside it).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat as stat_mod
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tooling.modules._workspace import is_protected, relative, resolve_in, workspace_root
from tooling.modules.base import Module, ToolError, action

_PATH = {"type": "string", "description": "Path relative to the workspace."}
DEFAULT_MAX_FILE_BYTES = 1024 * 1024


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _kind(path: Path) -> str:
    if path.is_symlink():
        return "symlink"
    if path.is_dir():
        return "dir"
    return "file"


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob where ``**`` spans folders, ``*`` and ``?`` stay inside one name."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


class FilesystemModule(Module):
    id = "filesystem"
    description = "Read, write, search and organise files inside the app's workspace."
    config_schema = {
        "type": "object",
        "properties": {
            "workspace": {
                "type": "string",
                "description": "Workspace folder: absolute, or relative to the manifest's folder; "
                "default <data dir>/workspaces/<app_id>.",
            },
            "max_file_bytes": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_FILE_BYTES},
        },
        "additionalProperties": False,
    }

    # -- helpers -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        if not hasattr(self, "_root"):
            self._root = workspace_root(self.context.app_id, self.config.get("workspace"))
        return self._root

    @property
    def max_bytes(self) -> int:
        return int(self.config.get("max_file_bytes") or DEFAULT_MAX_FILE_BYTES)

    def _resolve(self, user_path: str, field: str = "path") -> Path:
        return resolve_in(self.root, user_path, field=field)

    def _existing(self, user_path: str, field: str = "path") -> Path:
        path = self._resolve(user_path, field)
        if not path.exists():
            raise ToolError(f"params.{field}: '{user_path}' does not exist in the workspace.")
        return path

    def _rel(self, path: Path) -> str:
        return relative(self.root, path)

    def _walk_files(self, base: Path) -> Iterator[Path]:
        """Files under ``base`` (links not followed into folders; linked files kept if they stay inside)."""
        if base.is_file():
            yield base
            return
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames if not is_protected(Path(os.path.realpath(here / d)), self.root)
            )
            for name in sorted(filenames):
                path = here / name
                real = Path(os.path.realpath(path))
                if real.is_relative_to(self.root) and not is_protected(real, self.root):
                    yield path

    def _entry(self, path: Path) -> dict[str, Any]:
        info = path.lstat()
        return {
            "name": path.name,
            "path": self._rel(path),
            "type": _kind(path),
            "size": info.st_size,
            "modified": _iso(info.st_mtime),
        }

    # -- actions -------------------------------------------------------------------------
    @action(
        description="Read a text file, optionally a window of lines (offset is 0-based, limit is a line count).",
        parameters={
            "properties": {
                "path": _PATH,
                "offset": {"type": "integer", "minimum": 0, "default": 0},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100000},
            },
            "required": ["path"],
        },
        aliases=("read_file", "cat", "open", "view", "lire", "fichier"),
        tags=("file", "read", "text"),
    )
    def read(self, path: str, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        target = self._existing(path)
        if not target.is_file():
            raise ToolError(f"params.path: '{path}' is a folder; use filesystem.ls to list it.")
        size = target.stat().st_size
        with target.open("rb") as fh:
            raw = fh.read(self.max_bytes)
        text = raw.decode("utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        window = lines[offset : offset + limit] if limit else lines[offset:]
        return {
            "path": self._rel(target),
            "content": "".join(window),
            "offset": offset,
            "lines": len(window),
            "total_lines": len(lines),
            "size": size,
            "truncated": size > self.max_bytes,
        }

    @action(
        description="Write a text file (creating parent folders), replacing it or appending to it.",
        parameters={
            "properties": {
                "path": _PATH,
                "content": {"type": "string"},
                "append": {"type": "boolean", "default": False},
            },
            "required": ["path", "content"],
        },
        risk_level="medium",
        side_effects=("filesystem_write",),
        aliases=("write_file", "save", "create_file", "ecrire", "enregistrer"),
        tags=("file", "write"),
    )
    def write(self, path: str, content: str, append: bool = False) -> dict[str, Any]:
        target = self._resolve(path)
        data = content.encode("utf-8")
        existing = target.stat().st_size if append and target.is_file() else 0
        if existing + len(data) > self.max_bytes:
            raise ToolError(
                f"params.content: the file would be {existing + len(data)} bytes, above the workspace's "
                f"max_file_bytes ({self.max_bytes})."
            )
        if target.is_dir():
            raise ToolError(f"params.path: '{path}' is a folder.")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("ab" if append else "wb") as fh:
            fh.write(data)
        return {"path": self._rel(target), "bytes_written": len(data), "appended": append}

    @action(
        description="Replace an exact string in a text file; it must occur once unless replace_all is true.",
        parameters={
            "properties": {
                "path": _PATH,
                "old_string": {"type": "string", "minLength": 1},
                "new_string": {"type": "string"},
                "replace_all": {"type": "boolean", "default": False},
            },
            "required": ["path", "old_string", "new_string"],
        },
        risk_level="medium",
        side_effects=("filesystem_write",),
        aliases=("replace", "modify", "patch", "str_replace", "modifier"),
        tags=("file", "write", "edit"),
    )
    def edit(self, path: str, old_string: str, new_string: str, replace_all: bool = False) -> dict[str, Any]:
        target = self._existing(path)
        if not target.is_file():
            raise ToolError(f"params.path: '{path}' is not a file.")
        if target.stat().st_size > self.max_bytes:
            raise ToolError(f"params.path: '{path}' is larger than max_file_bytes ({self.max_bytes}).")
        text = target.read_text(encoding="utf-8")
        count = text.count(old_string)
        if count == 0:
            raise ToolError(f"params.old_string: not found in '{path}'; it must match the file exactly.")
        if count > 1 and not replace_all:
            raise ToolError(
                f"params.old_string: occurs {count} times in '{path}'; add context to make it unique "
                "or set replace_all to true."
            )
        updated = (
            text.replace(old_string, new_string) if replace_all else text.replace(old_string, new_string, 1)
        )
        if len(updated.encode("utf-8")) > self.max_bytes:
            raise ToolError(f"params.new_string: the result would exceed max_file_bytes ({self.max_bytes}).")
        target.write_text(updated, encoding="utf-8")
        return {"path": self._rel(target), "replacements": count if replace_all else 1}

    @action(
        description="List the entries of one folder (not recursive).",
        parameters={
            "properties": {
                "path": {**_PATH, "default": "."},
                "show_hidden": {"type": "boolean", "default": True},
            }
        },
        aliases=("list", "list_dir", "dir", "list_files", "lister", "dossier", "repertoire"),
        tags=("folder", "list", "directory"),
    )
    def ls(self, path: str = ".", show_hidden: bool = True) -> dict[str, Any]:
        target = self._existing(path)
        if not target.is_dir():
            raise ToolError(
                f"params.path: '{path}' is a file, not a folder; use filesystem.stat or filesystem.read."
            )
        entries = []
        for child in sorted(target.iterdir(), key=lambda p: p.name):
            if not show_hidden and child.name.startswith("."):
                continue
            if is_protected(Path(os.path.realpath(child)), self.root):
                continue
            entries.append(self._entry(child))
        entries.sort(key=lambda e: (e["type"] != "dir", e["name"]))
        return {"path": self._rel(target), "entries": entries, "count": len(entries)}

    @action(
        description="Find files whose name matches a glob pattern, recursively under a folder "
        "(like `find PATH -name PATTERN`; patterns with '/' or '**' match the relative path).",
        parameters={
            "properties": {
                "pattern": {"type": "string", "minLength": 1, "description": "e.g. *.py or src/**/test_*.py"},
                "path": {**_PATH, "default": "."},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
            },
            "required": ["pattern"],
        },
        aliases=("search_files", "glob", "locate", "find_files", "chercher", "trouver", "rechercher"),
        tags=("file", "search", "glob"),
    )
    def find(self, pattern: str, path: str = ".", max_results: int = 1000) -> dict[str, Any]:
        if ".." in Path(pattern).parts or pattern.startswith("/"):
            raise ToolError(
                "params.pattern: must be a relative glob without '..' (e.g. *.py or src/**/*.py)."
            )
        base = self._existing(path)
        by_path = "/" in pattern
        regex = _glob_regex(pattern) if by_path else None
        matches: list[str] = []
        truncated = False
        for file in self._walk_files(base):
            rel_to_base = os.path.relpath(file, base).replace(os.sep, "/")
            hit = regex.match(rel_to_base) if regex else fnmatch.fnmatchcase(file.name, pattern)
            if hit:
                if len(matches) >= max_results:
                    truncated = True
                    break
                matches.append(self._rel(file))
        return {
            "pattern": pattern,
            "path": self._rel(base),
            "files": matches,
            "count": len(matches),
            "truncated": truncated,
        }

    @action(
        description="Search file contents for a regular expression; returns matching lines with their numbers.",
        parameters={
            "properties": {
                "pattern": {"type": "string", "minLength": 1},
                "path": {**_PATH, "default": "."},
                "glob": {"type": "string", "description": "Only files whose name matches, e.g. *.py"},
                "ignore_case": {"type": "boolean", "default": False},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 200},
            },
            "required": ["pattern"],
        },
        aliases=("search_text", "search_content", "rg", "ack"),
        tags=("file", "search", "content", "regex"),
    )
    def grep(
        self,
        pattern: str,
        path: str = ".",
        glob: str | None = None,
        ignore_case: bool = False,
        max_results: int = 200,
    ) -> dict[str, Any]:
        try:
            regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ToolError(f"params.pattern: not a valid regular expression ({exc}).")
        base = self._existing(path)
        matches: list[dict[str, Any]] = []
        truncated = False
        for file in self._walk_files(base):
            if glob and not fnmatch.fnmatchcase(file.name, glob):
                continue
            try:
                if file.stat().st_size > self.max_bytes:
                    continue
                text = file.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary or unreadable files are not searched
            for number, line in enumerate(text.splitlines(), start=1):
                if regex.search(line):
                    if len(matches) >= max_results:
                        truncated = True
                        break
                    matches.append({"path": self._rel(file), "line": number, "text": line[:500]})
            if truncated:
                break
        return {"pattern": pattern, "matches": matches, "count": len(matches), "truncated": truncated}

    @action(
        description="Create a folder (and its parents).",
        parameters={"properties": {"path": _PATH}, "required": ["path"]},
        risk_level="low",
        side_effects=("filesystem_write",),
        aliases=("make_dir", "create_folder", "create_directory"),
        tags=("folder", "create"),
    )
    def mkdir(self, path: str) -> dict[str, Any]:
        target = self._resolve(path)
        if target.exists() and not target.is_dir():
            raise ToolError(f"params.path: '{path}' exists and is a file.")
        target.mkdir(parents=True, exist_ok=True)
        return {"path": self._rel(target), "created": True}

    def _pair(self, source: str, destination: str, overwrite: bool) -> tuple[Path, Path]:
        src = self._existing(source, "source")
        dst = self._resolve(destination, "destination")
        if src == self.root:
            raise ToolError("params.source: the workspace folder itself cannot be moved or copied.")
        if dst.exists() and not overwrite:
            raise ToolError(
                f"params.destination: '{destination}' already exists; set overwrite to true to replace it."
            )
        if src.is_dir() and dst.is_relative_to(src):
            raise ToolError("params.destination: cannot put a folder inside itself.")
        dst.parent.mkdir(parents=True, exist_ok=True)
        return src, dst

    @action(
        description="Move or rename a file or folder inside the workspace.",
        parameters={
            "properties": {
                "source": _PATH,
                "destination": _PATH,
                "overwrite": {"type": "boolean", "default": False},
            },
            "required": ["source", "destination"],
        },
        risk_level="medium",
        side_effects=("filesystem_write", "filesystem_delete"),
        aliases=("rename", "mv", "deplacer", "renommer"),
        tags=("file", "move"),
    )
    def move(self, source: str, destination: str, overwrite: bool = False) -> dict[str, Any]:
        src, dst = self._pair(source, destination, overwrite)
        if dst.exists() and dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        shutil.move(str(src), str(dst))
        return {"source": self._rel(src), "destination": self._rel(dst)}

    @action(
        description="Copy a file or folder inside the workspace (links are copied as links).",
        parameters={
            "properties": {
                "source": _PATH,
                "destination": _PATH,
                "overwrite": {"type": "boolean", "default": False},
            },
            "required": ["source", "destination"],
        },
        risk_level="low",
        side_effects=("filesystem_write",),
        aliases=("cp", "duplicate", "copier"),
        tags=("file", "copy"),
    )
    def copy(self, source: str, destination: str, overwrite: bool = False) -> dict[str, Any]:
        src, dst = self._pair(source, destination, overwrite)
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            # symlinks=True: a link that points out of the workspace is copied as a link (still
            # refused on use), never followed into a copy of outside data.
            shutil.copytree(src, dst, symlinks=True)
        else:
            if src.stat().st_size > self.max_bytes:
                raise ToolError(
                    f"params.source: '{source}' is larger than max_file_bytes ({self.max_bytes})."
                )
            shutil.copy2(src, dst)
        return {"source": self._rel(src), "destination": self._rel(dst)}

    @action(
        description="Delete a file, or a folder with recursive=true.",
        parameters={
            "properties": {"path": _PATH, "recursive": {"type": "boolean", "default": False}},
            "required": ["path"],
        },
        risk_level="high",
        side_effects=("filesystem_delete",),
        irreversible=True,
        aliases=("remove", "rm", "unlink", "erase", "supprimer", "effacer"),
        tags=("file", "delete"),
    )
    def delete(self, path: str, recursive: bool = False) -> dict[str, Any]:
        target = self._existing(path)
        if target == self.root:
            raise ToolError("params.path: the workspace folder itself cannot be deleted.")
        if target.is_dir():
            if not recursive and any(target.iterdir()):
                raise ToolError(
                    f"params.recursive: '{path}' is a non-empty folder; set recursive to true to delete it."
                )
            shutil.rmtree(target)
        else:
            target.unlink()
        return {"path": self._rel(target), "deleted": True}

    @action(
        description="Metadata of a file or folder: type, size, modification time, permissions.",
        parameters={"properties": {"path": _PATH}, "required": ["path"]},
        aliases=("info", "exists", "file_info", "metadata"),
        tags=("file", "metadata"),
    )
    def stat(self, path: str) -> dict[str, Any]:
        target = self._existing(path)
        info = target.stat()
        return {
            "path": self._rel(target),
            "type": "dir" if target.is_dir() else "file",
            "size": info.st_size,
            "modified": _iso(info.st_mtime),
            "mode": stat_mod.filemode(info.st_mode),
        }
