"""The workspace sandbox shared by filesystem, shell and database.

Where a workspace lives (decision, documented in the module configs):

- ``workspace`` unset → ``<DIGITORN_DATA_DIR>/workspaces/<app_id>`` (created on first use);
- an absolute path (``~`` expanded) → that folder;
- a relative path → relative to the manifest's folder (the deploy anchors it, see
  ``apps_registry.services``); one that still arrives relative resolves against the daemon's
  current working directory.

Every user path is resolved inside the workspace with symlinks followed (``os.path.realpath``), so
``..``, absolute paths elsewhere and symlinks pointing out are all refused. The daemon's own data
dir (database, keys, other apps' workspaces) is never reachable: a workspace that contains it
sees it as missing, and a workspace inside it must be this app's own folder under ``workspaces/``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from django.conf import settings

from tooling.modules.base import ToolError

_SYSTEM_DIRS = tuple(
    Path(p)
    for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
              "/sbin", "/sys", "/usr", "/var/lib", "/var/run", "/var/log")
)
_SYSTEM_STRINGS = frozenset(str(p) for p in _SYSTEM_DIRS)
_SYSTEM_PREFIXES = tuple(f"{p}/" for p in _SYSTEM_DIRS)


def _within(path: str, base: str) -> bool:
    """``Path(path).is_relative_to(base)`` for absolute, normalised paths (realpath's output), as a
    string test: the Path form cost more than the rest of a workspace check together."""
    return path == base or path.startswith(base if base.endswith("/") else base + "/")


def default_workspace(app_id: str) -> Path:
    return Path(settings.DATA_DIR) / "workspaces" / app_id


def module_workspace(module) -> Path:
    """A module's workspace folder: its own ``workspace`` setting, else the filesystem module's, else
    the app's default (``workspace_root``); memoised on the module instance (one per call)."""
    root = getattr(module, "_workspace_root", None)
    if root is None:
        configured = module.config.get("workspace") or (module.context.app_modules.get("filesystem") or {}).get(
            "workspace"
        )
        root = module._workspace_root = workspace_root(module.context.app_id, configured)
    return root


_data_dir_memo: tuple[str, Path] | None = None


def real_data_dir() -> Path:
    """The daemon's data dir with its links resolved, memoised per value of the setting: the daemon
    owns that folder and does not re-link it while it runs (every tool call asked for it, one to
    three times, each a realpath walking every component)."""
    global _data_dir_memo
    configured = str(settings.DATA_DIR)
    memo = _data_dir_memo
    if memo is None or memo[0] != configured:
        memo = _data_dir_memo = (configured, Path(os.path.realpath(configured)))
    return memo[1]


def workspace_root(app_id: str, configured: str | None) -> Path:
    """The real, existing workspace folder for an app (created when it is the default one)."""
    data_dir = real_data_dir()
    if configured:
        root = Path(os.path.realpath(os.path.expanduser(str(configured))))
    else:
        root = Path(os.path.realpath(default_workspace(app_id)))
        root.mkdir(parents=True, exist_ok=True)
    real = str(root)
    # The app's own folder, only needed (and resolved) for a root inside the data dir.
    if _within(real, str(data_dir)) and not _within(real, os.path.realpath(default_workspace(app_id))):
        raise ToolError(
            f"config.workspace: '{configured}' is inside the daemon's data dir; use a folder outside "
            f"{data_dir} or leave workspace unset for the app's own folder."
        )
    if real == "/" or real.startswith(_SYSTEM_PREFIXES) or real in _SYSTEM_STRINGS:
        # A workspace is read-write for tools and bound read-write into the shell's sandbox.
        raise ToolError(
            f"config.workspace: '{configured}' is a system folder ({root}); give the app a folder of its own."
        )
    if not os.path.isdir(real):
        raise ToolError(
            f"config.workspace: '{configured}' does not exist or is not a folder; create it first."
        )
    return root


def is_protected(path: Path, root: Path) -> bool:
    """True for paths inside the daemon's data dir that are not inside this workspace's own folder."""
    data_dir = real_data_dir()
    if root.is_relative_to(data_dir):
        # The workspace is the app's own folder under the data dir: containment already applies.
        return False
    return path.is_relative_to(data_dir)


def resolve_in(root: Path, user_path: str, *, field: str = "path", source: str = "params") -> Path:
    """Resolve ``user_path`` (relative to ``root``, or absolute inside it) with symlinks followed.

    ``source.field`` names where the path came from in error messages (``params.path``, ``config.url``).
    """
    field = f"{source}.{field}"
    if not isinstance(user_path, str):
        raise ToolError(f"{field}: must be a string path relative to the workspace.")
    if "\x00" in user_path:
        raise ToolError(f"{field}: NUL bytes are not allowed in paths.")
    raw = user_path.strip() or "."
    candidate = Path(raw) if os.path.isabs(raw) else root / raw
    resolved = Path(os.path.realpath(candidate))
    if not resolved.is_relative_to(root):
        raise ToolError(
            f"{field}: '{user_path}' resolves outside the workspace ({root}); "
            "use a path relative to the workspace without '..' or links that leave it."
        )
    if is_protected(resolved, root):
        raise ToolError(
            f"{field}: '{user_path}' is inside the daemon's data dir, which tools may not touch."
        )
    return resolved


def relative(root: Path, path: Path) -> str:
    rel = os.path.relpath(path, root)
    return "." if rel == "." else rel.replace(os.sep, "/")


# -- race-free access: every component opened relative to the workspace's directory fd -----------
#
# ``resolve_in`` checks a path and returns it; something that swaps a component for a symlink
# between that check and the later open walks out of the workspace (issue #10: 23 reads of the
# daemon's secret key in 600 tries). ``Beneath`` never hands out a path: it walks the components
# with ``openat``-style calls on directory fds, never lets the kernel follow a symlink
# (O_NOFOLLOW), follows links itself only while they stay inside, and returns (dir fd, name) pairs
# that the caller uses with ``dir_fd=``. A component swapped mid-walk makes an open fail, never escape.

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40


class Target:
    """The last component of a resolved path: ``name`` inside the open folder ``dir_fd``.

    ``st`` is its lstat (None when it does not exist); ``rel`` its path relative to the workspace;
    ``chain`` the (dev, ino) of every folder from the workspace down to ``dir_fd``.
    """

    def __init__(self, dir_fd: int, name: str, st: os.stat_result | None, rel: str, chain: list):
        self.dir_fd, self.name, self.st, self.rel, self.chain = dir_fd, name, st, rel, chain

    @property
    def is_root(self) -> bool:
        return self.name == "."

    @property
    def exists(self) -> bool:
        return self.st is not None

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)

    @property
    def is_link(self) -> bool:
        return self.st is not None and stat.S_ISLNK(self.st.st_mode)


class Beneath:
    """Opens paths under ``root`` without ever leaving it. Use as a context manager (it owns fds)."""

    def __init__(self, root: Path):
        self.root = root
        self.fd = os.open(root, _DIR_FLAGS)
        self._fds: list[int] = []
        data_dir = real_data_dir()
        try:
            st = os.stat(data_dir)
            # A workspace inside the data dir is the app's own folder (workspace_root checks), and
            # a walk never climbs above the workspace, so only a data dir below it needs hiding.
            self.data_dir_id = None if _within(str(root), str(data_dir)) else (st.st_dev, st.st_ino)
        except OSError:
            self.data_dir_id = None

    def __enter__(self) -> Beneath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in [*self._fds, self.fd]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def is_data_dir(self, st: os.stat_result) -> bool:
        return self.data_dir_id is not None and (st.st_dev, st.st_ino) == self.data_dir_id

    def _open_dir(self, dir_fd: int, name: str) -> int:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        self._fds.append(fd)
        return fd

    def _parts(self, user_path: str, field: str) -> list[str]:
        if not isinstance(user_path, str):
            raise ToolError(f"{field}: must be a string path relative to the workspace.")
        if "\x00" in user_path:
            raise ToolError(f"{field}: NUL bytes are not allowed in paths.")
        raw = user_path.strip() or "."
        if os.path.isabs(raw):
            normal = os.path.normpath(raw)
            if not Path(normal).is_relative_to(self.root):
                raise self.outside(user_path, field)
            raw = os.path.relpath(normal, self.root)
        return [p for p in raw.split("/") if p not in ("", ".")]

    def outside(self, user_path: str, field: str) -> ToolError:
        return ToolError(
            f"{field}: '{user_path}' resolves outside the workspace ({self.root}); "
            "use a path relative to the workspace without '..' or links that leave it."
        )

    def protected(self, user_path: str, field: str) -> ToolError:
        return ToolError(f"{field}: '{user_path}' is inside the daemon's data dir, which tools may not touch.")

    def resolve(
        self, user_path: str, *, field: str = "params.path", follow_last: bool = True, make_parents: bool = False
    ) -> Target:
        """Walk ``user_path`` down from the workspace; links are followed only while they stay inside."""
        queue = self._parts(user_path, field)
        stack: list[tuple[int, str, tuple[int, int]]] = []  # (fd, name, id) below the root
        root_st = os.fstat(self.fd)
        links = 0

        def here() -> int:
            return stack[-1][0] if stack else self.fd

        def rel(name: str | None = None) -> str:
            names = [s[1] for s in stack] + ([name] if name else [])
            return "/".join(names) or "."

        def chain() -> list[tuple[int, int]]:
            return [(root_st.st_dev, root_st.st_ino), *(s[2] for s in stack)]

        while queue:
            name = queue.pop(0)
            if name == "..":
                if not stack:
                    raise self.outside(user_path, field)
                stack.pop()
                continue
            last = not queue
            try:
                st = os.stat(name, dir_fd=here(), follow_symlinks=False)
            except FileNotFoundError:
                if last:
                    return Target(here(), name, None, rel(name), chain())
                if not make_parents:
                    raise ToolError(f"{field}: '{user_path}' does not exist in the workspace.")
                try:
                    os.mkdir(name, dir_fd=here())
                except FileExistsError:
                    pass
                st = os.stat(name, dir_fd=here(), follow_symlinks=False)
            except NotADirectoryError:
                raise ToolError(f"{field}: '{user_path}' goes through a file, not a folder.")
            except OSError as exc:
                raise ToolError(f"{field}: cannot open '{user_path[:200]}' ({exc.strerror}).")
            if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                links += 1
                if links > _MAX_LINKS:
                    raise ToolError(f"{field}: '{user_path}' goes through too many links.")
                try:
                    target = os.readlink(name, dir_fd=here())
                except OSError:
                    raise ToolError(f"{field}: '{user_path}' changed while it was being opened; try again.")
                if os.path.isabs(target):
                    normal = os.path.normpath(target)
                    if not Path(normal).is_relative_to(self.root):
                        raise self.outside(user_path, field)
                    stack.clear()
                    target = os.path.relpath(normal, self.root)
                queue[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            if self.is_data_dir(st):
                raise self.protected(user_path, field)
            if last:
                return Target(here(), name, st, rel(name), chain())
            if not stat.S_ISDIR(st.st_mode):
                raise ToolError(f"{field}: '{user_path}' goes through a file, not a folder.")
            try:
                fd = self._open_dir(here(), name)
            except OSError:
                # Swapped for a link or a file between the stat and the open: refuse, never follow.
                raise ToolError(f"{field}: '{user_path}' changed while it was being opened; try again.")
            opened = os.fstat(fd)
            if self.is_data_dir(opened):
                raise self.protected(user_path, field)
            stack.append((fd, name, (opened.st_dev, opened.st_ino)))
        # The path named the workspace itself (or a folder reached through links).
        if stack:
            fd, name, _ = stack.pop()
            return Target(here(), name, os.stat(name, dir_fd=here(), follow_symlinks=False), rel(name), chain())
        return Target(self.fd, ".", root_st, ".", [])

    def open_dir(self, target: Target) -> int:
        """An fd of the folder ``target`` names (owned by this Beneath)."""
        if target.is_root:
            return self.fd
        fd = self._open_dir(target.dir_fd, target.name)
        if self.is_data_dir(os.fstat(fd)):
            raise ToolError(f"'{target.rel}' is inside the daemon's data dir, which tools may not touch.")
        return fd

    def open_file(self, target: Target, flags: int, *, field: str, user_path: str, mode: int = 0o644) -> int:
        """Open a regular file with O_NOFOLLOW; refuse other kinds and files with several hard links.

        A hard link planted in the workspace is the same file as one outside it: with more than one
        link there is no telling, so it is neither read nor written (checked before any truncation).
        """
        try:
            fd = os.open(
                target.name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=target.dir_fd
            )
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise ToolError(f"{field}: '{user_path}' changed into a link while it was being opened; refused.")
            if isinstance(exc, IsADirectoryError):
                raise ToolError(f"{field}: '{user_path}' is a folder.")
            if isinstance(exc, FileNotFoundError):
                raise ToolError(f"{field}: '{user_path}' does not exist in the workspace.")
            raise ToolError(f"{field}: cannot open '{user_path}' ({exc.strerror}).")
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "is not a regular file"
        elif st.st_nlink > 1:
            problem = (
                f"has {st.st_nlink} hard links, so it may be a file outside the workspace; "
                "tools do not read or write such files"
            )
        if problem:
            os.close(fd)
            raise ToolError(f"{field}: '{user_path}' {problem}.")
        os.set_blocking(fd, True)
        return fd
