"""The SQLite write queue orders writers across processes and never waits without bound."""

from __future__ import annotations

import fcntl
import os
import time

import pytest
from django.db import OperationalError

from digitorn_site.sqlite_backend.base import WriteLock


def test_write_lock_waits_for_another_holder_and_then_gives_up(tmp_path):
    path = tmp_path / "db.sqlite3.writelock"
    lock = WriteLock(str(path))
    # Another process's hold: a separate open file description conflicts with ours under flock.
    other = os.open(path, os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="database is locked"):
        lock.acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.3
    # A failed attempt leaves the process-local lock free for the next writer.
    fcntl.flock(other, fcntl.LOCK_UN)
    lock.acquire(timeout=0.3)
    lock.release()
    os.close(other)


def test_write_lock_is_exclusive_between_holders(tmp_path):
    path = str(tmp_path / "db.sqlite3.writelock")
    first, second = WriteLock(path), WriteLock(path)
    first.acquire(timeout=1)
    with pytest.raises(OperationalError):
        second.acquire(timeout=0.1)
    first.release()
    second.acquire(timeout=1)
    second.release()
