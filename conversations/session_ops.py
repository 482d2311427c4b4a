"""Session operations the original Digitorn's clients call besides chatting: replace the queued
message, compact the context now, fork, undo the last turn, list the workspace.

Writes here follow the session services' rules (``sessions.py``: keyword-only, one transaction, the
session row locked first); none of them runs while a turn of the session is active, so the agent loop never sees its
transcript change under it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps_registry.selectors import app_compiled
from conversations.models import Message, Session, Turn
from conversations.queue import Enqueued
from conversations.sessions import session_resolve
from conversations.turns.context import recap
from conversations.turns.state import ACTIVE
from digitorn_site.errors import ConflictError
from tooling.modules._workspace import workspace_root

COMPACT_KEEP = 4  # messages kept verbatim after a manual compaction (the original refuses below 4)
WORKSPACE_MAX_ENTRIES = 1000
WORKSPACE_MAX_DEPTH = 8


def _lock(session: Session) -> None:
    Session.objects.select_for_update().filter(pk=session.pk).first()


def _refuse_if_active(session: Session, what: str) -> None:
    if session.turns.filter(status__in=ACTIVE).exists():
        raise ConflictError(
            f"Session '{session.session_id}' has a turn running or queued; {what} once it has finished "
            f"(or POST …/sessions/{session.session_id}/abort first)."
        )


# --- queue_mode=replace_last ------------------------------------------------------------------


def message_replace_last(*, app_id: str, session_id: str, principal: str, message: str) -> Enqueued | None:
    """Overwrite the session's newest still-queued message (the original's ``replace_last``); None when
    no message is waiting, so the caller queues this one normally."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal, create=True)
    with transaction.atomic():
        _lock(session)
        tail = (
            session.turns.select_for_update()
            .filter(status=Turn.Status.QUEUED, kind=Turn.Kind.MESSAGE)
            .order_by("-id")
            .first()
        )
        if tail is None or (tail.state or {}).get("started"):
            return None
        Turn.objects.filter(pk=tail.pk, status=Turn.Status.QUEUED).update(content=message)
        ahead = session.turns.filter(status__in=ACTIVE, id__lt=tail.pk).count()
        waiting = session.turns.filter(status=Turn.Status.QUEUED).count()
        last_seq = Session.objects.filter(pk=session.pk).values_list("last_seq", flat=True).get()
    return Enqueued(
        session_pk=session.pk,
        session_id=session.session_id,
        correlation_id=tail.correlation_id,
        position=ahead,
        queue_depth=waiting,
        after_seq=last_seq,
    )


# --- compact ------------------------------------------------------------------------------------


def session_compact(*, app_id: str, session_id: str, principal: str) -> dict[str, Any]:
    """Fold every message but the last few into one system recap, now (the original's ``compact``:
    ``{before, after, freed}``). The kept tail never starts inside a tool call/result pair."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    with transaction.atomic():
        _lock(session)
        _refuse_if_active(session, "compact it")
        messages = list(Message.objects.filter(session=session).order_by("id"))
        before = len(messages)
        cut = before - COMPACT_KEEP
        while 0 < cut < before and messages[cut].role == Message.Role.TOOL:
            cut += 1
        if before < COMPACT_KEEP or cut <= 1:
            return {"before": before, "after": before, "freed": 0, "note": "Too few messages to compact"}
        older = messages[:cut]
        # The recap takes the place of the oldest message, so transcript order (by id) holds.
        head = older[0]
        Message.objects.filter(pk=head.pk).update(
            role=Message.Role.SYSTEM, content=recap(older, on_request=True), tool_calls=None, tool_call_id="", name=""
        )
        Message.objects.filter(pk__in=[m.pk for m in older[1:]]).delete()
        Session.objects.filter(pk=session.pk).update(last_active=timezone.now())
    after = before - len(older) + 1
    return {"before": before, "after": after, "freed": before - after}


# --- fork ----------------------------------------------------------------------------------------


def session_fork(*, app_id: str, session_id: str, principal: str) -> dict[str, Any]:
    """A new session of the same owner with a copy of the transcript (the original's ``fork``)."""
    source = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    new_id = str(uuid.uuid4())
    with transaction.atomic():
        fork = Session.objects.create(app_id=app_id, session_id=new_id, principal=source.principal)
        copies = [
            Message(
                session=fork,
                role=m.role,
                content=m.content,
                tool_calls=m.tool_calls,
                tool_call_id=m.tool_call_id,
                name=m.name,
                correlation_id=m.correlation_id,
            )
            for m in Message.objects.filter(session=source).order_by("id")
        ]
        Message.objects.bulk_create(copies)
    return {
        "session_id": new_id,
        "source_session_id": source.session_id,
        "forked_from": source.session_id,
        "new_session_id": new_id,
        "forked": True,
        "message_count": len(copies),
    }


# --- undo ----------------------------------------------------------------------------------------


def session_undo(*, app_id: str, session_id: str, principal: str) -> dict[str, Any]:
    """Drop the last finished turn: its messages leave the transcript (its events stay in the log,
    which is append-only). 409 while a turn is active or when there is nothing to undo."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    with transaction.atomic():
        _lock(session)
        _refuse_if_active(session, "undo")
        last = session.turns.order_by("-id").first()
        if last is None:
            raise ConflictError(f"Session '{session.session_id}' has no turn to undo.")
        removed, _ = Message.objects.filter(session=session, correlation_id=last.correlation_id).delete()
        correlation_id = last.correlation_id
        last.delete()
        remaining = Message.objects.filter(session=session).count()
    return {
        "session_id": session.session_id,
        "undone": True,
        "correlation_id": correlation_id,
        "removed_messages": removed,
        "message_count": remaining,
    }


# --- workspace ------------------------------------------------------------------------------------


def session_workspace(*, app_id: str, session_id: str, principal: str) -> dict[str, Any]:
    """The files of the workspace the session's tools work in (the app's filesystem workspace),
    relative paths only, without following links; capped at ``WORKSPACE_MAX_ENTRIES``."""
    app = app_compiled(app_id=app_id)  # once: session_resolve reads its idle timeout from it
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal, compiled=app)
    files: list[dict[str, Any]] = []
    truncated = False
    root = _workspace_root(app)
    if root is not None:
        truncated = _walk(root, files)
    return {
        "session_id": session.session_id,
        "available": root is not None,
        "files": files,
        "total": len(files),
        "truncated": truncated,
    }


def _workspace_root(app: Any) -> Path | None:
    modules = getattr(app, "modules", {}) or {}
    if "filesystem" not in modules and "shell" not in modules:
        return None
    config = modules.get("filesystem") or modules.get("shell") or {}
    configured = config.get("workspace") if isinstance(config, dict) else None
    try:
        return workspace_root(app.app_id, configured)
    except Exception:  # noqa: BLE001 - a misconfigured workspace lists as unavailable, the tools say why
        return None


def _walk(root: Path, files: list[dict[str, Any]]) -> bool:
    """Breadth-first, sorted, no symlink followed; True when the cap cut the listing short."""
    queue: list[tuple[Path, int]] = [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if len(files) >= WORKSPACE_MAX_ENTRIES:
                return True
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            rel = Path(entry.path).relative_to(root).as_posix()
            kind = "dir" if is_dir else "symlink" if entry.is_symlink() else "file"
            files.append({"path": rel, "type": kind, "size": None if is_dir else stat.st_size,
                          "modified_at": stat.st_mtime})
            if is_dir and depth + 1 < WORKSPACE_MAX_DEPTH:
                queue.append((Path(entry.path), depth + 1))
    return False
