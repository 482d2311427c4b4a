"""Signal receivers: each calls one service and, when a turn can go on, schedules it."""

from __future__ import annotations

import logging

from conversations import services

log = logging.getLogger("digitorn.conversations")


def on_approval_decided(sender, *, request_id: str, app_id: str, session_id=None, approved: bool = False,
                        message: str = "", **kwargs) -> None:
    session_pk = services.approval_resolution_apply(
        request_id=request_id, app_id=app_id, session_id=session_id, approved=approved, message=message
    )
    if session_pk is not None:
        from conversations.engine import schedule_advance

        schedule_advance(session_pk)


def on_background_task_finished(sender, *, task_id: str, app_id: str, session_id=None, status: str = "",
                                **kwargs) -> None:
    services.notification_record(task_id=task_id, app_id=app_id, session_id=session_id, status=status)


def on_app_undeployed(sender, *, app_id: str, **kwargs) -> None:
    services.sessions_purge_app(app_id=app_id)
