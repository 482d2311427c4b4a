"""Where the CLI finds things: the data dir, the pid file, the daemon's URL and the admin key.

The settings module is the one source for paths (``DIGITORN_DATA_DIR`` and friends), so the CLI
and the daemon can never disagree about where the pid file or the admin key lives.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_URL = "http://127.0.0.1:8000"


def settings():
    """Django's settings object (configured lazily; no app registry needed)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
    from django.conf import settings as django_settings

    return django_settings


def django_setup() -> None:
    """Full Django setup, for commands that touch the database in-process (apikey, rotate)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
    import django

    django.setup()


def data_dir() -> Path:
    # DIGITORN_DATA_DIR in the environment is what settings.py resolves too (an env file only fills
    # variables that are unset); reading it here keeps Django out of the supervisor (issue 14).
    if value := os.environ.get("DIGITORN_DATA_DIR"):
        path = Path(value).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path
    return Path(settings().DATA_DIR)


def pid_file() -> Path:
    return data_dir() / "daemon.json"  # settings.DIGITORN_PID_FILE


def log_dir() -> Path:
    path = data_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def log_file() -> Path:
    return log_dir() / "daemon.log"


def read_pid_file() -> dict[str, Any] | None:
    """The supervisor's pid file, or None when absent or unreadable (a torn write counts as absent)."""
    try:
        data = json.loads(pid_file().read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None


def write_pid_file(data: dict[str, Any]) -> None:
    """Atomic replace so a reader never sees half a file."""
    path = pid_file()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def remove_pid_file(*, only_if_pid: int | None = None) -> None:
    """Remove the pid file; with ``only_if_pid``, only when it still names that supervisor."""
    if only_if_pid is not None:
        current = read_pid_file()
        if current is not None and current.get("pid") != only_if_pid:
            return
    try:
        pid_file().unlink()
    except FileNotFoundError:
        pass


def resolve_url(explicit: str | None = None) -> str:
    """``--url``, else ``DIGITORN_URL``, else the running daemon's pid file, else the default."""
    if explicit:
        return explicit.rstrip("/")
    if env_url := os.environ.get("DIGITORN_URL", "").strip():
        return env_url.rstrip("/")
    info = read_pid_file()
    if info and isinstance(info.get("url"), str):
        return info["url"].rstrip("/")
    return DEFAULT_URL


def resolve_api_key(explicit: str | None = None) -> str:
    """``--api-key``, else ``DIGITORN_API_KEY``, else the admin key file the daemon generated."""
    if explicit:
        return explicit
    if env_key := os.environ.get("DIGITORN_API_KEY", "").strip():
        return env_key
    try:
        return Path(settings().ADMIN_KEY_FILE).read_text().strip()
    except (FileNotFoundError, PermissionError):
        return ""


def child_env() -> dict[str, str]:
    """Environment for the daemon's children: ours, plus the project on the path and the data dir pinned."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = env.get("DJANGO_SETTINGS_MODULE") or "digitorn_site.settings"
    env["DIGITORN_DATA_DIR"] = str(data_dir())
    env["PYTHONUNBUFFERED"] = "1"
    paths = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def python() -> str:
    return sys.executable
