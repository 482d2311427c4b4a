"""Background tasks: one tool call run by a Celery worker, outside any conversation turn.

The ``BackgroundTask`` row is the truth and the broker message only a wake-up, so every state change
is a conditional UPDATE on the row:

- launch: the one tool gate (``tooling.services.tool_gate``) runs up front (blocked → 403, unknown
  tool → 404, bad params → 400); an ``approve`` tool opens its ApprovalRequest (origin "task") and
  the row waits in ``waiting_approval``; anything else is ``queued`` and a message is published on
  commit.
- a worker claims the row with ``UPDATE … WHERE status='queued'`` (worker id + lease), so a
  redelivered or duplicated message never runs a tool twice (``tooling.background.runner``).
- on finish (completed / failed / cancelled) ``signals.background_task_finished`` is sent on commit.

Deleting a task that already finished returns it unchanged (200): a cancel racing a completion is
not an error, and the status tells the client which one won.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from approvals.services import approval_decide
from digitorn_site import signals
from digitorn_site.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from tooling.background.selectors import ACTIVE_STATUSES, FINISHED_STATUSES, Status, background_task_get
from tooling.models import BackgroundTask
from tooling.services import gate_approval_request, seal_secrets, tool_gate

if TYPE_CHECKING:
    from apps_registry.manifest.compiled import CompiledApp

log = logging.getLogger("digitorn.tasks")

# Published by name: the Celery adapter (tooling.tasks) imports the runner, not the reverse.
RUN_BACKGROUND_TASK = "tooling.tasks.run_background_task"


def lease_seconds() -> float:
    """How long a running task's claim lasts without renewal (renewed every third of it)."""
    return settings.DIGITORN_TASK_LEASE_SECONDS


def requeue_seconds() -> float:
    """How long a queued task may wait unclaimed before its wake-up message is published again."""
    return settings.DIGITORN_TASK_REQUEUE_SECONDS


def wait_max_seconds() -> float:
    return settings.DIGITORN_TASK_WAIT_MAX_SECONDS


# --------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------


def _new_task_id() -> str:
    return f"task-{uuid.uuid4().hex[:20]}"


def _enqueue(task_id: str) -> None:
    """Publish the wake-up message; a failed publish is repaired by the sweep (requeue deadline)."""
    try:
        current_app.send_task(RUN_BACKGROUND_TASK, args=[task_id])
    except Exception:  # noqa: BLE001 - the row stays queued and the sweep publishes it again
        log.exception("could not publish background task %s; the sweep will retry", task_id)


def _send_finished(task: BackgroundTask, status: str) -> None:
    task_id, app_id, session_id = task.task_id, task.app_id, task.session_id

    def send() -> None:
        signals.background_task_finished.send(
            sender=BackgroundTask, task_id=task_id, app_id=app_id, session_id=session_id, status=status
        )

    transaction.on_commit(send)


@transaction.atomic
def background_task_launch(
    *,
    app: CompiledApp,
    tool: str,
    params: dict,
    principal: str,
    session_id: str | None,
    agent_id: str | None = None,
) -> BackgroundTask:
    """Gate the call now (so a blocked tool is refused at launch), then queue it or wait for approval.

    The gate is ``tool_invoke``'s, so a task is refused at launch for exactly what would refuse the
    call later; the row keeps the parameters as given (the worker's ``tool_invoke`` validates them
    again)."""
    if not isinstance(tool, str) or not tool.strip():
        raise ValidationError("tool: give a tool name in module.action form, e.g. 'filesystem.find'.")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationError(f"params: must be an object of tool parameters, got {type(params).__name__}.")
    gate = tool_gate(app=app, tool_name=tool.strip(), params=params, agent_id=agent_id)
    if gate.policy == "block":
        raise ForbiddenError(
            f"tool: '{gate.tool}' is blocked by the policy of app '{app.app_id}' ({gate.reason}); "
            "a background task cannot run it."
        )
    task_id = _new_task_id()
    now = timezone.now()
    task = BackgroundTask(
        task_id=task_id,
        app_id=app.app_id,
        principal=principal,
        session_id=session_id or None,
        tool=gate.tool,
        # Sealed: no secret value at rest; the worker unseals it in memory (issue #10, item 2).
        params=seal_secrets(params, app.secret_values),
        status=Status.QUEUED,
        lease_expires_at=now + timedelta(seconds=requeue_seconds()),
    )
    if gate.policy == "approve":
        request = gate_approval_request(
            app=app,
            gate=gate,
            params=params,
            principal=principal,
            session_id=session_id or None,
            agent_id=agent_id,
            origin="task",
            origin_ref=task_id,
        )
        task.status = Status.WAITING_APPROVAL
        task.approval_request_id = request.request_id
        task.lease_expires_at = None
    task.save()
    if task.status == Status.QUEUED:
        transaction.on_commit(lambda: _enqueue(task_id))
    return task


# --------------------------------------------------------------------------------------------
# Cancel and wait
# --------------------------------------------------------------------------------------------


def _deny_pending_approval(task: BackgroundTask, message: str) -> None:
    """A cancelled waiting task must not leave its approval request on the pending list."""
    if not task.approval_request_id:
        return
    try:
        approval_decide(
            app_id=task.app_id,
            request_id=task.approval_request_id,
            approved=False,
            message=message,
            principal=task.principal,
        )
    except (ConflictError, NotFoundError):
        pass  # already decided, expired or gone: nothing pending to withdraw


@transaction.atomic
def _cancel_row(task: BackgroundTask, *, reason: str) -> BackgroundTask:
    now = timezone.now()
    waiting = BackgroundTask.objects.filter(pk=task.pk, status__in=(Status.QUEUED, Status.WAITING_APPROVAL))
    if waiting.update(
        status=Status.CANCELLED, cancel_requested=True, error=reason, finished_at=now, lease_expires_at=None
    ):
        task.refresh_from_db()
        _send_finished(task, Status.CANCELLED)
        if task.approval_request_id:
            _deny_pending_approval(task, reason)
        return task
    # Running: the worker's watcher sees the flag within CANCEL_POLL_SECONDS, stops the tool and
    # records "cancelled"; if that worker is dead the sweep does it when the lease runs out.
    BackgroundTask.objects.filter(pk=task.pk, status=Status.RUNNING).update(cancel_requested=True)
    task.refresh_from_db()
    return task


def background_task_cancel(*, app_id: str, task_id: str, principal: str) -> BackgroundTask:
    """Cooperative cancel; a finished task is returned unchanged (see the module docstring)."""
    task = background_task_get(app_id=app_id, task_id=task_id, principal=principal)
    if task.status in FINISHED_STATUSES:
        return task
    return _cancel_row(task, reason=f"cancelled by {principal}")


async def background_task_wait(
    *,
    app_id: str,
    task_id: str,
    principal: str,
    timeout: float,
    until_not: tuple[str, ...] = ACTIVE_STATUSES,
) -> BackgroundTask:
    """Poll the row until it leaves ``until_not`` or ``timeout`` passes; return it either way."""
    get = sync_to_async(background_task_get)
    deadline = time.monotonic() + max(0.0, min(timeout, wait_max_seconds()))
    delay = 0.05
    while True:
        task = await get(app_id=app_id, task_id=task_id, principal=principal)
        remaining = deadline - time.monotonic()
        if task.status not in until_not or remaining <= 0:
            return task
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.25)


async def background_task_cancel_and_settle(
    *, app_id: str, task_id: str, principal: str, settle_seconds: float = 5.0
) -> BackgroundTask:
    """Cancel, then give a running task a moment to stop so the answer usually says 'cancelled'."""
    task = await sync_to_async(background_task_cancel)(app_id=app_id, task_id=task_id, principal=principal)
    if task.status != Status.RUNNING:
        return task
    return await background_task_wait(
        app_id=app_id,
        task_id=task_id,
        principal=principal,
        timeout=settle_seconds,
        until_not=(Status.RUNNING,),
    )


def background_tasks_cancel_for_app(*, app_id: str, reason: str = "") -> int:
    """Undeploy: cancel every queued/waiting task of the app and ask running ones to stop."""
    reason = reason or f"cancelled: app '{app_id}' was undeployed"
    count = 0
    for task in BackgroundTask.objects.filter(app_id=app_id, status__in=ACTIVE_STATUSES):
        _cancel_row(task, reason=reason)
        count += 1
    return count


# --------------------------------------------------------------------------------------------
# Approval decisions
# --------------------------------------------------------------------------------------------


@transaction.atomic
def background_task_approval_decided(
    *, request_id: str, approved: bool, message: str = ""
) -> BackgroundTask | None:
    """Approved → queue and publish; denied or expired → failed "denied: <message>"."""
    task = BackgroundTask.objects.filter(
        approval_request_id=request_id, status=Status.WAITING_APPROVAL
    ).first()
    if task is None:
        return None
    rows = BackgroundTask.objects.filter(pk=task.pk, status=Status.WAITING_APPROVAL)
    now = timezone.now()
    if approved:
        if rows.update(status=Status.QUEUED, lease_expires_at=now + timedelta(seconds=requeue_seconds())):
            task_id = task.task_id
            transaction.on_commit(lambda: _enqueue(task_id))
    else:
        error = f"denied: {message}" if message else "denied"
        if rows.update(status=Status.FAILED, error=error, finished_at=now):
            task.refresh_from_db()
            _send_finished(task, Status.FAILED)
    task.refresh_from_db()
    return task


# --------------------------------------------------------------------------------------------
# The worker's writes: claim, finish, wait again, give up on a lost worker, requeue
# --------------------------------------------------------------------------------------------


def background_task_claim(*, task_id: str, worker: str) -> BackgroundTask | None:
    """The atomic claim: only one worker moves a queued row to running, whatever the broker does."""
    now = timezone.now()
    claimed = BackgroundTask.objects.filter(task_id=task_id, status=Status.QUEUED).update(
        status=Status.RUNNING,
        worker=worker,
        started_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds()),
        attempts=F("attempts") + 1,
    )
    if not claimed:
        return None
    return BackgroundTask.objects.get(task_id=task_id)


@transaction.atomic
def background_task_finish(
    *, task_id: str, worker: str, status: str, result: Any = None, error: str = ""
) -> bool:
    """Record the end of a claimed run (only the worker holding the claim can)."""
    rows = BackgroundTask.objects.filter(task_id=task_id, status=Status.RUNNING, worker=worker)
    if not rows.update(
        status=status, result=result, error=error or "", finished_at=timezone.now(), lease_expires_at=None
    ):
        return False
    _send_finished(BackgroundTask.objects.get(task_id=task_id), status)
    return True


def background_task_renew(*, task_id: str, worker: str) -> None:
    """The watcher's lease renewal while the tool runs."""
    BackgroundTask.objects.filter(task_id=task_id, status=Status.RUNNING, worker=worker).update(
        lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds())
    )


def background_task_wait_again(*, task_id: str, worker: str, request_id: str) -> None:
    """A running task whose call now needs approval (a stricter redeploy) waits for that request."""
    BackgroundTask.objects.filter(task_id=task_id, status=Status.RUNNING, worker=worker).update(
        status=Status.WAITING_APPROVAL,
        approval_request_id=request_id,
        worker="",
        lease_expires_at=None,
    )


@transaction.atomic
def background_task_fail_lost(task: BackgroundTask, now, *, lost_error: str) -> bool:
    """A running task whose lease expired (its worker died): failed, or cancelled if asked to be."""
    status = Status.CANCELLED if task.cancel_requested else Status.FAILED
    error = "cancelled; its worker stopped before confirming" if task.cancel_requested else lost_error
    rows = BackgroundTask.objects.filter(pk=task.pk, status=Status.RUNNING, lease_expires_at__lt=now)
    if not rows.update(status=status, error=error, finished_at=now, lease_expires_at=None):
        return False
    task.refresh_from_db()
    _send_finished(task, status)
    return True


def background_task_requeue(*, task_id: str, now) -> bool:
    """A queued task whose message was lost: push its deadline and publish it again (it never ran)."""
    bumped = BackgroundTask.objects.filter(task_id=task_id, status=Status.QUEUED).update(
        lease_expires_at=now + timedelta(seconds=requeue_seconds())
    )
    if bumped:
        _enqueue(task_id)
    return bool(bumped)
