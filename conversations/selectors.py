"""Reads of the conversations app, in the original Digitorn's shapes (DESIGN §7).

Times are epoch seconds (floats), as the original's ``ConversationSession`` keeps them.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Count, Exists, OuterRef, Subquery
from django.db.models.functions import Coalesce, Substr

from apps_registry.selectors import app_compiled
from conversations.models import Event, Message, Notification, Session, Turn
from conversations.sessions import session_resolve, sessions_purge_expired
from digitorn_site.principals import ADMIN_PRINCIPAL
from tooling.models import MemoryEntry

TITLE_CHARS = 80  # the original's title: the first 80 characters of the first user message
PREVIEW_CHARS = 200  # and its last_message_preview
ACTIVE_TURNS = (Turn.Status.QUEUED, Turn.Status.RUNNING, Turn.Status.WAITING_APPROVAL)
FINISHED_TURNS = (Turn.Status.DONE, Turn.Status.FAILED, Turn.Status.CANCELLED)
SESSIONS_LIMIT_DEFAULT = 50
SESSIONS_LIMIT_MAX = 200
EVENTS_LIMIT_DEFAULT = 1000
EVENTS_LIMIT_MAX = 10_000


def epoch(value) -> float | None:
    return value.timestamp() if value is not None else None


def _first_user_sql():
    # Cut in the database: a message may be 1 MiB and a listing shows 50 sessions.
    return Subquery(
        Message.objects.filter(session=OuterRef("pk"), role=Message.Role.USER)
        .order_by("id")
        .annotate(head=Substr("content", 1, TITLE_CHARS * 4))
        .values("head")[:1]
    )


def _last_visible_qs():
    return (
        Message.objects.filter(session=OuterRef("pk"), role__in=[Message.Role.USER, Message.Role.ASSISTANT])
        .exclude(content="")
        .order_by("-id")
    )


def session_payload(session: Session) -> dict[str, Any]:
    """The original's ``ConversationSession.summary()`` plus ``is_active`` (a turn runs, waits for an
    approval, or is queued: what clients poll) and this project's ``status``. ``session`` comes from
    ``_annotated`` (one query for a whole page of sessions)."""
    title = " ".join((session.title_src or "").split())[:TITLE_CHARS]
    return {
        "session_id": session.session_id,
        "app_id": session.app_id,
        "title": title,
        "user_id": session.principal,
        "created_at": epoch(session.created_at),
        "last_active": epoch(session.last_active),
        "turn_count": session.turn_count,
        "message_count": session.message_count,
        "last_message_preview": (session.preview_src or "")[:PREVIEW_CHARS],
        "last_message_role": session.preview_role,
        "is_active": bool(session.is_active),
        "status": session.status,
    }


def _count(rows):
    return Subquery(rows.order_by().values("session").annotate(n=Count("id")).values("n")[:1])


def _annotated(qs):
    # Subqueries, not joins: counting messages and turns through two joins multiplies the rows.
    return qs.annotate(
        message_count=Coalesce(_count(Message.objects.filter(session=OuterRef("pk"))), 0),
        turn_count=Coalesce(_count(Turn.objects.filter(session=OuterRef("pk"), status__in=FINISHED_TURNS)), 0),
        is_active=Exists(Turn.objects.filter(session=OuterRef("pk"), status__in=ACTIVE_TURNS)),
        title_src=_first_user_sql(),
        preview_src=Subquery(_last_visible_qs().annotate(head=Substr("content", 1, PREVIEW_CHARS)).values("head")[:1]),
        preview_role=Subquery(_last_visible_qs().values("role")[:1]),
    )


def session_list(*, app_id: str, principal: str, limit: int = SESSIONS_LIMIT_DEFAULT, offset: int = 0) -> dict:
    """The caller's live sessions of the app, most recent first (the admin sees everyone's); expired
    ones are purged. ``limit`` 0 means all, like the original."""
    sessions_purge_expired(app_id=app_id)
    # A delegated run's session (agent_spawn) shows through its parent's stream, not as a session.
    qs = Session.objects.filter(app_id=app_id, parent__isnull=True)
    if principal != ADMIN_PRINCIPAL:
        qs = qs.filter(principal=principal)
    total = qs.count()
    qs = _annotated(qs).order_by("-last_active", "-id")
    page = qs[offset : offset + limit] if limit else qs[offset:]
    return {"sessions": [session_payload(s) for s in page], "total": total, "limit": limit, "offset": offset}


def _usage_totals(session: Session) -> dict[str, int]:
    """Token usage summed over the session's finished turns, as far as their results report it
    (a brain that reports no usage counts zero)."""
    prompt = completion = 0
    for result in session.turns.filter(status__in=FINISHED_TURNS).values_list("result", flat=True):
        usage = (result or {}).get("usage") if isinstance(result, dict) else None
        if isinstance(usage, dict):
            prompt += _int(usage.get("prompt_tokens", usage.get("input_tokens", 0)))
            completion += _int(usage.get("completion_tokens", usage.get("output_tokens", 0)))
    return {"prompt": prompt, "completion": completion, "total": prompt + completion}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _context(session: Session, message_count: int) -> dict[str, Any]:
    """The context window as this daemon counts it: in messages (``runtime.context_window_messages``),
    how full it is, and how many compactions the session went through."""
    window = None
    try:
        window = max(int(app_compiled(app_id=session.app_id).runtime.context_window_messages or 0), 4)
    except Exception:  # noqa: BLE001 - an undeployed app's session still answers
        window = None
    in_context = min(message_count, window) if window else message_count
    return {
        "window_messages": window,
        "messages_in_context": in_context,
        "pressure": round(in_context / window, 4) if window else None,
        "compactions": session.events.filter(type="hook", data__name="context_compaction").count(),
    }


def session_detail(*, app_id: str, session_id: str, principal: str) -> dict:
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    session = _annotated(Session.objects.filter(pk=session.pk)).get()
    data = session_payload(session)
    data["tokens"] = _usage_totals(session)
    data["context"] = _context(session, data["message_count"])
    return data


def _parsed(content: str) -> Any:
    try:
        return json.loads(content)
    except (TypeError, ValueError):
        return content


def history_turns(messages: list[Message]) -> list[dict]:
    """User and assistant messages; each tool result is folded into the call of the assistant
    message that asked for it (``tool_calls[{id, name, params, result, status}]``), system notes are
    left out — the original's ``_build_history_turns``."""
    results = {m.tool_call_id: _parsed(m.content) for m in messages if m.role == Message.Role.TOOL and m.tool_call_id}
    turns: list[dict] = []
    for m in messages:
        if m.role == Message.Role.USER:
            item: dict[str, Any] = {"role": "user", "content": m.content}
        elif m.role == Message.Role.ASSISTANT:
            calls = []
            for call in m.tool_calls or []:
                call_id = call.get("id", "")
                done = call_id in results
                calls.append(
                    {
                        "id": call_id,
                        "name": call.get("name", ""),
                        "params": call.get("params") or {},
                        "result": results.get(call_id),
                        "status": "done" if done else "pending",
                    }
                )
            if not calls and not (m.content or "").strip():
                continue
            item = {"role": "assistant", "content": m.content, "tool_calls": calls}
        else:
            continue
        item["created_at"] = epoch(m.created_at)
        if m.correlation_id:
            item["correlation_id"] = m.correlation_id
        turns.append(item)
    return turns


def session_history(
    *, app_id: str, session_id: str, principal: str, since_seq: int = 0, events_limit: int = EVENTS_LIMIT_DEFAULT
) -> dict:
    """The turns, and the session's events after ``since_seq`` (``turn_end``/``result`` included), paged
    like the original's (``events_next_seq``, ``events_has_more``)."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    messages = list(Message.objects.filter(session=session).order_by("id"))
    events_qs = Event.objects.filter(session=session)
    total = events_qs.count()
    rows = list(events_qs.filter(seq__gt=since_seq).order_by("seq")[: events_limit + 1])
    has_more = len(rows) > events_limit
    rows = rows[:events_limit]
    events = []
    for e in rows:
        item = {"seq": e.seq, "type": e.type, "data": e.data, "correlation_id": e.correlation_id, "ts": epoch(e.created_at)}
        events.append(item)
        if e.type == "result":
            # The original's history records the end of a turn as `turn_end` (its clients and its
            # functional suite read tool_calls_count / turns_used / error there); live streams say
            # `result`. Both are listed, same seq and payload.
            events.append({**item, "type": "turn_end"})
    return {
        "session_id": session.session_id,
        "messages": history_turns(messages),
        "events": events,
        "events_total": total,
        "events_next_seq": rows[-1].seq if rows else since_seq,
        "events_has_more": has_more,
    }


def notifications_active(*, app_id: str, principal: str, session_id: str | None = None) -> bool:
    qs = Notification.objects.filter(app_id=app_id, delivered_at__isnull=True)
    if principal != ADMIN_PRINCIPAL:
        qs = qs.filter(session__principal=principal)
    if session_id:
        qs = qs.filter(session__session_id=session_id)
    return qs.exists()


def session_memory(*, app_id: str, session_id: str, principal: str) -> dict:
    """The session's working memory: the notes its agent kept with the memory module."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    entries = [
        {"key": e.key, "value": e.value, "created_at": epoch(e.created_at), "updated_at": epoch(e.updated_at)}
        for e in MemoryEntry.objects.filter(app_id=app_id, session_id=session.session_id).order_by("key")
    ]
    return {"session_id": session.session_id, "entries": entries, "count": len(entries)}
