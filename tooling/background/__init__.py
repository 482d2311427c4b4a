"""Background tasks: one tool call run by a Celery worker, outside any conversation turn.

- ``selectors``: reads (the payload, one task, a listing, its counts);
- ``services``: launch (through ``tool_invoke``'s gate), cancel, wait, approval decisions, undeploy,
  and the worker's claim / finish writes;
- ``runner``: the worker runtime (run one task beside its watcher thread, the periodic sweep);
- ``meta``: the meta-tools agents call.

The names other parts use are re-exported here (``from tooling.background import X``).
"""

from tooling.background.meta import BACKGROUND_META_TOOL_NAMES, background_meta_invoke, background_meta_tools
from tooling.background.runner import (
    CANCEL_POLL_SECONDS,
    WORKER_LOST_ERROR,
    background_task_run,
    background_tasks_sweep,
)
from tooling.background.selectors import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    Status,
    background_task_counts,
    background_task_get,
    background_task_list,
    background_task_payload,
)
from tooling.background.services import (
    _enqueue,
    background_task_approval_decided,
    background_task_cancel,
    background_task_cancel_and_settle,
    background_task_claim,
    background_task_launch,
    background_task_wait,
    background_tasks_cancel_for_app,
    lease_seconds,
    requeue_seconds,
    wait_max_seconds,
)

__all__ = [
    "ACTIVE_STATUSES",
    "BACKGROUND_META_TOOL_NAMES",
    "CANCEL_POLL_SECONDS",
    "FINISHED_STATUSES",
    "Status",
    "WORKER_LOST_ERROR",
    "_enqueue",
    "background_meta_invoke",
    "background_meta_tools",
    "background_task_approval_decided",
    "background_task_cancel",
    "background_task_cancel_and_settle",
    "background_task_claim",
    "background_task_counts",
    "background_task_get",
    "background_task_launch",
    "background_task_list",
    "background_task_payload",
    "background_task_run",
    "background_task_wait",
    "background_tasks_cancel_for_app",
    "background_tasks_sweep",
    "lease_seconds",
    "requeue_seconds",
    "wait_max_seconds",
]
