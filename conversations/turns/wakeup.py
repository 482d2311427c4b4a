"""Waking a session's queue: on this worker's event loop, else through Celery.

The lowest piece of the turn machine: turn state (``state``), delegation and the session services
schedule work through here without importing the loop that does it. ``ConversationsConfig.ready()``
registers that loop (``connect``): ``advance`` (the coroutine that runs a session's queue,
``scheduler.advance_session``) and ``offload`` (the same for code without an event loop: the Celery
task ``advance_session_task``'s ``delay``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from django.db import transaction

from conversations.events import main_loop

# The asyncio tasks this process runs (kept referenced until they end).
_tasks: set[asyncio.Task] = set()
_advance: Callable[..., Awaitable[None]] | None = None
_offload: Callable[[int], object] | None = None


def connect(*, advance: Callable[..., Awaitable[None]], offload: Callable[[int], object]) -> None:
    """Register what runs a session's queue (called once, from ``ConversationsConfig.ready()``)."""
    global _advance, _offload
    _advance, _offload = advance, offload


def start_task(loop: asyncio.AbstractEventLoop, session_pk: int) -> None:
    track(loop.create_task(forgotten_when_done(_advance, session_pk=session_pk)))


def track(task: asyncio.Task) -> None:
    """Keep ``task`` referenced while it runs: in ``_tasks`` until it has finished (the done
    callback covers a task cancelled before its first step)."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def forgotten_when_done(work: Callable[..., Awaitable[None]], **kwargs: Any) -> None:
    """Await ``work(**kwargs)``, then leave ``_tasks`` (run it as a task passed to ``track``)."""
    try:
        await work(**kwargs)
    finally:
        # Out of ``_tasks`` in the task's own last step, not one loop iteration later (a done
        # callback): code waiting for ``_tasks`` to empty never finds a finished task in it,
        # whose await would return without yielding to the loop that runs that callback.
        _tasks.discard(asyncio.current_task())


def schedule_advance(session_pk: int) -> None:
    """Run the session's queue: as a task on this worker's event loop, else through Celery."""
    loop = main_loop()
    if loop is not None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            start_task(loop, session_pk)
        else:
            loop.call_soon_threadsafe(start_task, loop, session_pk)
        return
    _offload(session_pk)


def advance_on_commit(session_pks: list[int]) -> None:
    """Run these sessions' queues once the current transaction commits."""
    if not session_pks:
        return

    def advance() -> None:
        for pk in dict.fromkeys(session_pks):
            schedule_advance(pk)

    transaction.on_commit(advance)

