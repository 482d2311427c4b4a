"""The conversations app's signal receivers, connected by ``connect()`` (from
``ConversationsConfig.ready()``): each calls one service and, when a turn can go on, schedules it."""

from __future__ import annotations

import logging

from conversations.notifications import notification_record
from conversations.sessions import sessions_purge_app
from conversations.turns.state import approval_resolution_apply
from conversations.turns.wakeup import schedule_advance
from digitorn_site import signals

log = logging.getLogger("digitorn.conversations")


def on_approval_decided(sender, *, request_id: str, app_id: str, session_id=None, approved: bool = False,
                        message: str = "", **kwargs) -> None:
    session_pk = approval_resolution_apply(
        request_id=request_id, app_id=app_id, session_id=session_id, approved=approved, message=message
    )
    if session_pk is not None:
        schedule_advance(session_pk)


def on_background_task_finished(sender, *, task_id: str, app_id: str, session_id=None, status: str = "",
                                **kwargs) -> None:
    notification_record(task_id=task_id, app_id=app_id, session_id=session_id, status=status)


def on_app_undeployed(sender, *, app_id: str, **kwargs) -> None:
    sessions_purge_app(app_id=app_id)


def connect() -> None:
    signals.approval_decided.connect(on_approval_decided, dispatch_uid="conversations.approval_decided")
    signals.background_task_finished.connect(
        on_background_task_finished, dispatch_uid="conversations.background_task_finished"
    )
    signals.app_undeployed.connect(on_app_undeployed, dispatch_uid="conversations.app_undeployed")
