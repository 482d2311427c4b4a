"""Database work from async code: each call on a worker thread, its connection given back after.

Plumbing (no app imported), so the async views of every app and the conversation engine share one
way to reach the ORM from the event loop.

The hops run on a pool of our own rather than through asgiref's ``sync_to_async`` on the loop's
default executor, for two reasons measured on the embedded daemon (SQLite):

- Thread affinity. Every thread keeps its own SQLite connection (``CONN_MAX_AGE=None``), and
  SQLite drops a connection's page cache whenever another connection has written since its last
  transaction. The default executor hands work to whichever idle thread wakes first, so
  consecutive hops of one turn rotated over its threads and each re-read its pages through
  ``pread``. Here the most recently idle thread takes the next hop (a LIFO stack): at one turn
  at a time a single warm connection serves nearly everything, under load the pool still grows to
  ``max_threads``. On the peers bench this took the read syscalls of the daemon from ~810 to ~260
  per turn.
- Less per hop: no ``concurrent.futures.Future`` chained to an asyncio one, no shield, no copy of
  every context variable back to the caller after each call.

Semantics kept from ``sync_to_async(thread_sensitive=False)``: the call runs in a copy of the
caller's context; its exception (type and traceback) is raised in the caller; cancelling the caller
raises ``CancelledError`` at once while a started call finishes on its thread (a call not started
yet is dropped); ``async_to_sync`` inside a call runs its coroutine on the caller's loop. Changes
a call makes to context variables stay in its copy (asgiref copied them back; nothing here
relies on that).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import close_old_connections


class HopPool:
    """Threads that run database hops, the most recently idle one first.

    ``max_threads`` bounds it like the loop's default executor (a call that runs a long tool
    holds its thread; other sessions' hops take the others, and past the bound they queue in
    order). Threads are daemons and live as long as the process, like the executor's.
    """

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._backlog: deque[tuple] = deque()
        self._started = 0

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        tasks: list[asyncio.Task] = []
        self._submit((loop, future, contextvars.copy_context(), tasks, fn, args, kwargs))
        try:
            return await future
        except asyncio.CancelledError:
            # As asgiref does: a coroutine the call started through async_to_sync is cancelled with us.
            for task in tasks:
                task.cancel()
            raise

    def _submit(self, job: tuple) -> None:
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
                worker.job = job
                worker.wake.release()
                return
            if self._started >= self.max_threads:
                self._backlog.append(job)
                return
            self._started += 1
            number = self._started
        worker = _Worker(self, job)
        threading.Thread(target=worker.run, name=f"db-hop-{number}", daemon=True).start()

    def _next(self, worker: _Worker) -> tuple | None:
        """The next queued job for ``worker``; None when there is none and it is idle again."""
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            self._idle.append(worker)
            return None


class _Worker:
    def __init__(self, pool: HopPool, job: tuple) -> None:
        self.pool = pool
        self.job: tuple | None = job
        self.wake = threading.Lock()
        self.wake.acquire()

    def run(self) -> None:
        local = SyncToAsync.threadlocal
        job, self.job = self.job, None
        while True:
            loop, future, context, tasks, fn, args, kwargs = job
            failed, result = False, None
            if not future.cancelled():
                # What asgiref's thread_handler sets: async_to_sync inside the call schedules its
                # coroutine on the caller's loop (and lists the task so a cancel reaches it).
                local.main_event_loop = loop
                local.main_event_loop_pid = os.getpid()
                local.task_context = tasks
                try:
                    result = context.run(fn, *args, **kwargs)
                except BaseException as exc:  # noqa: BLE001  (raised in the awaiting coroutine)
                    failed, result = True, exc
                finally:
                    local.task_context = None
            # Idle again before the caller hears of the result, so its next hop finds this thread
            # (and its warm page cache) free instead of waking another one.
            job = self.pool._next(self)
            try:
                loop.call_soon_threadsafe(_settle, future, failed, result)
            except RuntimeError:
                pass  # the caller's loop is closed: nobody awaits the result any more
            del loop, future, context, tasks, fn, args, kwargs, result
            if job is None:
                self.wake.acquire()
                job, self.job = self.job, None


def _settle(future: asyncio.Future, failed: bool, result: Any) -> None:
    if future.cancelled():
        return
    if not failed:
        future.set_result(result)
    elif isinstance(result, StopIteration):
        # asyncio refuses StopIteration in a future (it would end the awaiting generator silently).
        future.set_exception(RuntimeError(f"StopIteration raised in a database call: {result!r}"))
    else:
        future.set_exception(result)


def _pool_size() -> int:
    # The size of asyncio's default executor, which ran these hops before.
    return min(32, (os.cpu_count() or 1) + 4)


_pool = HopPool(_pool_size())


def _fresh_pool_after_fork() -> None:
    global _pool
    _pool = HopPool(_pool_size())  # the parent's threads do not exist in a forked child


os.register_at_fork(after_in_child=_fresh_pool_after_fork)


def db(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a sync ORM function in a worker thread; off SQLite, give its connection back after
    (to the pool on PostgreSQL: a worker thread must not keep one between calls)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            if not settings.IS_SQLITE:
                close_old_connections()

    async def hop(*args: Any, **kwargs: Any) -> Any:
        return await _pool.run(call, *args, **kwargs)

    return hop
