"""The conversations app's writes, by name, for callers outside the app (tests, tools, scripts).

Each lives in its own module; code inside the app imports that module, never this one:
sessions (``sessions``), the per-session queue (``queue``), background-task notifications
(``notifications``), retention (``retention``), a turn's state (``turns.state``) and running a
session's queue (``turns.scheduler``).
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
from conversations.turns.scheduler import advance_session, turns_recover
from conversations.turns.state import (
    ACTIVE,
    ClaimedTurn,
    approval_request_data,
    approval_resolution_apply,
    tool_call_data,
    turn_calls_started,
    turn_claim,
    turn_compacted,
    turn_emit,
    turn_finish_and_peek,
    turn_heartbeat,
    turn_record_pending,
    turn_record_reply,
    turn_record_result,
    turn_record_wait,
    turn_record_wait_result,
    turn_result_wait_ready,
    turn_save_state,
    turn_suspend,
    turn_tool_start,
    turns_recoverable,
)

__all__ = [
    "ACTIVE", "MAX_MESSAGE_BYTES", "PRUNE_BATCH", "ClaimedTurn", "Enqueued", "advance_session",
    "approval_request_data", "approval_resolution_apply", "audit_prune_older_than", "events_prune_older_than",
    "idle_seconds_for", "message_enqueue", "notification_record", "notifications_drain", "retention_prune",
    "session_cancel", "session_delete", "session_resolve", "sessions_prune_expired", "sessions_purge_app",
    "sessions_purge_expired", "tool_call_data", "turn_calls_started", "turn_claim", "turn_compacted",
    "turn_emit", "turn_finish_and_peek", "turn_heartbeat", "turn_record_pending", "turn_record_reply",
    "turn_record_result", "turn_record_wait", "turn_record_wait_result", "turn_result_wait_ready",
    "turn_save_state", "turn_suspend", "turn_tool_start", "turns_recover", "turns_recoverable",
]
