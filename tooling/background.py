"""Background tasks: one tool call run by a Celery worker, outside any conversation turn.

The ``BackgroundTask`` row is the truth and the broker message only a wake-up, so every state change
is a conditional UPDATE on the row:

- launch: the policy gate runs up front (blocked → 403, unknown tool → 404, bad params → 400); an
  ``approve`` tool creates its ApprovalRequest (origin "task") and the row waits in
  ``waiting_approval``; anything else is ``queued`` and a message is published on commit.
- a worker claims the row with ``UPDATE … WHERE status='queued'`` (worker id + lease), so a
  redelivered or duplicated message never runs a tool twice. While the tool runs a watcher thread
  renews the lease and reads ``cancel_requested`` every 0.5 s; ``tool_invoke`` polls it through
  ``cancel_check`` and a running shell command is terminated.
- a periodic sweep marks running tasks whose lease expired (their worker died) as failed without
  re-running them, since the tool may already have had side effects; queued tasks whose message was
  lost (never claimed) are published again, which is safe because they never started.
- on finish (completed / failed / cancelled) ``signals.background_task_finished`` is sent on commit.

Deleting a task that already finished returns it unchanged (200): a cancel racing a completion is
not an error, and the status tells the client which one won.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps_registry.manifest.compiled import CompiledApp
from digitorn_site import signals
from digitorn_site.errors import (
    ConflictError,
    DigitornError,
    ForbiddenError,
    NotFoundError,
    ValidationError,
)
from tooling import registry
from tooling.models import BackgroundTask
from tooling.services import SEAL_MARKER, mask_secrets, seal_secrets, unseal_secrets

log = logging.getLogger("digitorn.tasks")

Status = BackgroundTask.Status
ACTIVE_STATUSES = (Status.QUEUED, Status.WAITING_APPROVAL, Status.RUNNING)
FINISHED_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
ADMIN_PRINCIPAL = "admin"

WORKER_LOST_ERROR = (
    "worker lost: the worker running this task stopped before it finished. The task was not run "
    "again because the tool may already have had side effects; launch it again if that is safe."
)


def lease_seconds() -> float:
    """How long a running task's claim lasts without renewal (renewed every third of it)."""
    return settings.DIGITORN_TASK_LEASE_SECONDS


def requeue_seconds() -> float:
    """How long a queued task may wait unclaimed before its wake-up message is published again."""
    return settings.DIGITORN_TASK_REQUEUE_SECONDS


def wait_max_seconds() -> float:
    return settings.DIGITORN_TASK_WAIT_MAX_SECONDS


CANCEL_POLL_SECONDS = 0.5


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------


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


def _sees_all(principal: str, is_admin: bool | None) -> bool:
    return is_admin if is_admin is not None else principal == ADMIN_PRINCIPAL


def background_task_get(
    *, app_id: str, task_id: str, principal: str, is_admin: bool | None = None
) -> BackgroundTask:
    """The caller's task (an admin sees every task); another principal's task is 404, not 403."""
    rows = BackgroundTask.objects.filter(app_id=app_id, task_id=task_id)
    if not _sees_all(principal, is_admin):
        rows = rows.filter(principal=principal)
    task = rows.first()
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
    is_admin: bool | None = None,
) -> tuple[list[BackgroundTask], int]:
    """Newest first; ``total`` counts every match, ``limit`` caps the rows returned."""
    rows = BackgroundTask.objects.filter(app_id=app_id)
    if not _sees_all(principal, is_admin):
        rows = rows.filter(principal=principal)
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


# --------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Gate:
    tool: str  # canonical module.action
    module: str
    action: str
    risk_level: str
    policy: str  # auto | approve | block
    reason: str


def _gate(*, app: CompiledApp, tool_name: str, params: dict, agent_id: str | None) -> _Gate:
    """Resolve the tool, validate its params and read its policy before anything is queued.

    The same resolution (aliases, did-you-mean), validation and policy as ``tool_invoke``, so a
    task is refused at launch for exactly what would refuse the call later.
    """
    from approvals.policy import resolve_policy_detail
    from tooling.index import cached_index
    from tooling.services import validate_params

    spec = cached_index(app).resolve(tool_name)
    validate_params(spec, params)
    decision = resolve_policy_detail(app, agent_id, spec.module, spec.action, spec.risk_level)
    return _Gate(
        tool=spec.name,
        module=spec.module,
        action=spec.action,
        risk_level=spec.risk_level,
        policy=decision.policy,
        reason=decision.reason,
    )


def _new_task_id() -> str:
    return f"task-{uuid.uuid4().hex[:20]}"


def _enqueue(task_id: str) -> None:
    """Publish the wake-up message; a failed publish is repaired by the sweep (requeue deadline)."""
    from tooling.tasks import run_background_task

    try:
        run_background_task.apply_async(args=[task_id])
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
    """Gate the call now (so a blocked tool is refused at launch), then queue it or wait for approval."""
    if not isinstance(tool, str) or not tool.strip():
        raise ValidationError("tool: give a tool name in module.action form, e.g. 'filesystem.find'.")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationError(f"params: must be an object of tool parameters, got {type(params).__name__}.")
    gate = _gate(app=app, tool_name=tool.strip(), params=params, agent_id=agent_id)
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
        from approvals.services import approval_request_create

        request = approval_request_create(
            app=app,
            tool_name=gate.tool,
            params=mask_secrets(params, app.secret_values),
            call_params=seal_secrets(params, app.secret_values),
            risk_level=gate.risk_level,
            reason=gate.reason,
            principal=principal,
            session_id=session_id or None,
            agent_id=agent_id or "",
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
    from approvals.services import approval_decide

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


def background_task_cancel(
    *, app_id: str, task_id: str, principal: str, is_admin: bool | None = None
) -> BackgroundTask:
    """Cooperative cancel; a finished task is returned unchanged (see the module docstring)."""
    task = background_task_get(app_id=app_id, task_id=task_id, principal=principal, is_admin=is_admin)
    if task.status in FINISHED_STATUSES:
        return task
    return _cancel_row(task, reason=f"cancelled by {principal}")


async def background_task_wait(
    *,
    app_id: str,
    task_id: str,
    principal: str,
    timeout: float,
    is_admin: bool | None = None,
    until_not: tuple[str, ...] = ACTIVE_STATUSES,
) -> BackgroundTask:
    """Poll the row until it leaves ``until_not`` or ``timeout`` passes; return it either way."""
    get = sync_to_async(background_task_get)
    deadline = time.monotonic() + max(0.0, min(timeout, wait_max_seconds()))
    delay = 0.05
    while True:
        task = await get(app_id=app_id, task_id=task_id, principal=principal, is_admin=is_admin)
        remaining = deadline - time.monotonic()
        if task.status not in until_not or remaining <= 0:
            return task
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.25)


async def background_task_cancel_and_settle(
    *, app_id: str, task_id: str, principal: str, settle_seconds: float = 5.0, is_admin: bool | None = None
) -> BackgroundTask:
    """Cancel, then give a running task a moment to stop so the answer usually says 'cancelled'."""
    task = await sync_to_async(background_task_cancel)(
        app_id=app_id, task_id=task_id, principal=principal, is_admin=is_admin
    )
    if task.status != Status.RUNNING:
        return task
    return await background_task_wait(
        app_id=app_id,
        task_id=task_id,
        principal=principal,
        timeout=settle_seconds,
        is_admin=is_admin,
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


def _on_approval_decided(sender, *, request_id: str, approved: bool, message: str = "", **kwargs) -> None:
    background_task_approval_decided(request_id=request_id, approved=approved, message=message)


def _on_app_undeployed(sender, *, app_id: str, **kwargs) -> None:
    background_tasks_cancel_for_app(app_id=app_id)


def connect_receivers() -> None:
    """Called from ``DigitornSiteConfig.ready()`` in every process (web and worker)."""
    signals.approval_decided.connect(_on_approval_decided, dispatch_uid="tooling.background.approval_decided")
    signals.app_undeployed.connect(_on_app_undeployed, dispatch_uid="tooling.background.app_undeployed")


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


class _TaskWatch:
    """A thread beside the running tool: renews the lease and turns ``cancel_requested`` into an event.

    It has its own database connection, so ``cancel_check`` is a memory read the tool may call as
    often as it likes.
    """

    def __init__(self, *, task_id: str, worker: str) -> None:
        self.task_id = task_id
        self.worker = worker
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{task_id}", daemon=True)

    def __enter__(self) -> _TaskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _loop(self) -> None:
        lease = lease_seconds()
        renew_every = max(lease / 3.0, CANCEL_POLL_SECONDS)
        last_renew = time.monotonic()
        try:
            while not self._stop.wait(CANCEL_POLL_SECONDS):
                try:
                    row = (
                        BackgroundTask.objects.filter(task_id=self.task_id)
                        .values_list("cancel_requested", "status", "worker")
                        .first()
                    )
                    if row is None or row[0] or row[1] != Status.RUNNING or row[2] != self.worker:
                        self._cancel.set()
                    if time.monotonic() - last_renew >= renew_every:
                        BackgroundTask.objects.filter(
                            task_id=self.task_id, status=Status.RUNNING, worker=self.worker
                        ).update(lease_expires_at=timezone.now() + timedelta(seconds=lease))
                        last_renew = time.monotonic()
                except Exception:  # noqa: BLE001 - a busy database must not kill the watcher
                    log.warning(
                        "task watcher for %s could not reach the database", self.task_id, exc_info=True
                    )
        finally:
            connection.close()


def _capped_result(data: Any, limit: int) -> Any:
    """Results are truncated by tool_invoke already; this bounds what a row may hold regardless."""
    try:
        text = json.dumps(data, default=str)
    except (TypeError, ValueError):
        return str(data)[:limit]
    if len(text) <= limit:
        return data
    return text[:limit] + f"\n[... truncated: {len(text) - limit} more characters]"


@transaction.atomic
def _finish(*, task_id: str, worker: str, status: str, result: Any = None, error: str = "") -> bool:
    rows = BackgroundTask.objects.filter(task_id=task_id, status=Status.RUNNING, worker=worker)
    if not rows.update(
        status=status, result=result, error=error or "", finished_at=timezone.now(), lease_expires_at=None
    ):
        return False
    _send_finished(BackgroundTask.objects.get(task_id=task_id), status)
    return True


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


def background_task_run(*, task_id: str, worker: str) -> str:
    """Run one task to its end on this worker; returns the final status ("skipped" if not claimed)."""
    task = background_task_claim(task_id=task_id, worker=worker)
    if task is None:
        return "skipped"
    if task.cancel_requested:
        _finish(task_id=task_id, worker=worker, status=Status.CANCELLED, error=task.error or "cancelled")
        return Status.CANCELLED
    from apps_registry.selectors import app_runtime

    try:
        app = app_runtime(app_id=task.app_id)
    except DigitornError as exc:
        _finish(task_id=task_id, worker=worker, status=Status.FAILED, error=exc.message)
        return Status.FAILED

    from tooling.services import tool_invoke

    outcome = None
    error = ""
    with _TaskWatch(task_id=task_id, worker=worker) as watch:
        try:
            outcome = tool_invoke(
                app=app,
                tool_name=task.tool,
                params=unseal_secrets(task.params, app.secret_values),
                caller=f"task:{task_id}",
                principal=task.principal,
                session_id=task.session_id,
                approval_request_id=task.approval_request_id,
                origin="task",
                origin_ref=task_id,
                cancel_check=watch.cancelled,
            )
        except DigitornError as exc:
            error = exc.message
        except Exception as exc:  # noqa: BLE001 - recorded on the row; the worker lives on
            log.exception("background task %s crashed", task_id)
            error = f"internal error while running '{task.tool}': {type(exc).__name__}: {exc}"
        cancelled = watch.cancelled()

    if outcome is not None and outcome.status == "pending_approval":
        # The app was redeployed with a stricter policy after launch: wait for this new request.
        BackgroundTask.objects.filter(task_id=task_id, status=Status.RUNNING, worker=worker).update(
            status=Status.WAITING_APPROVAL,
            approval_request_id=outcome.request_id,
            worker="",
            lease_expires_at=None,
        )
        return Status.WAITING_APPROVAL

    limit = max(app.runtime.max_tool_result_chars, 1000) + 200
    result = _capped_result(outcome.data, limit) if outcome is not None else None
    if cancelled:
        status, error = Status.CANCELLED, "cancelled while running; the tool was stopped"
    elif outcome is not None and outcome.success:
        status = Status.COMPLETED
    else:
        status = Status.FAILED
        if outcome is not None:
            error = outcome.error or f"tool '{task.tool}' ended with status {outcome.status}"
    _finish(task_id=task_id, worker=worker, status=status, result=result, error=error)
    return status


@transaction.atomic
def _fail_lost(task: BackgroundTask, now) -> bool:
    status = Status.CANCELLED if task.cancel_requested else Status.FAILED
    error = "cancelled; its worker stopped before confirming" if task.cancel_requested else WORKER_LOST_ERROR
    rows = BackgroundTask.objects.filter(pk=task.pk, status=Status.RUNNING, lease_expires_at__lt=now)
    if not rows.update(status=status, error=error, finished_at=now, lease_expires_at=None):
        return False
    task.refresh_from_db()
    _send_finished(task, status)
    return True


def background_tasks_sweep() -> dict[str, int]:
    """Periodic repair: lost workers, lost messages, approval decisions whose signal was missed."""
    now = timezone.now()
    lost = 0
    for task in BackgroundTask.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now):
        lost += int(_fail_lost(task, now))

    requeued = 0
    due = BackgroundTask.objects.filter(status=Status.QUEUED).filter(
        Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True)
    )
    for task_id in list(due.values_list("task_id", flat=True)[:500]):
        bumped = BackgroundTask.objects.filter(task_id=task_id, status=Status.QUEUED).update(
            lease_expires_at=now + timedelta(seconds=requeue_seconds())
        )
        if bumped:
            _enqueue(task_id)
            requeued += 1

    reconciled = 0
    waiting = BackgroundTask.objects.filter(status=Status.WAITING_APPROVAL).exclude(approval_request_id=None)
    if waiting.exists():
        from approvals.selectors import approval_get

        for task in waiting[:500]:
            request = approval_get(request_id=task.approval_request_id)
            if request is None:
                background_task_approval_decided(
                    request_id=task.approval_request_id,
                    approved=False,
                    message="the approval request is gone",
                )
                reconciled += 1
            elif request.status != "pending":
                background_task_approval_decided(
                    request_id=task.approval_request_id,
                    approved=request.status == "approved",
                    message=request.decision_message or request.status,
                )
                reconciled += 1
    return {"lost": lost, "requeued": requeued, "reconciled": reconciled}


# --------------------------------------------------------------------------------------------
# Meta-tools for agents
# --------------------------------------------------------------------------------------------

BACKGROUND_META_TOOL_NAMES = registry.BACKGROUND_META_TOOL_NAMES


def background_meta_tools() -> list[dict[str, Any]]:
    """Schemas in the brain's tool format; the loop routes these names to background_meta_invoke."""
    return [
        {
            "name": "background_run",
            "description": (
                "Run a tool in the background instead of waiting for it (long searches, builds, slow "
                "commands). Returns a task_id at once; when the task finishes you get a notification "
                "with its result. Same policy as a direct call: a tool needing approval waits for it."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "tool": {
                        "type": "string",
                        "description": "Tool name in module.action form, e.g. shell.run",
                    },
                    "params": {"type": "object", "description": "The tool's parameters", "default": {}},
                },
                "required": ["tool"],
                "additionalProperties": False,
            },
        },
        {
            "name": "background_status",
            "description": (
                "Check background tasks: with task_id, that task's status and result; without, the "
                "tasks launched in this session, newest first."
            ),
            "parameters": {
                "type": "object",
                "properties": {"task_id": {"type": "string", "description": "A task_id from background_run"}},
                "additionalProperties": False,
            },
        },
        {
            "name": "background_cancel",
            "description": "Cancel a queued or running background task (a running command is stopped).",
            "parameters": {
                "type": "object",
                "properties": {"task_id": {"type": "string"}},
                "required": ["task_id"],
                "additionalProperties": False,
            },
        },
    ]


def background_meta_invoke(
    *, app: CompiledApp, name: str, params: dict, principal: str, session_id: str | None, agent_id: str | None
) -> dict[str, Any]:
    """Run one background meta-tool; returns the tool-result shape ``{success, data, error}``."""
    params = params if isinstance(params, dict) else {}
    try:
        if name == "background_run":
            task = background_task_launch(
                app=app,
                tool=params.get("tool", ""),
                params=params.get("params") or {},
                principal=principal,
                session_id=session_id,
                agent_id=agent_id,
            )
            data = background_task_payload(task)
            data["message"] = (
                "Waiting for a human to approve the call; it runs once approved."
                if task.status == Status.WAITING_APPROVAL
                else "Started in the background; you will be notified when it finishes."
            )
            return {"success": True, "data": data, "error": None}
        if name == "background_status":
            task_id = params.get("task_id")
            if task_id:
                task = background_task_get(app_id=app.app_id, task_id=str(task_id), principal=principal)
                return {"success": True, "data": background_task_payload(task), "error": None}
            tasks, total = background_task_list(
                app_id=app.app_id, principal=principal, session_id=session_id, limit=20
            )
            return {
                "success": True,
                "data": {"tasks": [background_task_payload(t) for t in tasks], "total": total},
                "error": None,
            }
        if name == "background_cancel":
            task_id = params.get("task_id")
            if not task_id:
                raise ValidationError("params.task_id: give the task_id returned by background_run.")
            task = background_task_cancel(app_id=app.app_id, task_id=str(task_id), principal=principal)
            return {"success": True, "data": background_task_payload(task), "error": None}
    except DigitornError as exc:
        return {"success": False, "data": None, "error": exc.message}
    return {
        "success": False,
        "data": None,
        "error": f"Unknown background tool '{name}'; use one of {', '.join(BACKGROUND_META_TOOL_NAMES)}.",
    }
