"""The worker side of background tasks: run one claimed task, and the periodic sweep.

While the tool runs a watcher thread renews the lease and reads ``cancel_requested`` every 0.5 s;
``tool_invoke`` polls it through ``cancel_check`` and a running shell command is terminated. The
periodic sweep marks running tasks whose lease expired (their worker died) as failed without
re-running them, since the tool may already have had side effects; queued tasks whose message was
lost (never claimed) are published again, which is safe because they never started.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from approvals.services import approval_current
from digitorn_site.errors import DigitornError
from tooling import ports
from tooling.background.selectors import Status
from tooling.background.services import (
    background_task_approval_decided,
    background_task_claim,
    background_task_fail_lost,
    background_task_finish,
    background_task_renew,
    background_task_requeue,
    background_task_wait_again,
    lease_seconds,
)
from tooling.models import BackgroundTask
from tooling.services import tool_invoke, unseal_secrets

log = logging.getLogger("digitorn.tasks")

CANCEL_POLL_SECONDS = 0.5

WORKER_LOST_ERROR = (
    "worker lost: the worker running this task stopped before it finished. The task was not run "
    "again because the tool may already have had side effects; launch it again if that is safe."
)


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
        renew_every = max(lease_seconds() / 3.0, CANCEL_POLL_SECONDS)
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
                        background_task_renew(task_id=self.task_id, worker=self.worker)
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


def background_task_run(*, task_id: str, worker: str) -> str:
    """Run one task to its end on this worker; returns the final status ("skipped" if not claimed)."""
    task = background_task_claim(task_id=task_id, worker=worker)
    if task is None:
        return "skipped"
    finish = background_task_finish
    if task.cancel_requested:
        finish(task_id=task_id, worker=worker, status=Status.CANCELLED, error=task.error or "cancelled")
        return Status.CANCELLED
    try:
        app = ports.resolve_app(task.app_id)
    except DigitornError as exc:
        finish(task_id=task_id, worker=worker, status=Status.FAILED, error=exc.message)
        return Status.FAILED

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
        background_task_wait_again(task_id=task_id, worker=worker, request_id=outcome.request_id)
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
    finish(task_id=task_id, worker=worker, status=status, result=result, error=error)
    return status


def background_tasks_sweep() -> dict[str, int]:
    """Periodic repair: lost workers, lost messages, approval decisions whose signal was missed."""
    now = timezone.now()
    # One read first: this runs every 10 s and there is nothing to repair almost always; the three
    # reads below cost ~5x more (and each scans the table: there is no index on status alone).
    lost_running = Q(status=Status.RUNNING, lease_expires_at__lt=now)
    lost_queued = Q(status=Status.QUEUED) & (Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True))
    waiting = Q(status=Status.WAITING_APPROVAL, approval_request_id__isnull=False)
    if not BackgroundTask.objects.filter(lost_running | lost_queued | waiting).exists():
        return {"lost": 0, "requeued": 0, "reconciled": 0}
    lost = 0
    for task in BackgroundTask.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now):
        lost += int(background_task_fail_lost(task, now, lost_error=WORKER_LOST_ERROR))

    requeued = 0
    due = BackgroundTask.objects.filter(status=Status.QUEUED).filter(
        Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True)
    )
    for task_id in list(due.values_list("task_id", flat=True)[:500]):
        requeued += int(background_task_requeue(task_id=task_id, now=now))

    reconciled = 0
    waiting = BackgroundTask.objects.filter(status=Status.WAITING_APPROVAL).exclude(approval_request_id=None)
    if waiting.exists():
        for task in waiting[:500]:
            request = approval_current(request_id=task.approval_request_id)
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
