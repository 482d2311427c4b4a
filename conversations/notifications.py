"""Notifications: a finished background task of a session, recorded and drained into a turn."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps_registry.selectors import app_compiled
from conversations.events import event_append
from conversations.models import Notification, Session, Turn
from conversations.queue import Enqueued, message_enqueue
from conversations.sessions import session_lookup, session_resolve
from conversations.turns.state import lock_session
from digitorn_site.errors import ValidationError
from digitorn_site.principals import ADMIN_PRINCIPAL
from tooling.models import BackgroundTask

log = logging.getLogger("digitorn.conversations")

# The original's notification carries a result preview of at most this many characters.
NOTIFICATION_PREVIEW_CHARS = 2000


def _task_summary(task_id: str, status: str, session_id: str) -> dict:
    """The `notification` event's payload, the original's: ``{task_id, tool_name, status,
    elapsed_seconds, session_id, result_preview | error, hint}``."""
    task = BackgroundTask.objects.filter(task_id=task_id).first()
    summary: dict[str, Any] = {
        "task_id": task_id,
        "tool_name": task.tool if task is not None else "",
        "status": (task.status if task is not None else "") or status,
        "elapsed_seconds": None,
        "session_id": session_id,
    }
    if task is not None and task.started_at is not None:
        end = task.finished_at or timezone.now()
        summary["elapsed_seconds"] = round(max((end - task.started_at).total_seconds(), 0.0), 3)
    if summary["status"] == "completed":
        text = task.result if task is not None and isinstance(task.result, str) else json.dumps(
            task.result if task is not None else None, default=str)
        summary["result_preview"] = text[:NOTIFICATION_PREVIEW_CHARS]
        summary["hint"] = (
            f"Task {task_id} finished. The full result: background_status with task_id={task_id}"
            f" (GET /background-tasks/{task_id})."
        )
    else:
        summary["error"] = (task.error if task is not None else "") or summary["status"]
        summary["hint"] = f"Task {task_id} did not complete ({summary['status']}); launch it again if needed."
    return summary


def _task_may_notify(task_id: str, session: Session) -> bool:
    """A task reaches only its launcher's own sessions (tooling cannot see sessions at launch)."""
    principal = BackgroundTask.objects.filter(task_id=task_id).values_list("principal", flat=True).first()
    return principal is None or principal in (session.principal, ADMIN_PRINCIPAL)


def notification_record(*, task_id: str, app_id: str, session_id: str | None, status: str) -> Notification | None:
    """A finished background task of a session: a Notification row and a `notification` event."""
    if not session_id:
        return None
    owner = BackgroundTask.objects.filter(task_id=task_id).values_list("principal", flat=True).first()
    with transaction.atomic():
        # The launcher's session of that id (ids are per owner); an admin's task falls back to anyone's.
        session = session_lookup(app_id, session_id, owner) if owner else None
        if session is None and owner in (None, ADMIN_PRINCIPAL):
            session = Session.objects.filter(app_id=app_id, session_id=session_id).order_by("-last_active").first()
        if session is None:
            return None
        if Notification.objects.filter(session=session, task_id=task_id).exists():
            return None  # a redelivered signal must not notify twice
        if not _task_may_notify(task_id, session):
            log.warning("task %s names session %s of another principal; not notified", task_id, session_id)
            return None
        summary = _task_summary(task_id, status, session_id)
        notification = Notification.objects.create(
            session=session, app_id=app_id, task_id=task_id, status=summary["status"], summary=summary
        )
        event_append(session=session, type="notification", data=summary)
    return notification


def notifications_drain(*, app_id: str, session_id: str, principal: str) -> tuple[Enqueued | None, list[dict]]:
    """Take the session's pending notifications and queue a notification turn over them."""
    if not isinstance(session_id, str) or not session_id:
        raise ValidationError("session_id: required (the session whose notifications to drain).")
    compiled = app_compiled(app_id=app_id)  # once, for both session lookups below
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal, compiled=compiled)
    with transaction.atomic():
        lock_session(session.pk)
        pending = list(
            Notification.objects.select_for_update(no_key=True).filter(session=session, delivered_at__isnull=True).order_by("id")
        )
        if not pending:
            return None, []
        Notification.objects.filter(pk__in=[n.pk for n in pending]).update(delivered_at=timezone.now())
        summaries = [n.summary for n in pending]
        enqueued = message_enqueue(
            app_id=app_id,
            session_id=session_id,
            principal=principal,
            message=json.dumps(summaries, default=str),
            kind=Turn.Kind.NOTIFICATION,
            compiled=compiled,
        )
    return enqueued, summaries
