"""The per-session message queue: a turn queued per message (FIFO, serial, bounded)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps_registry.manifest.compiled import CompiledApp
from apps_registry.selectors import app_compiled
from conversations.events import event_append
from conversations.models import Turn
from conversations.sessions import check_runnable, not_found, session_resolve
from conversations.turns.state import ACTIVE
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
    if kind == Turn.Kind.MESSAGE:
        message = _validate_message(message, field_name)
        compiled = compiled or app_compiled(app_id=app_id)
        check_runnable(app_id, compiled)
    session = session_resolve(
        app_id=app_id, session_id=session_id, principal=principal, create=True, compiled=compiled
    )
    with transaction.atomic():
        # One statement locks the row (PostgreSQL; SQLite holds the write lock already), marks the
        # session active and reads the seq this turn's events will follow.
        last_seq = fastsql.session_touch(session.pk, timezone.now())
        if last_seq is None:
            raise not_found(app_id, session_id)
        session.last_seq = last_seq
        waiting, ahead = fastsql.turn_queue_counts(session.pk, queued=Turn.Status.QUEUED, active=ACTIVE)
        if waiting >= settings.DIGITORN_QUEUE_DEPTH:
            raise QueueFullError(
                f"Session '{session_id}' already has {waiting} messages waiting (the limit is "
                f"{settings.DIGITORN_QUEUE_DEPTH}); wait for the running turn to finish or cancel it."
            )
        turn = fastsql.insert(Turn(
            session=session, correlation_id=uuid.uuid4().hex, kind=kind, content=message, status=Turn.Status.QUEUED
        ))
        after_seq = session.last_seq
        enqueued = Enqueued(
            session_pk=session.pk,
            session_id=session.session_id,
            correlation_id=turn.correlation_id,
            position=ahead,
            queue_depth=waiting + 1,
            after_seq=after_seq,
        )
        if ahead:
            event_append(
                session=session, type="message_queued", data=enqueued.payload(), correlation_id=turn.correlation_id
            )
    return enqueued
