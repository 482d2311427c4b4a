"""The conversations app's writes, by name, for callers outside the app (tests, tools, scripts).

Each lives in its own module; code inside the app imports that module, never this one:
sessions (``sessions``), the per-session queue (``queue``), background-task notifications
(``notifications``) and retention (``retention``). A turn's own steps are not repeated here: callers
import ``conversations.turns.state`` and ``conversations.turns.scheduler`` as the app does.
"""

from __future__ import annotations

from conversations.notifications import notification_record, notifications_drain
from conversations.queue import MAX_MESSAGE_BYTES, Enqueued, message_enqueue
from conversations.retention import (
    PRUNE_BATCH,
    audit_prune_older_than,
    events_prune_older_than,
    retention_prune,
    sessions_prune_expired,
)
from conversations.sessions import (
    idle_seconds_for,
    session_cancel,
    session_delete,
    session_resolve,
    sessions_purge_app,
    sessions_purge_expired,
)

__all__ = [
    "MAX_MESSAGE_BYTES", "PRUNE_BATCH", "Enqueued", "audit_prune_older_than", "events_prune_older_than",
    "idle_seconds_for", "message_enqueue", "notification_record", "notifications_drain", "retention_prune",
    "session_cancel", "session_delete", "session_resolve", "sessions_prune_expired", "sessions_purge_app",
    "sessions_purge_expired",
]
