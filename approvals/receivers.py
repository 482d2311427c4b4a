"""Signal receivers of the approvals app: each calls one service (connected in ``ApprovalsConfig.ready``)."""

from __future__ import annotations

from approvals import services


def on_app_undeployed(sender, *, app_id: str, **kwargs) -> None:
    # The one place an undeploy cancels the app's pending requests (the sessions' purge does not).
    services.approvals_cancel(app_id=app_id)
