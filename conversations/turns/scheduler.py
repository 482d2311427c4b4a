"""Running a session's queue: one turn after the other, in this process, serial and FIFO.

``advance_session`` claims the head of a session's queue with a lease and plays it
(``runner.TurnRunner``); after a turn it takes the next queued one. Turns run as asyncio tasks in
the ASGI worker that accepted the message (``wakeup.schedule_advance``); code without an event loop
(admin, Celery) goes through ``conversations.tasks.advance_session_task``.
"""

from __future__ import annotations

import asyncio
import logging

from conversations.events import db, error_data
from conversations.models import Turn
from conversations.turns.runner import WORKER_ID, TurnRunner, claim_and_prepare
from conversations.turns.state import turn_emit, turn_finish_and_peek, turns_recoverable
from conversations.turns.wakeup import (
    _tasks,
    forgotten_when_done,
    preclaim_take,
    schedule_advance,
    start_task,
    track,
)

log = logging.getLogger("digitorn.engine")

__all__ = ["_tasks", "advance_session", "ensure_recovery", "schedule_advance", "turns_recover"]

# Sessions this process is advancing, and those poked again while it was (re-check on exit).
_running: set[int] = set()
_again: set[int] = set()
# Per session, the message up to which a turn run in this process compacted the context. The next
# turn keeps that recap instead of announcing the same compaction again (another process re-announces
# it once). Bounded: the oldest sessions are forgotten first.
_compacted: dict[int, int] = {}
_COMPACTED_MAX = 10_000
_recovery_loops: set[int] = set()


def ensure_recovery() -> None:
    """Once per event loop (i.e. per started worker): resume work a previous run left behind."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if id(loop) in _recovery_loops:
        return
    _recovery_loops.add(id(loop))

    async def recover() -> None:
        try:
            for pk in await db(turns_recoverable)():
                start_task(loop, pk)
        except Exception:  # noqa: BLE001 - the periodic Celery sweep will try again
            log.warning("turn recovery at start failed", exc_info=True)

    track(loop.create_task(forgotten_when_done(recover)))


def turns_recover() -> list[int]:
    """Resume every session with work no live worker holds (daemon start, periodic sweep)."""
    pks = turns_recoverable()
    for pk in pks:
        schedule_advance(pk)
    return pks


async def advance_session(*, session_pk: int) -> None:
    """Play the session's queued turns one after the other until none is claimable here."""
    if session_pk in _running:
        _again.add(session_pk)
        return
    _running.add(session_pk)
    try:
        while True:
            _again.discard(session_pk)
            held = preclaim_take(session_pk)
            if held is not None:
                # Claimed (and prepared) by the enqueue that started this runner: no claim of its own.
                claim, prepared = held.claim, held.prepared
            else:
                # The claim and the turn's preparation (app, agent, transcript, tools) in one thread hop.
                claim, prepared = await db(claim_and_prepare)(session_pk=session_pk, worker=WORKER_ID)
            if claim is None:
                if session_pk in _again:
                    continue
                return
            runner = None
            try:
                runner = TurnRunner(claim, compacted_upto=_compacted.get(session_pk, 0), prepared=prepared)
                await runner.run()
                if runner.compacted_upto:
                    _compacted.pop(session_pk, None)
                    _compacted[session_pk] = runner.compacted_upto
                    if len(_compacted) > _COMPACTED_MAX:
                        del _compacted[next(iter(_compacted))]
                # Nothing queued behind the finished turn: skip the claim that would find nothing.
                # A message enqueued here meanwhile is in `_again`; one enqueued by another worker
                # found this session's lease held and counts on `more`, read in the finishing commit.
                if runner.finished and not runner.more and session_pk not in _again:
                    return
            except Turn.DoesNotExist:
                return  # the session was deleted under us
            except Exception as exc:  # noqa: BLE001 - a bug must end the turn, not wedge the queue
                log.exception("turn %s failed", claim.correlation_id)
                try:
                    # Writes the runner had decided (its reply asking for tools) go first, as they did.
                    await (runner.deferred_db(turn_emit) if runner is not None else db(turn_emit))(
                        turn_pk=claim.turn_pk,
                        type="error",
                        data=error_data(f"internal error: {exc}", kind="internal", correlation_id=claim.correlation_id),
                    )
                    await db(turn_finish_and_peek)(
                        turn_pk=claim.turn_pk, content=f"The turn failed with an internal error: {exc}", failed=True,
                        error=f"internal error: {exc}",
                    )
                except Exception:  # noqa: BLE001
                    log.exception("could not record the failure of turn %s", claim.correlation_id)
                    return
    finally:
        _running.discard(session_pk)
