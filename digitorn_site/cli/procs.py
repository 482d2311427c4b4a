"""Process-table helpers for the daemon manager (Linux /proc).

A pid alone is not an identity: after a crash the number may belong to some unrelated process.
Every pid the supervisor records is paired with the process start time from /proc, and only a
process whose start time still matches is considered ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, starttime)`` of a process, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def proc_starttime(pid: int) -> int | None:
    info = proc_stat(pid)
    return info[1] if info else None


def proc_alive(pid: int | None, starttime: int | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, started at ``starttime``."""
    if not pid or pid <= 0:
        return False
    info = proc_stat(pid)
    if info is None:
        return False
    state, started = info
    if state in ("Z", "X"):
        return False
    return starttime is None or started == starttime


def send_signal(pid: int, sig: int, *, group: bool = False) -> bool:
    """Send ``sig`` to a process (or its process group); False when it is already gone."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def wait_gone(procs: Iterable[tuple[int, int | None]], timeout: float, *, poll: float = 0.1) -> bool:
    """Wait until none of ``(pid, starttime)`` is alive; True when they all went in time."""
    pending = [p for p in procs if p[0]]
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if proc_alive(*p)]
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def kill_group_quietly(pgid: int) -> None:
    """SIGKILL whatever is left of a child's process group (e.g. Celery pool processes)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to signal this process when its parent (the supervisor) dies.

    Used as a ``preexec_fn`` so children never outlive a supervisor that was SIGKILLed.
    """
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)
