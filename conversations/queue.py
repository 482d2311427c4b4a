"""The per-session message queue: a turn queued per message (FIFO, serial, bounded)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps_registry.manifest.compiled import CompiledApp
from apps_registry.selectors import app_compiled, app_with_limit
from conversations.events import event_append, main_loop
from conversations.models import Session, Turn
from conversations.ratelimit import RateLimitState, rate_limit_take, rate_limited
from conversations.sessions import check_runnable, idle_seconds_for, not_found, session_resolve
from conversations.turns.state import ACTIVE, turn_claim_new
from conversations.turns.wakeup import Preclaim, preclaim_drop, preclaim_hold
from digitorn_site import fastsql
from digitorn_site.errors import QueueFullError, ValidationError

MAX_MESSAGE_BYTES = 1024 * 1024  # the original's per-message cap (1 MiB of UTF-8)


@dataclass(frozen=True)
class Enqueued:
    session_pk: int
    session_id: str
    correlation_id: str
    position: int  # turns ahead of this one (0: it runs now)
    queue_depth: int  # turns waiting to start, this one included
    after_seq: int  # last event seq before this turn's first event

    def payload(self) -> dict:
        return {"correlation_id": self.correlation_id, "position": self.position, "queue_depth": self.queue_depth}


def _validate_message(message: Any, field_name: str = "message") -> str:
    if not isinstance(message, str) or not message.strip():
        raise ValidationError(f"{field_name}: a non-empty string is required.")
    size = len(message.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ValidationError(f"{field_name}: at most {MAX_MESSAGE_BYTES} bytes of UTF-8 (got {size}).")
    return message


def message_enqueue(
    *,
    app_id: str,
    session_id: str,
    principal: str,
    message: str,
    kind: str = Turn.Kind.MESSAGE,
    field_name: str = "message",
    compiled: CompiledApp | None = None,
) -> Enqueued:
    """Queue a turn in the session (FIFO, serial); 429 QUEUE_FULL beyond DIGITORN_QUEUE_DEPTH waiting.
    ``compiled``: the app, when the caller has it already (else looked up here, once, and passed down)."""
    with transaction.atomic():
        return _enqueue(
            app_id=app_id, session_id=session_id, principal=principal, message=message, kind=kind,
            field_name=field_name, compiled=compiled,
        )


def message_accept(
    *,
    app_id: str,
    session_id: str,
    principal: str,
    message: str,
    field_name: str = "message",
    check: Callable[[CompiledApp], None] | None = None,
) -> tuple[Enqueued, RateLimitState]:
    """What a message-taking POST does once its body is valid, in the order its errors come:
    NOT_FOUND app, ``check(compiled)``'s own (the caller's, e.g. /run's mode), 429 rate limit,
    400 message, QUEUE_FULL. One read of the app's head, and the rate limit's check-and-record in
    the enqueue's transaction (one write transaction, not two)."""
    compiled, limit = app_with_limit(app_id=app_id)
    if check is not None:
        check(compiled)
    # In an ASGI worker, the caller starts the session's runner here right after (``schedule_advance``):
    # a turn with nothing ahead of it is claimed in this transaction (see wakeup.preclaim_hold).
    claim_worker = _runner_worker() if main_loop() is not None else None
    held: list[Preclaim] = []
    try:
        with transaction.atomic():
            state = rate_limit_take(app_id=app_id, limit=limit)
            if state.allowed:
                # An error here rolls the hit back with the rest: a refused request is not counted.
                enqueued = _enqueue(
                    app_id=app_id, session_id=session_id, principal=principal, message=message,
                    kind=Turn.Kind.MESSAGE, field_name=field_name, compiled=compiled, claim_worker=claim_worker,
                    held=held,
                )
    except BaseException:
        for preclaim in held:
            preclaim_drop(preclaim.claim.session_pk, preclaim)
        raise
    if not state.allowed:
        raise rate_limited(state)  # after the commit, which keeps the window's prune
    for preclaim in held:
        # The runner's preparation (app, agent, transcript, tools) in this thread hop too.
        from conversations.turns.runner import prepare_claimed

        preclaim.prepared = prepare_claimed(preclaim.claim)
        preclaim.ready = True
    return enqueued, state


def _runner_worker() -> str:
    from conversations.turns.runner import WORKER_ID  # the runner's module imports this one's callers

    return WORKER_ID


def _enqueue(
    *, app_id: str, session_id: str, principal: str, message: str, kind: str, field_name: str,
    compiled: CompiledApp | None, claim_worker: str | None = None, held: list[Preclaim] | None = None,
) -> Enqueued:
    """message_enqueue's work, inside the caller's transaction (on SQLite, under its write lock).

    ``claim_worker``: with nothing ahead of the new turn, claim it for that worker's runner in this
    transaction (``state.turn_claim_new``) and append the claim, held for the runner, to ``held``."""
    if kind == Turn.Kind.MESSAGE:
        message = _validate_message(message, field_name)
        compiled = compiled or app_compiled(app_id=app_id)
        check_runnable(app_id, compiled)
    else:
        compiled = compiled or app_compiled(app_id=app_id)  # for the session's idle timeout
    now = timezone.now()
    # The common case in one statement: the caller's own live session, marked active, its row locked
    # (PostgreSQL) and its last seq read. Anything else (no session yet, idle for too long, the
    # admin reaching another principal's) takes session_resolve's way, then the same touch by pk.
    idle = idle_seconds_for(app_id, compiled)
    touched = fastsql.session_touch_named(app_id, principal, session_id, now, now - timedelta(seconds=idle))
    if touched is None:
        session = session_resolve(
            app_id=app_id, session_id=session_id, principal=principal, create=True, compiled=compiled
        )
        last_seq = fastsql.session_touch(session.pk, now)
        if last_seq is None:
            raise not_found(app_id, session_id)
        session_pk = session.pk
    else:
        session_pk, last_seq = touched
        session = None
    waiting, ahead = fastsql.turn_queue_counts(session_pk, queued=Turn.Status.QUEUED, active=ACTIVE)
    if waiting >= settings.DIGITORN_QUEUE_DEPTH:
        raise QueueFullError(
            f"Session '{session_id}' already has {waiting} messages waiting (the limit is "
            f"{settings.DIGITORN_QUEUE_DEPTH}); wait for the running turn to finish or cancel it."
        )
    turn = Turn(
        session_id=session_pk, correlation_id=uuid.uuid4().hex, kind=kind, content=message, status=Turn.Status.QUEUED
    )
    if claim_worker and not ahead and kind == Turn.Kind.MESSAGE:
        if session is None:  # found by its key: the caller's own (only its pk was read)
            session = Session(pk=session_pk, app_id=app_id, session_id=session_id, principal=principal)
        claim = turn_claim_new(session=session, turn=turn, worker=claim_worker, now=now)
        held.append(preclaim_hold(session_pk, claim))
    else:
        fastsql.insert(turn)
    enqueued = Enqueued(
        session_pk=session_pk,
        session_id=session_id,
        correlation_id=turn.correlation_id,
        position=ahead,
        queue_depth=waiting + 1,
        after_seq=last_seq,
    )
    if ahead:
        session = fastsql.session_get(session_pk)
        event_append(
            session=session, type="message_queued", data=enqueued.payload(), correlation_id=turn.correlation_id
        )
    return enqueued
