"""A turn's state in the database: claim, heartbeat, record, suspend, finish, recover.

The runner (``runner.py``) calls these through ``sync_to_async``; each is synchronous and
transactional, and each event is appended in the same transaction as the state it reports
(``events.event_append``), so a stream never shows an event whose state was rolled back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from approvals.selectors import approval_get, approval_request_payload
from conversations.events import event_append
from conversations.models import Message, Notification, Session, Turn
from conversations.turn_events import THINKING, agent_event_data, append_carried, status_data
from conversations.turns.context import notification_text
from conversations.turns.wakeup import advance_on_commit, preclaim_holds, schedule_advance
from digitorn_site import fastsql
from digitorn_site.errors import ConflictError

ACTIVE = (Turn.Status.QUEUED, Turn.Status.RUNNING, Turn.Status.WAITING_APPROVAL)


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


def turn_claim(*, session_pk: int, worker: str) -> ClaimedTurn | None:
    """Lease the head of the session's queue, or None when there is nothing this worker may run.

    A turn is claimable when it is queued, running under an expired lease (its worker died), or
    suspended for approval with every decision in. Starting a turn writes its opening messages.
    """
    with transaction.atomic():
        # The session row first (the one lock order, see lock_session), then the head of its queue.
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
        if preclaim_holds(session_pk, head.pk):
            return None  # claimed by this process's enqueue, for the runner it is starting
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
            turn_open(session=session, turn=head, now=now)
        head.state = state
        head.status = Turn.Status.RUNNING
        head.lease_owner = worker
        head.lease_expires_at = _lease_until()
        head.attempts += 1
        head.started_at = head.started_at or now
        fastsql.update(head, ["state", "status", "lease_owner", "lease_expires_at", "attempts", "started_at"])
        fastsql.session_mark(session_pk, status=Session.Status.RUNNING, last_active=now)
        return _claimed(session, head)


def turn_open(*, session: Session, turn: Turn, now: datetime) -> None:
    """A turn's opening writes, the first time it is claimed, inside the claiming transaction:
    `status {phase: thinking}`, the session's undelivered notifications as a system message, and
    the turn's own message (its user message, or the notification summaries it reports)."""
    # `status {phase: thinking}`: the turn is under way (in the claim's transaction). A resumed turn
    # says it again before its next model call (engine), after the results it records.
    event_append(session=session, type="status", data=status_data(THINKING, turn.correlation_id),
                 correlation_id=turn.correlation_id)
    pending = fastsql.notifications_undelivered(session.pk)
    if pending:
        fastsql.insert(Message(
            session=session,
            role=Message.Role.SYSTEM,
            content=notification_text([n.summary for n in pending]),
            correlation_id=turn.correlation_id,
        ))
        Notification.objects.filter(pk__in=[n.pk for n in pending]).update(delivered_at=now)
    if turn.kind == Turn.Kind.NOTIFICATION:
        summaries = json.loads(turn.content or "[]")
        fastsql.insert(Message(
            session=session,
            role=Message.Role.USER,
            content=notification_text(summaries)
            + "\nReport these results to the user and take any follow-up they call for.",
            correlation_id=turn.correlation_id,
        ))
    else:
        fastsql.insert(Message(
            session=session, role=Message.Role.USER, content=turn.content, correlation_id=turn.correlation_id
        ))


def turn_claim_new(*, session: Session, turn: Turn, worker: str, now: datetime) -> ClaimedTurn:
    """Claim a turn as the enqueue inserts it, when nothing is ahead of it in its session (the
    caller checked, in this transaction): ``turn`` is the unsaved new row, written here already
    leased to ``worker`` and opened (turn_open), so the turn's first claim costs no transaction of
    its own. ``session`` carries the pk, app_id, session_id and principal (nothing re-read)."""
    turn.state = {"started": True}
    turn.status = Turn.Status.RUNNING
    turn.lease_owner = worker
    turn.lease_expires_at = _lease_until()
    turn.attempts = 1
    turn.started_at = now
    fastsql.insert(turn)
    turn_open(session=session, turn=turn, now=now)
    fastsql.session_mark(session.pk, status=Session.Status.RUNNING, last_active=now)
    return _claimed(session, turn)


def _claimed(session: Session, turn: Turn) -> ClaimedTurn:
    """What the runner needs of a turn it just claimed (both claims: turn_claim, turn_claim_new)."""
    return ClaimedTurn(
        turn_pk=turn.pk,
        session_pk=session.pk,
        app_id=session.app_id,
        session_id=session.session_id,
        principal=session.principal,
        correlation_id=turn.correlation_id,
        kind=turn.kind,
        agent_id=turn.agent_id,
        turns_used=turn.turns_used,
        tool_calls_count=turn.tool_calls_count,
        cancel_requested=turn.cancel_requested,
        state=dict(turn.state),
        depth=turn.depth,
    )


def turn_heartbeat(*, turn_pk: int, worker: str) -> bool | None:
    """Renew the lease; returns cancel_requested, or None when the turn is gone or no longer ours."""
    with transaction.atomic():
        row = fastsql.turn_lease(turn_pk)
        if row is None or row[0] != Turn.Status.RUNNING or row[1] != worker:
            return None
        fastsql.turn_lease_renew(turn_pk, _lease_until())
        return bool(row[2])


def lock_session(session_pk: int) -> None:
    """Lock a session row before any of its turns or notifications.

    One order everywhere (session, then its turns) keeps concurrent transactions on one session from
    deadlocking on PostgreSQL, and NO KEY UPDATE does not conflict with the KEY SHARE locks that
    inserting a Message, Event or Turn row takes on the session it references.
    """
    if connection.features.has_select_for_update:
        # SQLite has no row locks: its IMMEDIATE transaction holds the database's write lock already,
        # so the read would only cost a statement.
        fastsql.session_get(session_pk, lock=True)


def _turn_session_pk(turn_pk: int) -> int | None:
    return fastsql.turn_session_pk(turn_pk)


def _lock_turn(turn_pk: int, session_pk: int | None = None) -> Turn | None:
    """The turn with its session, both locked (session first: see lock_session); ``session_pk``:
    the turn's session when the caller knows it (a turn never changes session)."""
    session_pk = session_pk or _turn_session_pk(turn_pk)
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
    *, turn_pk: int, text: str, tool_calls: list[dict], usage: dict | None = None, sealed: dict | None = None,
    message: Message | None = None, session_pk: int | None = None,
) -> Message:
    """The model's reply that asks for tools: the assistant message (each call's `tool_start` is
    emitted right before it runs, see turn_tool_start).

    ``tool_calls`` and ``text`` arrive masked (no secret value in the transcript or the events);
    ``sealed`` maps a call id to its parameters in sealed form (``tooling.services.seal_secrets``)
    for the calls whose parameters held a secret: a resumed turn unseals them to run the call.
    Returns the message so the runner can extend its in-memory transcript instead of re-reading it;
    ``message``: the unsaved instance to write (the runner's transcript already holds it, it gets
    its pk here), with ``session_pk`` the turn's session (known to the runner: no read for it).
    Inside a caller's transaction it joins it (the runner writes it with the calls' tool_start).
    """
    with transaction.atomic(savepoint=False):
        session_pk = session_pk or _turn_session_pk(turn_pk)
        if session_pk is None:
            raise Turn.DoesNotExist(f"turn {turn_pk} is gone")
        lock_session(session_pk)  # before the turn row: the one lock order (see lock_session)
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
        if message is None:
            message = Message(role=Message.Role.ASSISTANT, content=text or "", tool_calls=tool_calls)
        message.session = session
        message.correlation_id = correlation_id
        fastsql.insert(message)
    return message


def _turn_link(turn_pk: int, link: tuple[str, int] | None = None) -> tuple[str, Session]:
    """The turn's correlation id and its session (a bare instance: only its pk is read); ``link``:
    ``(correlation_id, session pk)`` when the caller holds them (the runner's claim), read otherwise."""
    if link is not None:
        return link[0], Session(pk=link[1])
    row = fastsql.turn_link(turn_pk)
    if row is None:
        raise Turn.DoesNotExist(f"turn {turn_pk} is gone")
    correlation_id, session_pk = row
    return correlation_id, Session(pk=session_pk)


def turn_tool_start(
    *, turn_pk: int, calls: list[dict], before: list[tuple[str, dict]] | None = None,
    link: tuple[str, int] | None = None, prelude: Sequence[Callable[[], Any]] = (),
) -> None:
    """`tool_start` ``{id, name, params}`` for calls about to run, committed before they do; ``before``:
    carried progress events (the reply's `stream_done`, `status {tool}`) appended first, in one batch.
    ``prelude``: writes decided before (the reply asking for these calls, their started marks), made
    in this transaction first: all of them are committed before the calls run, or none is."""
    with transaction.atomic():
        for write in prelude:
            write()
        correlation_id, session = _turn_link(turn_pk, link)
        starts = [("tool_start", {"id": call["id"], "name": call["name"], "params": call.get("params") or {}})
                  for call in calls]
        try:
            append_carried(session=session, events=[*(before or ()), *starts], correlation_id=correlation_id)
        except Session.DoesNotExist as exc:  # the turn went with its session
            raise Turn.DoesNotExist(f"turn {turn_pk} is gone") from exc


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


def turn_record_result(
    *, turn_pk: int, call_id: str, name: str, result: dict, params: dict | None = None,
    link: tuple[str, int] | None = None, also: Callable[[], Any] | None = None,
) -> Message:
    """One tool result: the tool message for the model and the `tool_call` event for streams.
    ``also``: a write of the caller's made in the same transaction first (the call's audit outcome)."""
    content = json.dumps(result, default=str)  # outside the transaction: it holds the write lock
    events = [("tool_call", tool_call_data(call_id=call_id, name=name, params=params, result=result))]
    if name.startswith("memory.") and result.get("success"):
        # The original's clients refresh their goal / task / fact panels on `memory_update`.
        events.append(("memory_update",
                       {"action": name.split(".", 1)[1], "tool": name, "id": call_id, "params": params or {}}))
    with transaction.atomic():
        if also is not None:
            also()
        correlation_id, session = _turn_link(turn_pk, link)
        # The events first: their seq reservation is what finds a session deleted meanwhile.
        try:
            append_carried(session=session, events=events, correlation_id=correlation_id)
        except Session.DoesNotExist as exc:  # the turn went with its session
            raise Turn.DoesNotExist(f"turn {turn_pk} is gone") from exc
        message = fastsql.insert(Message(
            session=session,
            role=Message.Role.TOOL,
            content=content,
            tool_call_id=call_id,
            name=name,
            correlation_id=correlation_id,
        ))
    return message


def turn_calls_started(*, turn_pk: int, call_ids: list[str]) -> None:
    """Record, committed before they run, that these calls (tools with side effects) are starting.

    A worker killed mid-call leaves the mark without a result: the turn's recovery then answers the
    call "interrupted" instead of running it a second time (see ``runner.TurnRunner._run_calls``).
    """
    if not call_ids:
        return
    with transaction.atomic(savepoint=False):  # joins a caller's transaction (turn_tool_start's prelude)
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
        request = approval_get(request_id=request_id)
        data = approval_request_data(request) if request is not None else {
            "request_id": request_id, "session_id": turn.session.session_id, "agent_id": turn.agent_id,
            "user_id": turn.session.principal, "app_id": turn.session.app_id, "tool_name": name,
            "tool_params": params, "risk_level": "medium", "description": "", "created_at": time.time(),
            "expires_at": None,
        }
        data["call_id"] = call_id  # additive: the tool_start this request holds back
        event_append(session=turn.session, type="approval_request", data=data, correlation_id=turn.correlation_id)


def approval_request_data(request: Any) -> dict:
    """The `approval_request` event's payload: the approvals app's one shape for a request."""
    return approval_request_payload(request)


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


def cancel_runs_on_commit(runs: list[tuple[int, int]]) -> None:
    """Flag these delegated runs ``(turn pk, session pk)`` cancelled and advance them, after the
    commit: a transaction holding a parent session's lock must not wait for a run's turn row,
    which a run's own transaction holds while it waits for the parent session (its events go there)."""
    if not runs:
        return

    def cancel() -> None:
        Turn.objects.filter(pk__in=[pk for pk, _ in runs], status__in=ACTIVE).update(cancel_requested=True)
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
    session_pk: int | None = None,
) -> tuple[dict | None, bool]:
    """End the turn: final assistant message, `notification_result` (notification turns) and the
    turn's one `result` event, the last of the turn; returns the `result` payload (None when the
    turn had already ended) and whether the session has more work queued (the runner then claims
    it; without any, it skips that claim transaction).

    Tool calls left without a result (cancel, truncation) get one saying so, because chat APIs
    refuse a transcript whose tool calls are unanswered; streams get their `tool_call`.

    ``unanswered``: the calls of the turn's last reply still without a result, when the caller knows
    them (the runner's transcript); None makes this read them from the database.
    """
    with transaction.atomic():
        turn = _lock_turn(turn_pk, session_pk)
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
        # The last model call's in/out_token and stream_done, `status {phase: done}`, turn_end hooks,
        # then the end events: one seq reservation and one INSERT for them all.
        ending = list(events or ())
        if turn.kind == Turn.Kind.NOTIFICATION:
            ending.append(("notification_result", payload))
        # A delegated run ends with `agent_result` on its parent's stream: that stream's `result` stays
        # the end of the turn its client is waiting for.
        end_type = "agent_result" if session.parent_id else "result"
        if end_type == "agent_result":
            payload = {**payload, "status": "cancelled" if cancelled else "failed" if failed else "completed"}
            ending.append(("agent_event", agent_event_data(payload["status"], agent_id=turn.agent_id,
                                                           task_id=turn.correlation_id)))
        ending.append((end_type, payload))
        append_carried(session=session, events=ending, correlation_id=turn.correlation_id)
        if cancelled or failed:
            # The runs this turn delegated stop with it (each cascades to its own).
            cancel_runs_on_commit(active_runs(turn))
        if turn.parent_turn_id:
            # The turn that delegated this run may be waiting for it: let it look again.
            parent_session = _turn_session_pk(turn.parent_turn_id)
            if parent_session is not None:
                advance_on_commit([parent_session])
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


def approval_resolution_apply(
    *, request_id: str, app_id: str, session_id: str | None, approved: bool, message: str
) -> int | None:
    """Record a decision on the suspended turn and emit `approval_resolved`; returns the session pk
    to resume, or None when no turn of ours waits on this request."""
    if not session_id:
        return None
    status = "approved" if approved else "denied"
    owner = None
    request = approval_get(request_id=request_id)
    if request is not None:
        status = request.status
        owner = request.principal
    with transaction.atomic():
        # The request's owner's session of that id (ids are per owner).
        sessions = Session.objects.filter(app_id=app_id, session_id=session_id)
        if owner:
            sessions = sessions.filter(principal=owner)
        session = sessions.first()
        if session is None:
            return None
        lock_session(session.pk)
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


def turn_result_wait_ready(*, correlation_id: str) -> dict | None:
    turn = Turn.objects.filter(correlation_id=correlation_id).only("result", "status").first()
    if turn is None:
        raise ConflictError("The turn disappeared (its session was deleted or its app undeployed).")
    return turn.result if turn.status not in ACTIVE else None


# --- delegated runs (the turn state of a parent and its runs) ---------------------------------


def tasks_active(tasks: list[str]) -> set[str]:
    return set(Turn.objects.filter(correlation_id__in=tasks, status__in=ACTIVE).values_list("correlation_id", flat=True))


def waits_ready(waits: dict[str, Any] | None) -> bool:
    """Every wait of a suspended turn can be answered: its runs ended, or its deadline passed."""
    if not waits:
        return True
    now = time.time()
    pending = [t for w in waits.values() if not (w.get("deadline") and w["deadline"] <= now) for t in w.get("tasks", ())]
    return not pending or not tasks_active(pending)


def active_runs(turn: Turn) -> list[tuple[int, int]]:
    """The active runs this turn started, as ``(turn pk, session pk)`` (a plain read, no lock)."""
    return list(Turn.objects.filter(parent_turn_id=turn.pk, status__in=ACTIVE).values_list("pk", "session_id"))


def parent_ended_badly(parent_pk: int) -> bool:
    return Turn.objects.filter(pk=parent_pk, status__in=(Turn.Status.CANCELLED, Turn.Status.FAILED)).exists()


# --- the transcript a turn reads ---------------------------------------------------------------


class TranscriptRow:
    """A transcript row with the attributes the loop reads (``Message`` quacks the same way);
    building model instances cost more than the query for a long transcript."""

    __slots__ = ("pk", "role", "content", "tool_calls", "tool_call_id", "name", "correlation_id")
    FIELDS = ("pk", "role", "content", "tool_calls", "tool_call_id", "name", "correlation_id")

    def __init__(self, *values: Any):
        for attr, value in zip(self.FIELDS, values, strict=True):
            setattr(self, attr, value)


def transcript_load(session_pk: int, limit: int) -> list[Message]:
    """The latest ``limit`` messages, oldest first (older ones only ever fed the recap)."""
    # Raw (fastsql): read before every model call, where the ORM's compilation cost ~0.6 ms.
    rows = [
        TranscriptRow(*values)
        for values in fastsql.messages_tail(session_pk, ("id", *TranscriptRow.FIELDS[1:]), limit)
    ]
    rows.reverse()
    return rows
