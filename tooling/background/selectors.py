"""Reads of background tasks: the payload people and agents see, one task, a listing, its counts.

Ownership is decided by ``digitorn_site.principals``: the admin (an admin-scoped key acts as it)
sees every task, any other principal its own; another principal's task is 404, not 403.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from digitorn_site.errors import NotFoundError, ValidationError
from digitorn_site.principals import is_admin
from tooling.models import BackgroundTask
from tooling.services import SEAL_MARKER

Status = BackgroundTask.Status
ACTIVE_STATUSES = (Status.QUEUED, Status.WAITING_APPROVAL, Status.RUNNING)
FINISHED_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


def _epoch(value) -> float | None:
    return value.timestamp() if value is not None else None


_HINTS = {
    Status.QUEUED: "Queued; check again with GET …/background-tasks/{id} or block with POST …/{id}/wait.",
    Status.WAITING_APPROVAL: "Waiting for a human to approve the call (POST …/approve); it runs once approved.",
    Status.RUNNING: "Still running; check again with GET …/background-tasks/{id} or block with POST …/{id}/wait.",
    Status.COMPLETED: "Finished; the tool's output is in `result`.",
    Status.FAILED: "The tool failed; `error` says why.",
    Status.CANCELLED: "Cancelled before it finished.",
}


def _shown(params: Any) -> Any:
    """Stored parameters as people see them: a sealed secret reads as the mask."""
    text = json.dumps(params)
    if "{{sealed-secret:" not in text:
        return params
    return json.loads(SEAL_MARKER.sub("***", text))


def background_task_payload(task: BackgroundTask) -> dict[str, Any]:
    """The original's task summary (DESIGN §7): ``tool_name``, epoch-second times, ``hint``; plus this
    project's ``approval_request_id`` (so a client can approve a waiting task) and ``cancel_requested``."""
    elapsed = None
    if task.started_at is not None:
        end = task.finished_at or timezone.now()
        elapsed = round(max((end - task.started_at).total_seconds(), 0.0), 3)
    return {
        "task_id": task.task_id,
        "tool_name": task.tool,
        "params": _shown(task.params),
        "session_id": task.session_id,
        "status": task.status,
        "result": task.result,
        "error": task.error or None,
        "hint": _HINTS.get(task.status, ""),
        "created_at": _epoch(task.created_at),
        "started_at": _epoch(task.started_at),
        "finished_at": _epoch(task.finished_at),
        "elapsed_seconds": elapsed,
        "approval_request_id": task.approval_request_id,
        "cancel_requested": task.cancel_requested,
    }


def _visible(rows, principal: str):
    return rows if is_admin(principal) else rows.filter(principal=principal)


def background_task_get(*, app_id: str, task_id: str, principal: str) -> BackgroundTask:
    """The caller's task (the admin sees every task); another principal's task is 404, not 403."""
    task = _visible(BackgroundTask.objects.filter(app_id=app_id, task_id=task_id), principal).first()
    if task is None:
        raise NotFoundError(f"No background task '{task_id}' in app '{app_id}'.")
    return task


def background_task_list(
    *,
    app_id: str,
    principal: str,
    status: str | None = None,
    session_id: str | None = None,
    limit: int = 100,
) -> tuple[list[BackgroundTask], int]:
    """Newest first; ``total`` counts every match, ``limit`` caps the rows returned."""
    rows = _visible(BackgroundTask.objects.filter(app_id=app_id), principal)
    if status:
        statuses = [s.strip() for s in status.split(",") if s.strip()]
        unknown = [s for s in statuses if s not in Status.values]
        if unknown:
            raise ValidationError(
                f"status: '{unknown[0]}' is not a task status; use one of {', '.join(Status.values)} "
                "(several may be given comma-separated)."
            )
        rows = rows.filter(status__in=statuses)
    if session_id:
        rows = rows.filter(session_id=session_id)
    total = rows.count()
    return list(rows.order_by("-created_at", "-id")[:limit]), total


def background_task_counts(*, app_id: str, principal: str) -> dict[str, int]:
    """The list's ``running`` / ``completed`` / ``failed`` counts over the caller's tasks of the app
    (queued and waiting-approval tasks count as running: they have not finished)."""
    rows = _visible(BackgroundTask.objects.filter(app_id=app_id), principal)
    return rows.aggregate(
        running=Count("id", filter=Q(status__in=[Status.QUEUED, Status.WAITING_APPROVAL, Status.RUNNING])),
        completed=Count("id", filter=Q(status=Status.COMPLETED)),
        failed=Count("id", filter=Q(status=Status.FAILED)),
    )
