"""Signal receivers of the tooling app: each calls one service (connected in ``ToolingConfig.ready``).

``ready()`` runs in every process that sets Django up (web and worker), so both react.
"""

from __future__ import annotations

from tooling.background.services import background_task_approval_decided, background_tasks_cancel_for_app
from tooling.modules import mcp
from tooling.services import direct_call_on_decision


def on_approval_decided_direct_call(sender, *, request_id: str, approved: bool, message: str = "",
                                    **kwargs) -> None:
    direct_call_on_decision(request_id=request_id, approved=approved, message=message)


def on_approval_decided_background_task(sender, *, request_id: str, approved: bool, message: str = "",
                                        **kwargs) -> None:
    background_task_approval_decided(request_id=request_id, approved=approved, message=message)


def on_app_undeployed_background_tasks(sender, *, app_id: str, **kwargs) -> None:
    background_tasks_cancel_for_app(app_id=app_id)


def on_app_undeployed_mcp(sender, *, app_id: str, **kwargs) -> None:
    mcp.stop_app_connections(app_id)
