"""Reads of the conversations app (payload shapes of DESIGN §7)."""

from __future__ import annotations

from django.db.models import Count

from conversations.models import Message, Notification, Session
from conversations.services import session_resolve, sessions_purge_expired
from digitorn_site.api.auth import ADMIN_PRINCIPAL


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def session_payload(session: Session, message_count: int | None = None) -> dict:
    if message_count is None:
        message_count = getattr(session, "message_count", None)
    if message_count is None:
        message_count = session.messages.count()
    return {
        "session_id": session.session_id,
        "app_id": session.app_id,
        "created_at": _iso(session.created_at),
        "last_active": _iso(session.last_active),
        "message_count": message_count,
        "status": session.status,
    }


def session_list(*, app_id: str, principal: str) -> list[dict]:
    """The caller's live sessions of the app (the admin sees everyone's); expired ones are purged."""
    sessions_purge_expired(app_id=app_id)
    qs = Session.objects.filter(app_id=app_id)
    if principal != ADMIN_PRINCIPAL:
        qs = qs.filter(principal=principal)
    qs = qs.annotate(message_count=Count("messages")).order_by("-last_active")
    return [session_payload(s) for s in qs]


def session_detail(*, app_id: str, session_id: str, principal: str) -> dict:
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    return session_payload(session)


def session_history(*, app_id: str, session_id: str, principal: str) -> dict:
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    messages = []
    for m in Message.objects.filter(session=session).order_by("id"):
        item = {"role": m.role, "content": m.content, "tool_calls": m.tool_calls, "created_at": _iso(m.created_at)}
        if m.role == Message.Role.TOOL:
            item["tool_call_id"] = m.tool_call_id
            item["name"] = m.name
        if m.correlation_id:
            item["correlation_id"] = m.correlation_id
        messages.append(item)
    return {"session_id": session.session_id, "messages": messages}


def notifications_active(*, app_id: str, principal: str, session_id: str | None = None) -> bool:
    qs = Notification.objects.filter(app_id=app_id, delivered_at__isnull=True)
    if principal != ADMIN_PRINCIPAL:
        qs = qs.filter(session__principal=principal)
    if session_id:
        qs = qs.filter(session__session_id=session_id)
    return qs.exists()
