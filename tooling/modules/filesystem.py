"""filesystem: read and change files inside the app's workspace, and nowhere else.

Config: ``workspace`` (see :mod:`tooling.modules._workspace` for where it lives when unset or
relative) and ``max_file_bytes`` (largest file read or written, default 1 MiB). Paths in params are
relative to the workspace (absolute paths are accepted when they point inside it); ``file_path`` is
accepted for ``path`` (the original Digitorn's name).

Every path is opened component by component from the workspace's directory fd
(:class:`~tooling.modules._workspace.Beneath`): no check-then-open window for a swapped symlink,
and files with more than one hard link are neither read nor written. ``grep`` patterns run on RE2,
whose matching time is linear in the input, so a pattern cannot stall the worker.
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

import re2

from tooling.modules._workspace import Beneath, Target, workspace_root
from tooling.modules.base import Module, ToolError, action

_PATH = {"type": "string", "description": "Path relative to the workspace (alias: file_path)."}
_FILE_PATH = {"file_path": "path"}
DEFAULT_MAX_FILE_BYTES = 1024 * 1024
# RE2 keeps its automaton within this much memory; a pattern that needs more is refused.
_RE2_MAX_MEM = 32 * 1024 * 1024


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _kind(mode: int) -> str:
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    if stat_mod.S_ISDIR(mode):
        return "dir"
    return "file"


def _read_all(fd: int, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def compile_pattern(pattern: str, ignore_case: bool) -> Any:
    """An RE2 regex (linear-time matching; no backreferences or lookarounds)."""
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False
    options.max_mem = _RE2_MAX_MEM
    try:
        return re2.compile(pattern, options=options)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ToolError(
            f"params.pattern: not a regular expression the linear-time engine (RE2) accepts ({detail}); "
            "backreferences and lookarounds are not supported."
        )


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

    def _existing(self, ws: Beneath, user_path: str, field: str = "path", *, follow: bool = True) -> Target:
        target = ws.resolve(user_path, field=f"params.{field}", follow_last=follow)
        if not target.exists:
            raise ToolError(f"params.{field}: '{user_path}' does not exist in the workspace.")
        return target

    def _walk_files(self, ws: Beneath, base: Target) -> Iterator[tuple[str, int, str]]:
        """(path relative to the workspace, folder fd, name) of the regular files under ``base``.

        Walks with folder fds (never following links into folders); a linked file is kept when
        the link, resolved from the workspace, lands on a regular file inside it.
        """
        if not base.is_dir:
            yield base.rel, base.dir_fd, base.name
            return
        top = ws.open_dir(base)
        prefix = "" if base.rel == "." else base.rel + "/"
        for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            keep = []
            for name in sorted(dirnames):
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat_mod.S_ISDIR(st.st_mode) and not ws.is_data_dir(st):
                    keep.append(name)
                elif stat_mod.S_ISLNK(st.st_mode):
                    filenames.append(name)  # a link to a folder: treated like a linked file (skipped)
            dirnames[:] = keep
            here = "" if dirpath == "." else dirpath[2:] + "/"
            for name in sorted(filenames):
                rel = prefix + here + name
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat_mod.S_ISREG(st.st_mode):
                    yield rel, dirfd, name
                elif stat_mod.S_ISLNK(st.st_mode):
                    try:
                        target = ws.resolve(rel)
                    except ToolError:
                        continue
                    if target.exists and stat_mod.S_ISREG(target.st.st_mode):
                        yield rel, target.dir_fd, target.name

    def _entry(self, ws: Beneath, dir_fd: int, name: str, rel: str) -> dict[str, Any] | None:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        if ws.is_data_dir(info):
            return None
        return {
            "name": name,
            "path": rel,
            "type": _kind(info.st_mode),
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
        param_aliases=_FILE_PATH,
    )
    def read(self, path: str, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            target = self._existing(ws, path)
            if target.is_dir:
                raise ToolError(f"params.path: '{path}' is a folder; use filesystem.ls to list it.")
            fd = ws.open_file(target, os.O_RDONLY, field="params.path", user_path=path)
            try:
                size = os.fstat(fd).st_size
                raw = _read_all(fd, self.max_bytes)
            finally:
                os.close(fd)
        text = raw.decode("utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        window = lines[offset : offset + limit] if limit else lines[offset:]
        return {
            "path": target.rel,
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
        param_aliases=_FILE_PATH,
    )
    def write(self, path: str, content: str, append: bool = False) -> dict[str, Any]:
        data = content.encode("utf-8")
        if len(data) > self.max_bytes:
            raise ToolError(
                f"params.content: the file would be {len(data)} bytes, above the workspace's "
                f"max_file_bytes ({self.max_bytes})."
            )
        with Beneath(self.root) as ws:
            target = ws.resolve(path, make_parents=True)
            if target.is_root or target.is_dir:
                raise ToolError(f"params.path: '{path}' is a folder.")
            # No O_TRUNC: open_file checks the hard-link count first, then the content goes.
            fd = ws.open_file(target, os.O_WRONLY | os.O_CREAT, field="params.path", user_path=path)
            try:
                existing = os.fstat(fd).st_size if append else 0
                if existing + len(data) > self.max_bytes:
                    raise ToolError(
                        f"params.content: the file would be {existing + len(data)} bytes, above the "
                        f"workspace's max_file_bytes ({self.max_bytes})."
                    )
                if append:
                    os.lseek(fd, 0, os.SEEK_END)
                else:
                    os.ftruncate(fd, 0)
                _write_all(fd, data)
            finally:
                os.close(fd)
        return {"path": target.rel, "bytes_written": len(data), "appended": append}

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
        param_aliases=_FILE_PATH,
    )
    def edit(self, path: str, old_string: str, new_string: str, replace_all: bool = False) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            target = self._existing(ws, path)
            if target.is_dir:
                raise ToolError(f"params.path: '{path}' is not a file.")
            fd = ws.open_file(target, os.O_RDWR, field="params.path", user_path=path)
            try:
                if os.fstat(fd).st_size > self.max_bytes:
                    raise ToolError(f"params.path: '{path}' is larger than max_file_bytes ({self.max_bytes}).")
                try:
                    text = _read_all(fd, self.max_bytes).decode("utf-8")
                except UnicodeDecodeError:
                    raise ToolError(f"params.path: '{path}' is not UTF-8 text.")
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
                ).encode("utf-8")
                if len(updated) > self.max_bytes:
                    raise ToolError(f"params.new_string: the result would exceed max_file_bytes ({self.max_bytes}).")
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                _write_all(fd, updated)
            finally:
                os.close(fd)
        return {"path": target.rel, "replacements": count if replace_all else 1}

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
        param_aliases=_FILE_PATH,
    )
    def ls(self, path: str = ".", show_hidden: bool = True) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            target = self._existing(ws, path)
            if not target.is_dir:
                raise ToolError(
                    f"params.path: '{path}' is a file, not a folder; use filesystem.stat or filesystem.read."
                )
            fd = ws.open_dir(target)
            prefix = "" if target.rel == "." else target.rel + "/"
            entries = []
            for name in sorted(os.listdir(fd)):
                if not show_hidden and name.startswith("."):
                    continue
                entry = self._entry(ws, fd, name, prefix + name)
                if entry is not None:
                    entries.append(entry)
        entries.sort(key=lambda e: (e["type"] != "dir", e["name"]))
        return {"path": target.rel, "entries": entries, "count": len(entries)}

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
        param_aliases=_FILE_PATH,
    )
    def find(self, pattern: str, path: str = ".", max_results: int = 1000) -> dict[str, Any]:
        if ".." in Path(pattern).parts or pattern.startswith("/"):
            raise ToolError(
                "params.pattern: must be a relative glob without '..' (e.g. *.py or src/**/*.py)."
            )
        by_path = "/" in pattern
        regex = _glob_regex(pattern) if by_path else None
        matches: list[str] = []
        truncated = False
        with Beneath(self.root) as ws:
            base = self._existing(ws, path)
            base_prefix = "" if base.rel == "." or not base.is_dir else base.rel + "/"
            for rel, _fd, _name in self._walk_files(ws, base):
                rel_to_base = rel[len(base_prefix) :] if base.is_dir else rel.rsplit("/", 1)[-1]
                hit = regex.match(rel_to_base) if regex else fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
                if hit:
                    if len(matches) >= max_results:
                        truncated = True
                        break
                    matches.append(rel)
        return {
            "pattern": pattern,
            "path": base.rel,
            "files": matches,
            "count": len(matches),
            "truncated": truncated,
        }

    @action(
        description="Search file contents for a regular expression (RE2 syntax: no backreferences or "
        "lookarounds); returns matching lines with their numbers.",
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
        param_aliases={**_FILE_PATH, "include": "glob", "-i": "ignore_case"},
    )
    def grep(
        self,
        pattern: str,
        path: str = ".",
        glob: str | None = None,
        ignore_case: bool = False,
        max_results: int = 200,
    ) -> dict[str, Any]:
        regex = compile_pattern(pattern, ignore_case)
        matches: list[dict[str, Any]] = []
        truncated = False
        with Beneath(self.root) as ws:
            base = self._existing(ws, path)
            for rel, dir_fd, name in self._walk_files(ws, base):
                if glob and not fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], glob):
                    continue
                file = Target(dir_fd, name, None, rel, [])
                try:
                    fd = ws.open_file(file, os.O_RDONLY, field="params.path", user_path=rel)
                except ToolError:
                    continue  # links, hard-linked files, fifos: not searched
                try:
                    if os.fstat(fd).st_size > self.max_bytes:
                        continue
                    text = _read_all(fd, self.max_bytes).decode("utf-8")
                except (UnicodeDecodeError, OSError):
                    continue  # binary or unreadable files are not searched
                finally:
                    os.close(fd)
                for number, line in enumerate(text.splitlines(), start=1):
                    if regex.search(line):
                        if len(matches) >= max_results:
                            truncated = True
                            break
                        matches.append({"path": rel, "line": number, "text": line[:500]})
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
        param_aliases=_FILE_PATH,
    )
    def mkdir(self, path: str) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            target = ws.resolve(path, make_parents=True)
            if target.exists and not target.is_dir:
                raise ToolError(f"params.path: '{path}' exists and is a file.")
            if not target.exists:
                try:
                    os.mkdir(target.name, dir_fd=target.dir_fd)
                except FileExistsError:
                    pass
        return {"path": target.rel, "created": True}

    def _pair(
        self, ws: Beneath, source: str, destination: str, overwrite: bool, *, follow: bool
    ) -> tuple[Target, Target]:
        src = self._existing(ws, source, "source", follow=follow)
        if src.is_root:
            raise ToolError("params.source: the workspace folder itself cannot be moved or copied.")
        dst = ws.resolve(destination, field="params.destination", follow_last=False, make_parents=True)
        if dst.is_root:
            raise ToolError(f"params.destination: '{destination}' is the workspace folder itself.")
        if dst.exists and not overwrite:
            raise ToolError(
                f"params.destination: '{destination}' already exists; set overwrite to true to replace it."
            )
        if src.is_dir and (src.st.st_dev, src.st.st_ino) in dst.chain:
            raise ToolError("params.destination: cannot put a folder inside itself.")
        return src, dst

    @staticmethod
    def _remove(target: Target) -> None:
        if target.is_dir:
            shutil.rmtree(target.name, dir_fd=target.dir_fd)  # fd-based: never follows links out
        elif target.exists:
            os.unlink(target.name, dir_fd=target.dir_fd)

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
        param_aliases={"from": "source", "to": "destination"},
    )
    def move(self, source: str, destination: str, overwrite: bool = False) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            # The link itself moves, not what it points to.
            src, dst = self._pair(ws, source, destination, overwrite, follow=False)
            if dst.is_dir:
                self._remove(dst)
            os.rename(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)
        return {"source": src.rel, "destination": dst.rel}

    def _copy_file(self, ws: Beneath, src: Target, dst_dir_fd: int, dst_name: str, user_path: str) -> None:
        fd = ws.open_file(src, os.O_RDONLY, field="params.source", user_path=user_path)
        try:
            if os.fstat(fd).st_size > self.max_bytes:
                raise ToolError(f"params.source: '{user_path}' is larger than max_file_bytes ({self.max_bytes}).")
            data = _read_all(fd, self.max_bytes)
            mode = stat_mod.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        out = ws.open_file(
            Target(dst_dir_fd, dst_name, None, dst_name, []),
            os.O_WRONLY | os.O_CREAT,
            field="params.destination",
            user_path=dst_name,
            mode=mode,
        )
        try:
            os.ftruncate(out, 0)
            _write_all(out, data)
        finally:
            os.close(out)

    def _copy_tree(self, ws: Beneath, src_fd: int, dst_parent_fd: int, name: str, rel: str) -> None:
        os.mkdir(name, dir_fd=dst_parent_fd)
        dst_fd = ws._open_dir(dst_parent_fd, name)
        for child in sorted(os.listdir(src_fd)):
            st = os.stat(child, dir_fd=src_fd, follow_symlinks=False)
            if ws.is_data_dir(st):
                continue
            if stat_mod.S_ISLNK(st.st_mode):
                # Copied as a link: one pointing out of the workspace stays refused on use.
                os.symlink(os.readlink(child, dir_fd=src_fd), child, dir_fd=dst_fd)
            elif stat_mod.S_ISDIR(st.st_mode):
                self._copy_tree(ws, ws._open_dir(src_fd, child), dst_fd, child, f"{rel}/{child}")
            elif stat_mod.S_ISREG(st.st_mode):
                self._copy_file(ws, Target(src_fd, child, st, f"{rel}/{child}", []), dst_fd, child, f"{rel}/{child}")

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
        param_aliases={"from": "source", "to": "destination"},
    )
    def copy(self, source: str, destination: str, overwrite: bool = False) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            src, dst = self._pair(ws, source, destination, overwrite, follow=True)
            if src.is_dir:
                self._remove(dst)
                self._copy_tree(ws, ws.open_dir(src), dst.dir_fd, dst.name, src.rel)
            else:
                if dst.is_dir or dst.is_link:
                    self._remove(dst)
                self._copy_file(ws, src, dst.dir_fd, dst.name, source)
        return {"source": src.rel, "destination": dst.rel}

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
        param_aliases=_FILE_PATH,
    )
    def delete(self, path: str, recursive: bool = False) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            target = self._existing(ws, path, follow=False)
            if target.is_root:
                raise ToolError("params.path: the workspace folder itself cannot be deleted.")
            if target.is_dir and not recursive and os.listdir(ws.open_dir(target)):
                raise ToolError(
                    f"params.recursive: '{path}' is a non-empty folder; set recursive to true to delete it."
                )
            self._remove(target)
        return {"path": target.rel, "deleted": True}

    @action(
        description="Metadata of a file or folder: type, size, modification time, permissions.",
        parameters={"properties": {"path": _PATH}, "required": ["path"]},
        aliases=("info", "exists", "file_info", "metadata"),
        tags=("file", "metadata"),
        param_aliases=_FILE_PATH,
    )
    def stat(self, path: str) -> dict[str, Any]:
        with Beneath(self.root) as ws:
            target = self._existing(ws, path)
            info = target.st
        return {
            "path": target.rel,
            "type": "dir" if stat_mod.S_ISDIR(info.st_mode) else "file",
            "size": info.st_size,
            "modified": _iso(info.st_mtime),
            "mode": stat_mod.filemode(info.st_mode),
        }
