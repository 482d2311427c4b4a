"""SQLite backend whose writers queue on a lock instead of sleeping in SQLite's busy handler.

SQLite admits one writer at a time. A second writer (``BEGIN IMMEDIATE`` while another transaction
holds the lock) retries with sleeps of 1, 2, 5, 10 … 100 ms, so under a few dozen concurrent turns
most of the wall time went to sleeping while the lock was free. Here every write transaction, and
every write statement run outside one, first takes a per-process ``threading.Lock`` and then an
``flock`` on ``<database>.writelock`` shared by all processes (ASGI workers, Celery): both wake the
next waiter as soon as the holder releases. SQLite's own locking stays underneath, unchanged, as
the correctness guarantee; the lock only orders the queue.

Everything else is Django's SQLite backend (``ENGINE: digitorn_site.sqlite_backend``).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time

from django.db import OperationalError
from django.db.backends.sqlite3 import base

_WRITE_PREFIXES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_registry_lock = threading.Lock()
_locks: dict[tuple[int, str], WriteLock] = {}


class WriteLock:
    """The write queue of one database file in this process (re-created after a fork)."""

    def __init__(self, path: str | None):
        self.thread_lock = threading.Lock()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None

    def acquire(self, timeout: float) -> None:
        if not self.thread_lock.acquire(timeout=timeout):
            raise OperationalError(f"database is locked (no write turn within {timeout:g} s in this process)")
        if self.fd is not None:
            try:
                self._flock(timeout)
            except BaseException:
                self.thread_lock.release()
                raise

    def _flock(self, timeout: float) -> None:
        # Bounded like SQLite's own busy timeout: a stuck writer in another process must turn into
        # a clear "database is locked" error, never a worker that waits forever.
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OperationalError(
                        f"database is locked (another process held the write lock for {timeout:g} s)"
                    ) from None
                time.sleep(0.001)

    def release(self) -> None:
        try:
            if self.fd is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()


def write_lock_for(name: str) -> WriteLock:
    in_memory = not name or name == ":memory:" or "mode=memory" in name
    path = None if in_memory else f"{name}.writelock"
    key = (os.getpid(), path or name)
    with _registry_lock:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = WriteLock(path)
        return lock


class QueuedWriteCursor(base.SQLiteCursorWrapper):
    write_lock: WriteLock
    lock_timeout: float

    def _autocommit_write(self, query: str) -> bool:
        return not self.connection.in_transaction and query.lstrip()[:7].upper().startswith(_WRITE_PREFIXES)

    def _queued(self, run, query, params):
        """Run a write outside any transaction (autocommit) in its turn on the write queue."""
        if not self._autocommit_write(query):
            return run(query, params)
        self.write_lock.acquire(self.lock_timeout)
        try:
            return run(query, params)
        finally:
            self.write_lock.release()

    def execute(self, query, params=None):
        return self._queued(super().execute, query, params)

    def executemany(self, query, param_list):
        return self._queued(super().executemany, query, param_list)


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

    def _write_lock(self) -> WriteLock:
        return write_lock_for(str(self.settings_dict["NAME"]))

    def _lock_timeout(self) -> float:
        return float(self.settings_dict.get("OPTIONS", {}).get("timeout", 30))

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=QueuedWriteCursor)
        cursor.write_lock = self._write_lock()
        cursor.lock_timeout = self._lock_timeout()
        return cursor

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            self._write_lock().release()

    def _start_transaction_under_autocommit(self):
        lock = self._write_lock()
        lock.acquire(self._lock_timeout())
        self._holds_write_lock = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            if not (self.connection is not None and self.connection.in_transaction):
                self._release_write_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_write_lock()
