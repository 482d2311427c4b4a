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

import os
from pathlib import Path

from django.conf import settings

from tooling.modules.base import ToolError


def default_workspace(app_id: str) -> Path:
    return Path(settings.DATA_DIR) / "workspaces" / app_id


def workspace_root(app_id: str, configured: str | None) -> Path:
    """The real, existing workspace folder for an app (created when it is the default one)."""
    data_dir = Path(os.path.realpath(settings.DATA_DIR))
    if configured:
        root = Path(os.path.realpath(os.path.expanduser(str(configured))))
    else:
        root = Path(os.path.realpath(default_workspace(app_id)))
        root.mkdir(parents=True, exist_ok=True)
    own = Path(os.path.realpath(default_workspace(app_id)))
    if root.is_relative_to(data_dir) and not root.is_relative_to(own):
        raise ToolError(
            f"config.workspace: '{configured}' is inside the daemon's data dir; use a folder outside "
            f"{data_dir} or leave workspace unset for the app's own folder."
        )
    if not root.is_dir():
        raise ToolError(
            f"config.workspace: '{configured}' does not exist or is not a folder; create it first."
        )
    return root


def is_protected(path: Path, root: Path) -> bool:
    """True for paths inside the daemon's data dir that are not inside this workspace's own folder."""
    data_dir = Path(os.path.realpath(settings.DATA_DIR))
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
