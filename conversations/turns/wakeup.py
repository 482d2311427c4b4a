"""Waking a session's queue: on this worker's event loop, else through Celery.

The lowest piece of the turn machine: turn state (``state``), delegation and the session services
schedule work through here without importing the loop that does it. ``ConversationsConfig.ready()``
registers that loop (``connect``): ``advance`` (the coroutine that runs a session's queue,
``scheduler.advance_session``) and ``offload`` (the same for code without an event loop: the Celery
task ``advance_session_task``'s ``delay``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
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



# --- turns claimed as they were enqueued ------------------------------------------------------
#
# A message accepted by this worker into a session with nothing ahead of it is claimed in the
# enqueue's transaction (``state.turn_claim_new``), for the runner this worker starts right after
# (``scheduler.advance_session`` takes the claim here instead of claiming in a transaction of its
# own). Until then ``state.turn_claim`` refuses that turn in this process (the lease is this
# worker's, which a claim would otherwise re-take); other workers wait for the lease as for any
# running turn. An entry is only good for half the lease: past that, the turn is claimed as any
# other (a request cancelled before it started its runner leaves its turn to recovery).


class Preclaim:
    __slots__ = ("claim", "prepared", "turn_pk", "until", "ready")

    def __init__(self, claim: Any):
        self.claim = claim
        self.turn_pk = claim.turn_pk
        self.prepared: Any = None  # what runner._prepare returned (or raised), when it ran
        self.until = time.monotonic() + settings.DIGITORN_LEASE_SECONDS / 2
        self.ready = False  # committed: a runner may take it

    def fresh(self) -> bool:
        return time.monotonic() < self.until


_preclaimed: dict[int, Preclaim] = {}
_PRECLAIMED_MAX = 10_000


def preclaim_hold(session_pk: int, claim: Any) -> Preclaim:
    """Hold ``claim`` (not ready yet: its transaction has not committed) for the session's runner."""
    if len(_preclaimed) >= _PRECLAIMED_MAX:
        for pk, held in list(_preclaimed.items()):
            if not held.fresh():
                _preclaimed.pop(pk, None)
    held = _preclaimed[session_pk] = Preclaim(claim)
    return held


def preclaim_drop(session_pk: int, held: Preclaim) -> None:
    """The claim's transaction rolled back: forget it."""
    if _preclaimed.get(session_pk) is held:
        _preclaimed.pop(session_pk, None)


def preclaim_holds(session_pk: int, turn_pk: int) -> bool:
    """Whether this process holds that turn's claim for a runner it is starting."""
    held = _preclaimed.get(session_pk)
    return held is not None and held.turn_pk == turn_pk and held.fresh()


def preclaim_take(session_pk: int) -> Preclaim | None:
    """The session's committed, fresh claim for the runner about to start (taken once), or None."""
    held = _preclaimed.get(session_pk)
    if held is None or not held.ready:
        return None
    _preclaimed.pop(session_pk, None)
    return held if held.fresh() else None
