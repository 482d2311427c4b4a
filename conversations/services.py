"""Writes of the conversations app: sessions, the per-session queue, turn state, notifications.

Every function here is synchronous and transactional; the async agent loop (``engine.py``) calls
them through ``sync_to_async``. Each event is appended in the same transaction as the state it
reports (``events.event_append``), so a stream never shows an event whose state was rolled back.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from conversations.delegation import active_runs, parent_ended_badly, waits_ready
from conversations.events import event_append
from conversations.models import Message, Notification, Session, Turn
from conversations.turn_events import THINKING, agent_event_data, append_carried, status_data
from digitorn_site import fastsql
from digitorn_site.errors import ConflictError, NotFoundError, QueueFullError, ValidationError
from digitorn_site.principals import ADMIN_PRINCIPAL

log = logging.getLogger("digitorn.conversations")

ACTIVE = (Turn.Status.QUEUED, Turn.Status.RUNNING, Turn.Status.WAITING_APPROVAL)
MAX_MESSAGE_BYTES = 1024 * 1024  # the original's per-message cap (1 MiB of UTF-8)


# --- sessions ---------------------------------------------------------------------------------


def idle_seconds_for(app_id: str) -> int:
    from apps_registry.selectors import app_compiled

    compiled = app_compiled(app_id=app_id)
    return compiled.runtime.session_idle_seconds or settings.DIGITORN_SESSION_IDLE_SECONDS


def _check_runnable(app_id: str) -> None:
    """background and pipeline apps compile but do not run here yet: a clear 400, not a stuck turn."""
    from apps_registry.selectors import app_compiled

    mode = app_compiled(app_id=app_id).mode
    if mode in ("background", "pipeline"):
        raise ValidationError(
            f"App '{app_id}' runs in '{mode}' mode, which this daemon does not run yet; "
            "deploy it with runtime.mode: conversation or one_shot."
        )


def _is_expired(session: Session, idle_seconds: int, now: datetime) -> bool:
    if session.last_active >= now - timedelta(seconds=idle_seconds):
        return False
    # A turn still running or waiting for a human keeps its session alive.
    return not session.turns.filter(status__in=ACTIVE).exists()


def _not_found(app_id: str, session_id: str) -> NotFoundError:
    return NotFoundError(
        f"Session '{session_id}' of app '{app_id}' does not exist (it may have expired after inactivity or been deleted)."
    )


def _session_lookup(app_id: str, session_id: str, principal: str) -> Session | None:
    session = fastsql.session_find(app_id, principal, session_id)
    if session is None and principal == ADMIN_PRINCIPAL:
        # The admin reaches anyone's session by its id when it has none of that id itself (the most
        # recently active one should several principals use the id).
        session = fastsql.session_find_latest(app_id, session_id)
    return session


def session_resolve(*, app_id: str, session_id: str, principal: str, create: bool = False) -> Session:
    """The caller's session, created on first use when ``create``; purges it when idle too long.

    Session ids are scoped to their owner: the same id used by another principal is another session,
    so no principal can block (squat) or see someone else's. The admin also reaches others' sessions.
    """
    idle = idle_seconds_for(app_id)
    now = timezone.now()
    session = _session_lookup(app_id, session_id, principal)
    if session is not None and _is_expired(session, idle, now):
        # Committed before any 404 below: an expired session is purged either way.
        with transaction.atomic():
            Session.objects.filter(pk=session.pk, last_active__lt=now - timedelta(seconds=idle)).delete()
        session = None
    if session is None and not create:
        raise _not_found(app_id, session_id)
    if session is None:
        # Only a creation opens a transaction: on SQLite every one takes the write lock.
        with transaction.atomic():
            try:
                with transaction.atomic():
                    session = Session.objects.create(app_id=app_id, session_id=session_id, principal=principal)
            except IntegrityError:
                # Another worker created it between our read and write (PostgreSQL only; SQLite's
                # IMMEDIATE transactions serialise the two).
                session = Session.objects.get(app_id=app_id, principal=principal, session_id=session_id)
    return session


def sessions_purge_expired(*, app_id: str) -> int:
    """Delete the app's sessions idle for longer than its idle timeout; returns how many."""
    idle = idle_seconds_for(app_id)
    cutoff = timezone.now() - timedelta(seconds=idle)
    with transaction.atomic():
        # A delegated run's session goes with its root, which stays while any of its runs is active.
        stale = (
            Session.objects.filter(app_id=app_id, last_active__lt=cutoff, parent__isnull=True)
            .exclude(turns__status__in=ACTIVE)
            .exclude(delegations__turns__status__in=ACTIVE)
        )
        count, _ = Session.objects.filter(pk__in=list(stale.values_list("pk", flat=True))).delete()
    return count


def session_delete(*, app_id: str, session_id: str, principal: str) -> None:
    """Delete the session with its transcript, turns and events, and cancel its pending approvals."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    with transaction.atomic():
        Session.objects.filter(pk=session.pk).delete()
    _approvals_cancel(app_id=app_id, session_id=session_id, principal=session.principal)


def sessions_purge_app(*, app_id: str) -> int:
    """An undeployed app loses its sessions; loops still running notice the session is gone and stop."""
    with transaction.atomic():
        Turn.objects.filter(session__app_id=app_id, status__in=ACTIVE).update(cancel_requested=True)
        count, _ = Session.objects.filter(app_id=app_id).delete()
    # Its pending approvals are cancelled by the approvals app's own undeploy receiver.
    return count


def _approvals_cancel(*, app_id: str, session_id: str | None, principal: str | None = None) -> None:
    try:
        from approvals.services import approvals_cancel
    except ImportError:  # the approvals part is not installed yet
        return
    # The owner's requests only: another principal's session of the same id is another session.
    approvals_cancel(app_id=app_id, session_id=session_id, principal=principal)


# --- the queue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    session_pk: int
    session_id: str
    correlation_id: str
    position: int  # turns ahead of this one (0: it runs now)
    queue_depth: int  # turns waiting to start, this one included
    after_seq: int  # last event seq before this turn's first event

    def payload(self) -> dict:
        return {"correlation_id": self.correlation_id, "position": self.position, "queue_depth": self.queue_depth}


def _validate_message(message: Any, field_name: str = "message") -> str:
    if not isinstance(message, str) or not message.strip():
        raise ValidationError(f"{field_name}: a non-empty string is required.")
    size = len(message.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise ValidationError(f"{field_name}: at most {MAX_MESSAGE_BYTES} bytes of UTF-8 (got {size}).")
    return message


def message_enqueue(
    *,
    app_id: str,
    session_id: str,
    principal: str,
    message: str,
    kind: str = Turn.Kind.MESSAGE,
    field_name: str = "message",
) -> Enqueued:
    """Queue a turn in the session (FIFO, serial); 429 QUEUE_FULL beyond DIGITORN_QUEUE_DEPTH waiting."""
    if kind == Turn.Kind.MESSAGE:
        message = _validate_message(message, field_name)
        _check_runnable(app_id)
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal, create=True)
    with transaction.atomic():
        # One statement locks the row (PostgreSQL; SQLite holds the write lock already), marks the
        # session active and reads the seq this turn's events will follow.
        last_seq = fastsql.session_touch(session.pk, timezone.now())
        if last_seq is None:
            raise _not_found(app_id, session_id)
        session.last_seq = last_seq
        waiting, ahead = fastsql.turn_queue_counts(session.pk, queued=Turn.Status.QUEUED, active=ACTIVE)
        if waiting >= settings.DIGITORN_QUEUE_DEPTH:
            raise QueueFullError(
                f"Session '{session_id}' already has {waiting} messages waiting (the limit is "
                f"{settings.DIGITORN_QUEUE_DEPTH}); wait for the running turn to finish or cancel it."
            )
        turn = fastsql.insert(Turn(
            session=session, correlation_id=uuid.uuid4().hex, kind=kind, content=message, status=Turn.Status.QUEUED
        ))
        after_seq = session.last_seq
        enqueued = Enqueued(
            session_pk=session.pk,
            session_id=session.session_id,
            correlation_id=turn.correlation_id,
            position=ahead,
            queue_depth=waiting + 1,
            after_seq=after_seq,
        )
        if ahead:
            event_append(
                session=session, type="message_queued", data=enqueued.payload(), correlation_id=turn.correlation_id
            )
    return enqueued


def session_cancel(*, app_id: str, session_id: str, principal: str) -> dict:
    """Stop the session's current turn at its next step boundary; a suspended or not-yet-started
    turn is finished right here. Its pending approvals are cancelled."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    with transaction.atomic():
        _lock_session(session.pk)
        head = session.turns.select_for_update(no_key=True).filter(status__in=ACTIVE).order_by("id").first()
        # Delegated runs of the session stop too (a run whose parent turn ends cancelled would be
        # stopped by it anyway; this also reaches runs spawned by an earlier, finished turn).
        runs = list(
            Turn.objects.filter(session__parent=session, status__in=ACTIVE).values_list("pk", "session_id")
        )
        _cancel_runs_on_commit(runs)
        if head is None:
            if runs:
                return {"cancelled": True, "correlation_id": None, "status": "cancelling"}
            return {"cancelled": False, "correlation_id": None, "status": "idle"}
        head.cancel_requested = True
        head.save(update_fields=["cancel_requested"])
        finished_now = head.status != Turn.Status.RUNNING or head.lease_expired()
        if finished_now:
            turn_finish_and_peek(turn_pk=head.pk, content="Cancelled by the user.", cancelled=True)
    _approvals_cancel(app_id=app_id, session_id=session_id, principal=session.principal)
    return {
        "cancelled": True,
        "correlation_id": head.correlation_id,
        "status": "cancelled" if finished_now else "cancelling",
    }


# --- turn state (called by the engine) --------------------------------------------------------


@dataclass
class ClaimedTurn:
    turn_pk: int
    session_pk: int
    app_id: str
    session_id: str
    principal: str
    correlation_id: str
    kind: str
    agent_id: str
    turns_used: int
    tool_calls_count: int
    cancel_requested: bool
    state: dict = field(default_factory=dict)
    depth: int = 0  # delegation depth: 0 for a turn a client queued


def _lease_until() -> datetime:
    return timezone.now() + timedelta(seconds=settings.DIGITORN_LEASE_SECONDS)


def _notification_text(summaries: list[dict]) -> str:
    lines = ["Background task notifications (these tasks finished since you last heard of them):"]
    for s in summaries:
        # tool/result: summaries recorded before the event took the original's shape.
        body = s.get("result_preview", s.get("result")) if s.get("status") == "completed" else s.get("error")
        lines.append(
            f"- task {s.get('task_id')} ({s.get('tool_name') or s.get('tool')}) {s.get('status')}: "
            f"{(body if isinstance(body, str) else json.dumps(body, default=str))[:2000]}"
        )
    return "\n".join(lines)


def turn_claim(*, session_pk: int, worker: str) -> ClaimedTurn | None:
    """Lease the head of the session's queue, or None when there is nothing this worker may run.

    A turn is claimable when it is queued, running under an expired lease (its worker died), or
    suspended for approval with every decision in. Starting a turn writes its opening messages.
    """
    with transaction.atomic():
        # The session row first (the one lock order, see _lock_session), then the head of its queue.
        session = fastsql.session_get(session_pk, lock=True)
        if session is None:
            return None
        head = fastsql.turn_head(session_pk, ACTIVE, lock=True)
        now = timezone.now()
        if head is None:
            if session.status != Session.Status.IDLE:
                Session.objects.filter(pk=session.pk).update(status=Session.Status.IDLE)
            return None
        if head.status == Turn.Status.RUNNING and not head.lease_expired(now) and head.lease_owner != worker:
            return None
        if head.parent_turn_id and not head.cancel_requested and parent_ended_badly(head.parent_turn_id):
            # Its parent was cancelled (or failed) and the cancel did not reach it (a crash in between).
            head.cancel_requested = True
            fastsql.update(head, ["cancel_requested"])
        if head.status == Turn.Status.WAITING_APPROVAL and not head.cancel_requested:
            decisions = head.state.get("decisions", {})
            if any(rid not in decisions for rid in head.state.get("pending", {}).values()):
                return None
            if not waits_ready(head.state.get("waits")):
                return None
        state = dict(head.state or {})
        if not state.get("started"):
            state["started"] = True
            # `status {phase: thinking}`: the turn is under way (in the claim's transaction). A resumed
            # turn says it again before its next model call (engine), after the results it records.
            event_append(session=session, type="status", data=status_data(THINKING, head.correlation_id),
                         correlation_id=head.correlation_id)
            pending = fastsql.notifications_undelivered(session_pk)
            if pending:
                fastsql.insert(Message(
                    session=session,
                    role=Message.Role.SYSTEM,
                    content=_notification_text([n.summary for n in pending]),
                    correlation_id=head.correlation_id,
                ))
                Notification.objects.filter(pk__in=[n.pk for n in pending]).update(delivered_at=now)
            if head.kind == Turn.Kind.NOTIFICATION:
                summaries = json.loads(head.content or "[]")
                fastsql.insert(Message(
                    session=session,
                    role=Message.Role.USER,
                    content=_notification_text(summaries)
                    + "\nReport these results to the user and take any follow-up they call for.",
                    correlation_id=head.correlation_id,
                ))
            else:
                fastsql.insert(Message(
                    session=session, role=Message.Role.USER, content=head.content, correlation_id=head.correlation_id
                ))
        head.state = state
        head.status = Turn.Status.RUNNING
        head.lease_owner = worker
        head.lease_expires_at = _lease_until()
        head.attempts += 1
        head.started_at = head.started_at or now
        fastsql.update(head, ["state", "status", "lease_owner", "lease_expires_at", "attempts", "started_at"])
        fastsql.session_mark(session_pk, status=Session.Status.RUNNING, last_active=now)
        return ClaimedTurn(
            turn_pk=head.pk,
            session_pk=session.pk,
            app_id=session.app_id,
            session_id=session.session_id,
            principal=session.principal,
            correlation_id=head.correlation_id,
            kind=head.kind,
            agent_id=head.agent_id,
            turns_used=head.turns_used,
            tool_calls_count=head.tool_calls_count,
            cancel_requested=head.cancel_requested,
            state=state,
            depth=head.depth,
        )


def turn_heartbeat(*, turn_pk: int, worker: str) -> bool | None:
    """Renew the lease; returns cancel_requested, or None when the turn is gone or no longer ours."""
    with transaction.atomic():
        row = fastsql.turn_lease(turn_pk)
        if row is None or row[0] != Turn.Status.RUNNING or row[1] != worker:
            return None
        fastsql.turn_lease_renew(turn_pk, _lease_until())
        return bool(row[2])


def _lock_session(session_pk: int) -> None:
    """Lock a session row before any of its turns or notifications.

    One order everywhere (session, then its turns) keeps concurrent transactions on one session from
    deadlocking on PostgreSQL, and NO KEY UPDATE does not conflict with the KEY SHARE locks that
    inserting a Message, Event or Turn row takes on the session it references.
    """
    fastsql.session_get(session_pk, lock=True)


def _turn_session_pk(turn_pk: int) -> int | None:
    return fastsql.turn_session_pk(turn_pk)


def _lock_turn(turn_pk: int) -> Turn | None:
    """The turn with its session, both locked (session first: see _lock_session)."""
    session_pk = _turn_session_pk(turn_pk)
    if session_pk is None:
        return None
    session = fastsql.session_get(session_pk, lock=True)
    turn = fastsql.turn_get(turn_pk, lock=True)
    if session is None or turn is None:
        return None
    turn.session = session
    return turn


def _locked_turn(turn_pk: int) -> Turn:
    turn = _lock_turn(turn_pk)
    if turn is None:
        raise Turn.DoesNotExist(f"turn {turn_pk} is gone")
    return turn


def turn_record_reply(
    *, turn_pk: int, text: str, tool_calls: list[dict], usage: dict | None = None, sealed: dict | None = None
) -> Message:
    """The model's reply that asks for tools: the assistant message (each call's `tool_start` is
    emitted right before it runs, see turn_tool_start).

    ``tool_calls`` and ``text`` arrive masked (no secret value in the transcript or the events);
    ``sealed`` maps a call id to its parameters in sealed form (``tooling.services.seal_secrets``)
    for the calls whose parameters held a secret: a resumed turn unseals them to run the call.
    Returns the message so the engine can extend its in-memory transcript instead of re-reading it.
    """
    with transaction.atomic():
        session_pk = _turn_session_pk(turn_pk)
        if session_pk is None:
            raise Turn.DoesNotExist(f"turn {turn_pk} is gone")
        _lock_session(session_pk)  # before the turn row: the one lock order (see _lock_session)
        # One statement counts the call, renews the lease, locks the row and reads what the
        # message and events need (a SELECT and a save before).
        row = fastsql.turn_count_reply(turn_pk, tool_calls=len(tool_calls), lease_until=_lease_until())
        if row is None:
            raise Turn.DoesNotExist(f"turn {turn_pk} is gone")
        correlation_id, session_pk = row
        if sealed:
            turn = Turn.objects.select_for_update(no_key=True).only("state").get(pk=turn_pk)
            # Only the latest reply's calls can still be unanswered: older entries are dropped.
            Turn.objects.filter(pk=turn_pk).update(state={**(turn.state or {}), "sealed": sealed})
        session = Session(pk=session_pk)
        message = fastsql.insert(Message(
            session=session,
            role=Message.Role.ASSISTANT,
            content=text or "",
            tool_calls=tool_calls,
            correlation_id=correlation_id,
        ))
    return message


def turn_tool_start(*, turn_pk: int, calls: list[dict], before: list[tuple[str, dict]] | None = None) -> None:
    """`tool_start` ``{id, name, params}`` for calls about to run, committed before they do; ``before``:
    carried progress events (the reply's `stream_done`, `status {tool}`) appended first, in one batch."""
    with transaction.atomic():
        row = fastsql.turn_link(turn_pk)
        if row is None:
            raise Turn.DoesNotExist(f"turn {turn_pk} is gone")
        correlation_id, session_pk = row
        session = Session(pk=session_pk)
        starts = [("tool_start", {"id": call["id"], "name": call["name"], "params": call.get("params") or {}})
                  for call in calls]
        append_carried(session=session, events=[*(before or ()), *starts], correlation_id=correlation_id)


# A `tool_call` event previews the tool's data; the full result is the tool message (history).
RESULT_PREVIEW_CHARS = 4000


def _result_preview(data: Any) -> Any:
    text = json.dumps(data, default=str)
    if len(text) <= RESULT_PREVIEW_CHARS:
        return data
    return text[:RESULT_PREVIEW_CHARS] + f"… ({len(text)} chars)"


def tool_call_data(*, call_id: str, name: str, params: dict | None, result: dict) -> dict:
    """The `tool_call` event's payload: ``{id, name, params, success, error, result}`` (error "" on success)."""
    return {
        "id": call_id,
        "name": name,
        "params": params or {},
        "success": bool(result.get("success")),
        "error": result.get("error") or "",
        "result": _result_preview(result.get("data")),
    }


def turn_record_result(*, turn_pk: int, call_id: str, name: str, result: dict, params: dict | None = None) -> Message:
    """One tool result: the tool message for the model and the `tool_call` event for streams."""
    content = json.dumps(result, default=str)  # outside the transaction: it holds the write lock
    with transaction.atomic():
        row = fastsql.turn_link(turn_pk)
        if row is None:
            raise Turn.DoesNotExist(f"turn {turn_pk} is gone")
        correlation_id, session_pk = row
        session = Session(pk=session_pk)
        message = fastsql.insert(Message(
            session=session,
            role=Message.Role.TOOL,
            content=content,
            tool_call_id=call_id,
            name=name,
            correlation_id=correlation_id,
        ))
        event_append(
            session=session,
            type="tool_call",
            data=tool_call_data(call_id=call_id, name=name, params=params, result=result),
            correlation_id=correlation_id,
        )
        if name.startswith("memory.") and result.get("success"):
            # The original's clients refresh their goal / task / fact panels on `memory_update`.
            event_append(
                session=session,
                type="memory_update",
                data={"action": name.split(".", 1)[1], "tool": name, "id": call_id, "params": params or {}},
                correlation_id=correlation_id,
            )
    return message


def turn_calls_started(*, turn_pk: int, call_ids: list[str]) -> None:
    """Record, committed before they run, that these calls (tools with side effects) are starting.

    A worker killed mid-call leaves the mark without a result: the turn's recovery then answers the
    call "interrupted" instead of running it a second time (see ``engine._TurnRunner._run_calls``).
    """
    if not call_ids:
        return
    with transaction.atomic():
        turn = _locked_turn(turn_pk)
        state = dict(turn.state or {})
        state["started_calls"] = {**state.get("started_calls", {}), **{cid: timezone.now().timestamp() for cid in call_ids}}
        turn.state = state
        turn.save(update_fields=["state"])


def turn_record_pending(*, turn_pk: int, call_id: str, name: str, params: dict, request_id: str) -> None:
    """A call that needs a human: remember which request answers it and tell the streams."""
    with transaction.atomic():
        turn = _locked_turn(turn_pk)
        state = dict(turn.state or {})
        # It only created an approval request: it did not run, and runs once decided.
        if call_id in state.get("started_calls", {}):
            state["started_calls"] = {k: v for k, v in state["started_calls"].items() if k != call_id}
        state.setdefault("pending", {})[call_id] = request_id
        turn.state = state
        turn.save(update_fields=["state"])
        try:
            from approvals.selectors import approval_get

            request = approval_get(request_id=request_id)
        except ImportError:
            request = None
        data = approval_request_data(request) if request is not None else {
            "request_id": request_id, "session_id": turn.session.session_id, "agent_id": turn.agent_id,
            "user_id": turn.session.principal, "app_id": turn.session.app_id, "tool_name": name,
            "tool_params": params, "risk_level": "medium", "description": "", "created_at": time.time(),
            "expires_at": None,
        }
        data["call_id"] = call_id  # additive: the tool_start this request holds back
        event_append(session=turn.session, type="approval_request", data=data, correlation_id=turn.correlation_id)


def approval_request_data(request: Any) -> dict:
    """The `approval_request` event's payload, the original's ``ApprovalRequest.to_dict()`` (times in
    epoch seconds; ``tool_params`` are the masked params people see)."""
    return {
        "request_id": request.request_id,
        "session_id": request.session_id,
        "agent_id": request.agent_id,
        "user_id": request.principal,
        "app_id": request.app_id,
        "tool_name": request.tool_name,
        "tool_params": request.params,
        "risk_level": request.risk_level,
        "description": request.reason,
        "created_at": request.created_at.timestamp(),
        "expires_at": request.expires_at.timestamp() if request.expires_at else None,
    }


def turn_suspend(*, turn_pk: int, worker: str, active_seconds: float, usage: dict | None = None) -> bool:
    """Park the turn until its approvals are decided, releasing the lease (no worker is held).

    Returns False when every pending request was decided in the meantime: the caller goes on.
    """
    with transaction.atomic():
        turn = _locked_turn(turn_pk)
        state = dict(turn.state or {})
        decisions = state.get("decisions", {})
        undecided = [rid for rid in state.get("pending", {}).values() if rid not in decisions]
        if not undecided and waits_ready(state.get("waits")) and not turn.cancel_requested:
            return False
        state["active_seconds"] = active_seconds
        if usage is not None:
            state["usage"] = usage  # the tokens spent so far; the `result` event adds them up
        turn.state = state
        turn.status = Turn.Status.WAITING_APPROVAL
        turn.lease_owner = ""
        turn.lease_expires_at = None
        turn.save(update_fields=["state", "status", "lease_owner", "lease_expires_at"])
        # Waiting only for delegated runs is work going on, not a human's decision.
        status = Session.Status.WAITING_APPROVAL if undecided else Session.Status.RUNNING
        Session.objects.filter(pk=turn.session_id).update(status=status)
        return True


def _advance_on_commit(session_pks: list[int]) -> None:
    """Run these sessions' queues once the current transaction commits."""
    if not session_pks:
        return

    def advance() -> None:
        from conversations.engine import schedule_advance

        for pk in dict.fromkeys(session_pks):
            schedule_advance(pk)

    transaction.on_commit(advance)


def _cancel_runs_on_commit(runs: list[tuple[int, int]]) -> None:
    """Flag these delegated runs ``(turn pk, session pk)`` cancelled and advance them, after the
    commit: a transaction holding a parent session's lock must not wait for a run's turn row,
    which a run's own transaction holds while it waits for the parent session (its events go there)."""
    if not runs:
        return

    def cancel() -> None:
        Turn.objects.filter(pk__in=[pk for pk, _ in runs], status__in=ACTIVE).update(cancel_requested=True)
        from conversations.engine import schedule_advance

        for pk in dict.fromkeys(spk for _, spk in runs):
            schedule_advance(pk)

    transaction.on_commit(cancel)


def turn_record_wait(*, turn_pk: int, call_id: str, wait: dict) -> None:
    """A call waiting for delegated runs: the turn suspends until they end (``delegation.waits_ready``)."""
    with transaction.atomic():
        turn = _locked_turn(turn_pk)
        state = dict(turn.state or {})
        state["waits"] = {**state.get("waits", {}), call_id: wait}
        turn.state = state
        turn.save(update_fields=["state"])


def turn_record_wait_result(*, turn_pk: int, call_id: str, name: str, result: dict, params: dict | None) -> Message:
    """The answer of a call that waited for delegated runs: its tool message, and the wait gone."""
    with transaction.atomic():
        turn = _locked_turn(turn_pk)
        state = dict(turn.state or {})
        state["waits"] = {k: v for k, v in state.get("waits", {}).items() if k != call_id}
        turn.state = state
        turn.save(update_fields=["state"])
        return turn_record_result(turn_pk=turn_pk, call_id=call_id, name=name, result=result, params=params)


def turn_save_state(*, turn_pk: int, **changes: Any) -> dict:
    with transaction.atomic():
        turn = _locked_turn(turn_pk)
        state = dict(turn.state or {})
        state.update(changes)
        turn.state = state
        turn.save(update_fields=["state"])
        return state


def turn_compacted(*, turn_pk: int, upto: int, data: dict) -> None:
    """The context was compacted up to message ``upto``: remember it and emit the `hook` event."""
    with transaction.atomic():
        turn = _locked_turn(turn_pk)
        turn.state = {**(turn.state or {}), "compacted_upto": upto}
        turn.save(update_fields=["state"])
        event_append(session=turn.session, type="hook", data=data, correlation_id=turn.correlation_id)


def turn_emit(*, turn_pk: int, type: str, data: dict, before: list[tuple[str, dict]] | None = None) -> None:
    """An event that reports no state change of its own (error, hook, token); ``before``: carried
    events (``turn_events.Carry``) appended first, in the same transaction."""
    with transaction.atomic():
        turn = Turn.objects.select_related("session").filter(pk=turn_pk).first()
        if turn is None:
            return
        append_carried(session=turn.session, events=[*(before or ()), (type, data)], correlation_id=turn.correlation_id)


def turn_finish_and_peek(
    *,
    turn_pk: int,
    content: str,
    truncated: bool = False,
    cancelled: bool = False,
    failed: bool = False,
    record_message: bool = True,
    model_calls: int = 0,
    unanswered: list[dict] | None = None,
    usage: dict | None = None,
    error: str | None = None,
    events: list[tuple[str, dict]] | None = None,
) -> tuple[dict | None, bool]:
    """End the turn: final assistant message, `notification_result` (notification turns) and the
    turn's one `result` event, the last of the turn; returns the `result` payload (None when the
    turn had already ended) and whether the session has more work queued (the engine then claims
    it; without any, it skips that claim transaction).

    Tool calls left without a result (cancel, truncation) get one saying so, because chat APIs
    refuse a transcript whose tool calls are unanswered; streams get their `tool_call`.

    ``unanswered``: the calls of the turn's last reply still without a result, when the caller knows
    them (the engine's transcript); None makes this read them from the database.
    """
    with transaction.atomic():
        turn = _lock_turn(turn_pk)
        if turn is None or turn.status in (Turn.Status.DONE, Turn.Status.FAILED, Turn.Status.CANCELLED):
            return None, False
        session = turn.session
        now = timezone.now()
        if unanswered is None:
            unanswered = []
            last_calls = (
                Message.objects.filter(session=session, correlation_id=turn.correlation_id, role=Message.Role.ASSISTANT)
                .exclude(tool_calls__isnull=True)
                .order_by("-id")
                .first()
            )
            if last_calls and last_calls.tool_calls:
                answered = set(
                    Message.objects.filter(
                        session=session, role=Message.Role.TOOL, correlation_id=turn.correlation_id
                    ).values_list("tool_call_id", flat=True)
                )
                unanswered = [call for call in last_calls.tool_calls if call.get("id") not in answered]
        reason = "cancelled" if cancelled else "not run: the turn ended first"
        for call in unanswered:
            outcome = {"success": False, "data": None, "error": reason}
            fastsql.insert(Message(
                session=session,
                role=Message.Role.TOOL,
                content=json.dumps(outcome),
                tool_call_id=call.get("id", ""),
                name=call.get("name", ""),
                correlation_id=turn.correlation_id,
            ))
            event_append(
                session=session,
                type="tool_call",
                data=tool_call_data(call_id=call.get("id", ""), name=call.get("name", ""), params=call.get("params"),
                                    result=outcome),
                correlation_id=turn.correlation_id,
            )
        if record_message and content:
            fastsql.insert(Message(
                session=session, role=Message.Role.ASSISTANT, content=content, correlation_id=turn.correlation_id
            ))
        turn.turns_used += model_calls
        usage = usage or (turn.state or {}).get("usage") or {}
        payload = {
            "content": content,
            "session_id": session.session_id,
            "usage": {
                "input_tokens": int(usage.get("input_tokens") or 0),
                "output_tokens": int(usage.get("output_tokens") or 0),
                "total_tokens": int(usage.get("total_tokens") or 0),
            },
            "tool_calls_count": turn.tool_calls_count,
            "turns_used": turn.turns_used,
            "error": error or None,
            "correlation_id": turn.correlation_id,
            "truncated": truncated,
            "cancelled": cancelled,
        }
        turn.result = payload
        turn.status = (
            Turn.Status.CANCELLED if cancelled else Turn.Status.FAILED if failed else Turn.Status.DONE
        )
        turn.finished_at = now
        turn.lease_owner = ""
        turn.lease_expires_at = None
        fastsql.update(turn, ["result", "status", "finished_at", "lease_owner", "lease_expires_at", "turns_used"])
        # The last model call's in/out_token and stream_done, `status {phase: done}`, turn_end hooks.
        append_carried(session=session, events=events, correlation_id=turn.correlation_id)
        if turn.kind == Turn.Kind.NOTIFICATION:
            event_append(session=session, type="notification_result", data=payload, correlation_id=turn.correlation_id)
        # A delegated run ends with `agent_result` on its parent's stream: that stream's `result` stays
        # the end of the turn its client is waiting for.
        end_type = "agent_result" if session.parent_id else "result"
        if end_type == "agent_result":
            payload = {**payload, "status": "cancelled" if cancelled else "failed" if failed else "completed"}
            event_append(session=session, type="agent_event", correlation_id=turn.correlation_id,
                         data=agent_event_data(payload["status"], agent_id=turn.agent_id, task_id=turn.correlation_id))
        event_append(session=session, type=end_type, data=payload, correlation_id=turn.correlation_id)
        if cancelled or failed:
            # The runs this turn delegated stop with it (each cascades to its own).
            _cancel_runs_on_commit(active_runs(turn))
        if turn.parent_turn_id:
            # The turn that delegated this run may be waiting for it: let it look again.
            parent_session = _turn_session_pk(turn.parent_turn_id)
            if parent_session is not None:
                _advance_on_commit([parent_session])
        # Whether more work is queued and the session's new status, in one statement.
        settled = fastsql.session_settle(session.pk, turn_pk=turn.pk, now=now, active=ACTIVE,
                                         busy=Session.Status.RUNNING, idle=Session.Status.IDLE)
        more = settled == Session.Status.RUNNING
        return payload, more


def turns_recoverable() -> list[int]:
    """Sessions with work no live worker holds: expired leases, queued turns, decided approvals."""
    now = timezone.now()
    pks = (
        Turn.objects.filter(
            Q(status=Turn.Status.QUEUED)
            | Q(status=Turn.Status.RUNNING, lease_expires_at__lt=now)
            | Q(status=Turn.Status.RUNNING, lease_expires_at__isnull=True)
            | Q(status=Turn.Status.WAITING_APPROVAL, cancel_requested=True)
        )
        .values_list("session_id", flat=True)
        .distinct()
    )
    out = set(pks)
    for turn in Turn.objects.filter(status=Turn.Status.WAITING_APPROVAL).only("session_id", "state"):
        decisions = turn.state.get("decisions", {})
        if all(rid in decisions for rid in turn.state.get("pending", {}).values()) and waits_ready(
            turn.state.get("waits")
        ):
            out.add(turn.session_id)
    return sorted(out)


# --- approvals and notifications (signal receivers call these) -------------------------------


def approval_resolution_apply(
    *, request_id: str, app_id: str, session_id: str | None, approved: bool, message: str
) -> int | None:
    """Record a decision on the suspended turn and emit `approval_resolved`; returns the session pk
    to resume, or None when no turn of ours waits on this request."""
    if not session_id:
        return None
    status = "approved" if approved else "denied"
    owner = None
    try:
        from approvals.selectors import approval_get

        request = approval_get(request_id=request_id)
        if request is not None:
            status = request.status
            owner = request.principal
    except ImportError:
        pass
    with transaction.atomic():
        # The request's owner's session of that id (ids are per owner).
        sessions = Session.objects.filter(app_id=app_id, session_id=session_id)
        if owner:
            sessions = sessions.filter(principal=owner)
        session = sessions.first()
        if session is None:
            return None
        _lock_session(session.pk)
        for turn in session.turns.select_for_update(no_key=True).filter(status__in=ACTIVE).order_by("id"):
            state = dict(turn.state or {})
            if request_id not in state.get("pending", {}).values():
                continue
            decisions = dict(state.get("decisions", {}))
            if request_id in decisions:
                return None
            decisions[request_id] = {"approved": bool(approved), "message": message or "", "status": status}
            state["decisions"] = decisions
            turn.state = state
            turn.save(update_fields=["state"])
            event_append(
                session=session,
                type="approval_resolved",
                data={"request_id": request_id, "approved": bool(approved), "status": status, "message": message or ""},
                correlation_id=turn.correlation_id,
            )
            return session.pk
    return None


# The original's notification carries a result preview of at most this many characters.
NOTIFICATION_PREVIEW_CHARS = 2000


def _task_summary(task_id: str, status: str, session_id: str) -> dict:
    """The `notification` event's payload, the original's: ``{task_id, tool_name, status,
    elapsed_seconds, session_id, result_preview | error, hint}``."""
    from tooling.models import BackgroundTask

    task = BackgroundTask.objects.filter(task_id=task_id).first()
    summary: dict[str, Any] = {
        "task_id": task_id,
        "tool_name": task.tool if task is not None else "",
        "status": (task.status if task is not None else "") or status,
        "elapsed_seconds": None,
        "session_id": session_id,
    }
    if task is not None and task.started_at is not None:
        end = task.finished_at or timezone.now()
        summary["elapsed_seconds"] = round(max((end - task.started_at).total_seconds(), 0.0), 3)
    if summary["status"] == "completed":
        text = task.result if task is not None and isinstance(task.result, str) else json.dumps(
            task.result if task is not None else None, default=str)
        summary["result_preview"] = text[:NOTIFICATION_PREVIEW_CHARS]
        summary["hint"] = (
            f"Task {task_id} finished. The full result: background_status with task_id={task_id}"
            f" (GET /background-tasks/{task_id})."
        )
    else:
        summary["error"] = (task.error if task is not None else "") or summary["status"]
        summary["hint"] = f"Task {task_id} did not complete ({summary['status']}); launch it again if needed."
    return summary


def _task_may_notify(task_id: str, session: Session) -> bool:
    """A task reaches only its launcher's own sessions (tooling cannot see sessions at launch)."""
    from tooling.models import BackgroundTask

    principal = BackgroundTask.objects.filter(task_id=task_id).values_list("principal", flat=True).first()
    return principal is None or principal in (session.principal, ADMIN_PRINCIPAL)


def notification_record(*, task_id: str, app_id: str, session_id: str | None, status: str) -> Notification | None:
    """A finished background task of a session: a Notification row and a `notification` event."""
    if not session_id:
        return None
    from tooling.models import BackgroundTask

    owner = BackgroundTask.objects.filter(task_id=task_id).values_list("principal", flat=True).first()
    with transaction.atomic():
        # The launcher's session of that id (ids are per owner); an admin's task falls back to anyone's.
        session = _session_lookup(app_id, session_id, owner) if owner else None
        if session is None and owner in (None, ADMIN_PRINCIPAL):
            session = Session.objects.filter(app_id=app_id, session_id=session_id).order_by("-last_active").first()
        if session is None:
            return None
        if Notification.objects.filter(session=session, task_id=task_id).exists():
            return None  # a redelivered signal must not notify twice
        if not _task_may_notify(task_id, session):
            log.warning("task %s names session %s of another principal; not notified", task_id, session_id)
            return None
        summary = _task_summary(task_id, status, session_id)
        notification = Notification.objects.create(
            session=session, app_id=app_id, task_id=task_id, status=summary["status"], summary=summary
        )
        event_append(session=session, type="notification", data=summary)
    return notification


def notifications_drain(*, app_id: str, session_id: str, principal: str) -> tuple[Enqueued | None, list[dict]]:
    """Take the session's pending notifications and queue a notification turn over them."""
    if not isinstance(session_id, str) or not session_id:
        raise ValidationError("session_id: required (the session whose notifications to drain).")
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    with transaction.atomic():
        _lock_session(session.pk)
        pending = list(
            Notification.objects.select_for_update(no_key=True).filter(session=session, delivered_at__isnull=True).order_by("id")
        )
        if not pending:
            return None, []
        Notification.objects.filter(pk__in=[n.pk for n in pending]).update(delivered_at=timezone.now())
        summaries = [n.summary for n in pending]
        enqueued = message_enqueue(
            app_id=app_id,
            session_id=session_id,
            principal=principal,
            message=json.dumps(summaries, default=str),
            kind=Turn.Kind.NOTIFICATION,
        )
    return enqueued, summaries


def turn_result_wait_ready(*, correlation_id: str) -> dict | None:
    turn = Turn.objects.filter(correlation_id=correlation_id).only("result", "status").first()
    if turn is None:
        raise ConflictError("The turn disappeared (its session was deleted or its app undeployed).")
    return turn.result if turn.status not in ACTIVE else None


async def advance_session(*, session_pk: int) -> None:
    """Run the session's queue (the agent loop lives in ``conversations.engine``)."""
    from conversations.engine import advance_session as _advance

    await _advance(session_pk=session_pk)


def turns_recover() -> list[int]:
    """Resume every session with work no live worker holds (daemon start, periodic sweep)."""
    from conversations.engine import schedule_advance

    pks = turns_recoverable()
    for pk in pks:
        schedule_advance(pk)
    return pks


# --- retention (issue 14) ----------------------------------------------------------------------
#
# Without pruning a daemon that runs for months fills its disk: expired sessions stayed in the
# database until someone touched them, events were never deleted and the tool audit log only grew.
# One periodic task (``conversations.tasks.prune_retention``) bounds all three; every delete runs in
# small batches so the SQLite write lock is never held for long.

PRUNE_BATCH = 500


def _idle_seconds_or_default(app_id: str) -> int:
    try:
        return idle_seconds_for(app_id)
    except NotFoundError:  # the app is gone (its sessions should have gone with it)
        return settings.DIGITORN_SESSION_IDLE_SECONDS


def sessions_prune_expired(*, now: datetime | None = None, batch: int = PRUNE_BATCH) -> int:
    """Delete every app's sessions idle past their app's timeout (nothing running or waiting on a
    human), with their transcript, turns, events and notifications; returns how many."""
    now = now or timezone.now()
    total = 0
    for app_id in list(Session.objects.values_list("app_id", flat=True).distinct()):
        cutoff = now - timedelta(seconds=_idle_seconds_or_default(app_id))
        while True:
            with transaction.atomic():
                stale = list(
                    Session.objects.filter(app_id=app_id, last_active__lt=cutoff)
                    .exclude(turns__status__in=ACTIVE)
                    .values_list("pk", flat=True)[:batch]
                )
                if not stale:
                    break
                Session.objects.filter(pk__in=stale, last_active__lt=cutoff).delete()
            total += len(stale)
    return total


def _first_event_id_after(cutoff: datetime) -> int | None:
    """An id below which every event was created before ``cutoff`` and from which none was (None:
    every event is older).

    Events get ids in insertion order, so their ``created_at`` grows with the id: a binary search on
    the primary key finds the boundary without an index on ``created_at`` (~40 point reads).
    """
    from conversations.models import Event

    bounds = Event.objects.order_by().values_list("id", flat=True)
    low, high = bounds.order_by("id").first(), bounds.order_by("-id").first()
    if low is None:
        return None
    if Event.objects.filter(id=high, created_at__lt=cutoff).exists():
        return None
    while low < high:
        mid = (low + high) // 2
        probe = Event.objects.filter(id__gte=mid).order_by("id").values_list("id", "created_at").first()
        if probe is None or probe[1] >= cutoff:
            high = mid  # the boundary need not be an existing id: ids below it are all older
        else:
            low = probe[0] + 1
    return low


def events_prune_older_than(*, cutoff: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete events created before ``cutoff`` in sessions that are still alive; returns how many.
    A stream that asks to resume from a pruned seq gets a ``cursor_expired`` error first."""
    from conversations.models import Event

    boundary = _first_event_id_after(cutoff)
    total = 0
    while True:
        with transaction.atomic():
            rows = Event.objects.order_by("id")
            rows = rows.filter(id__lt=boundary) if boundary is not None else rows
            ids = list(rows.values_list("id", flat=True)[:batch])
            if not ids:
                break
            Event.objects.filter(id__in=ids).delete()
        total += len(ids)
    return total


def audit_prune_older_than(*, cutoff: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete tool-audit rows older than ``cutoff`` whose session no longer exists (deleted, expired,
    or a one-shot run's); returns how many. Rows of live sessions stay with them."""
    from django.db.models import Exists, OuterRef

    from tooling.models import ToolExecution

    live = Session.objects.filter(
        app_id=OuterRef("app_id"), principal=OuterRef("principal"), session_id=OuterRef("session_id")
    )
    total = 0
    for app_id in list(ToolExecution.objects.order_by().values_list("app_id", flat=True).distinct()):
        while True:
            with transaction.atomic():
                ids = list(
                    ToolExecution.objects.filter(app_id=app_id, created_at__lt=cutoff)
                    .exclude(Exists(live))
                    .order_by("id")
                    .values_list("id", flat=True)[:batch]
                )
                if not ids:
                    break
                ToolExecution.objects.filter(id__in=ids).delete()
            total += len(ids)
    return total


def retention_prune(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic pruning: expired sessions always; events and audit rows older than
    ``DIGITORN_RETENTION_DAYS`` (0 keeps them forever)."""
    now = now or timezone.now()
    counts = {"sessions": sessions_prune_expired(now=now), "events": 0, "tool_executions": 0}
    days = settings.DIGITORN_RETENTION_DAYS
    if days > 0:
        cutoff = now - timedelta(days=days)
        counts["events"] = events_prune_older_than(cutoff=cutoff)
        counts["tool_executions"] = audit_prune_older_than(cutoff=cutoff)
    if any(counts.values()):
        log.info("retention: pruned %s", counts)
    return counts
