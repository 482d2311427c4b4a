"""Cross-app lifecycle signals.

Dependencies point one way (conversations → tooling → approvals; apps_registry → tooling), so a
lower part that must let a higher one react (an undeploy cancelling approvals and tasks, a decided
approval resuming a turn, a finished background task becoming a notification) sends one of these;
the higher part connects its receiver in ``AppConfig.ready()``. Receivers call a service; they hold
no logic of their own. Send them from ``transaction.on_commit`` so receivers see committed rows.
"""

from django.dispatch import Signal

# kwargs: app_id
app_undeployed = Signal()
# kwargs: app_id
app_deployed = Signal()
# kwargs: request_id, app_id, session_id (may be None), approved (bool), message (str)
approval_decided = Signal()
# kwargs: task_id, app_id, session_id (may be None), status
background_task_finished = Signal()
