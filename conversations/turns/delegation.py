"""Agent delegation: an agent of the app hands a task to another agent of the app.

A delegated run is a turn like any other (leases, recovery, approvals), in a session of its own
whose ``parent`` is the root session: its own transcript and queue, its events on the root's
stream tagged ``{agent_id, task_id, parent_id}`` (``events.event_append``). Its ``task_id`` is its
turn's correlation id. The tool module ``agent_spawn`` calls these functions; a call that must wait
for runs does not hold a thread: it leaves a wait in ``CURRENT`` and the runner suspends the turn
until the runs have ended (``turns.state.waits_ready``), then answers the call with ``wait_result``.

Limits: a run may delegate ``max_depth`` levels deep (default 3) and one turn may start at most
``max_children`` runs (default 5); a delegated agent may only delegate to its own ``delegate_to``
list (the entry agent with none may delegate to any other agent); an agent already in the chain
that led to the caller cannot be delegated to again (a cycle), whatever the lists say.
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from conversations.events import event_append
from conversations.models import Session, Turn
from conversations.turn_events import agent_event_data
from conversations.turns.state import ACTIVE, tasks_active, turn_finish_and_peek
from conversations.turns.wakeup import schedule_advance, start_task
from digitorn_site.principals import ADMIN_PRINCIPAL

DEFAULT_MAX_DEPTH = 3
DEFAULT_MAX_CHILDREN = 5
MAX_WAIT_SECONDS = 3600
TASK_PREVIEW_CHARS = 200
FINISHED_STATUS = {Turn.Status.DONE: "completed", Turn.Status.FAILED: "failed", Turn.Status.CANCELLED: "cancelled"}


class DelegationError(Exception):
    """A delegation the caller must correct (unknown agent, limit, cycle): the tool's error."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class DelegationCall:
    """The tool call of an agent turn being run (set by the runner around the call, in its thread)."""

    turn_pk: int
    call_id: str
    # Set by a blocking action: the runs to wait for {"tasks": [...], "form": "one"|"many", "deadline"}.
    wait: dict[str, Any] | None = None
    spawned: list[str] = field(default_factory=list)
    # The worker's event loop, where a started run is scheduled (a thread of run_parallel's pool
    # cannot find it by itself).
    loop: Any = None


CURRENT: ContextVar[DelegationCall | None] = ContextVar("digitorn_delegation_call", default=None)


def _limits(config: dict[str, Any]) -> tuple[int, int]:
    return int(config.get("max_depth") or DEFAULT_MAX_DEPTH), int(config.get("max_children") or DEFAULT_MAX_CHILDREN)


def _parent(call: DelegationCall | None) -> Turn | None:
    if call is None:
        return None
    return Turn.objects.select_related("session").filter(pk=call.turn_pk).first()


def _chain(turn: Turn | None) -> list[str]:
    """Agent ids from the root turn down to ``turn`` (the delegation chain that led to it)."""
    chain: list[str] = []
    seen: set[int] = set()
    while turn is not None and turn.pk not in seen:
        seen.add(turn.pk)
        chain.append(turn.agent_id)
        turn = turn.parent_turn
    return list(reversed(chain))


def _agent_ids(app: Any) -> list[str]:
    return [a.id for a in app.agents]


def _caller_agent(app: Any, parent: Turn | None, agent_id: str | None):
    name = (parent.agent_id if parent is not None else "") or agent_id or ""
    try:
        return app.agent(name or None)
    except KeyError:
        return app.agent()


def spawn(
    *,
    app: Any,
    principal: str,
    session_id: str | None,
    agent_id: str | None,
    target: str | None,
    task: str,
    description: str = "",
    config: dict[str, Any],
    index: int = 0,
) -> dict[str, Any]:
    """Start a delegated run of ``target`` on ``task``; returns its snapshot (status "running").

    From an agent turn (``CURRENT`` set) the run is that turn's child; its re-run after a crash
    finds the run it already started for the same call instead of starting another. From the API
    (no turn) the run gets a session of its own that the caller can follow like any other.
    """
    call = CURRENT.get()
    parent = _parent(call)
    if call is not None and parent is None:
        raise DelegationError("the calling turn is gone")
    max_depth, max_children = _limits(config)
    if parent is not None:
        existing = Turn.objects.filter(parent_turn=parent, parent_call_id=f"{call.call_id}#{index}").first()
        if existing is not None:
            call.spawned.append(existing.correlation_id)
            return snapshot(existing)
    if not app.agents:
        raise DelegationError("this app declares no agents")
    ids = _agent_ids(app)
    caller = _caller_agent(app, parent, agent_id) if (parent is not None or agent_id) else None
    if not target:
        choices = list(caller.delegate_to) if caller is not None and caller.delegate_to else [
            i for i in ids if caller is None or i != caller.id
        ]
        if len(choices) != 1:
            raise DelegationError(f"agent: name the agent to delegate to, one of: {', '.join(choices) or '(none)'}")
        target = choices[0]
    if target not in ids:
        raise DelegationError(f"agent: unknown agent {target!r}; the app's agents: {', '.join(ids)}")
    entry = app.agent().id
    chain = [a or entry for a in _chain(parent)]
    if caller is not None and (not chain or chain[-1] != caller.id):
        chain.append(caller.id)
    if target in chain:
        raise DelegationError(
            "delegation cycle: " + " -> ".join([*chain, target]) + f"; agent {target!r} is already working on this "
            "request further up the chain, answer with what you have instead"
        )
    depth = (parent.depth + 1) if parent is not None else 1
    if depth > max_depth:
        raise DelegationError(
            f"delegation depth limit reached: this run is {depth - 1} delegation(s) deep and the limit is "
            f"{max_depth} (tools.modules.agent_spawn.config.max_depth); do the task yourself"
        )
    if caller is not None:
        delegated = parent is not None and parent.depth > 0
        if caller.delegate_to and target not in caller.delegate_to:
            raise DelegationError(
                f"agent: {caller.id!r} may delegate only to its delegate_to list ({', '.join(caller.delegate_to)}), "
                f"not to {target!r}"
            )
        if not caller.delegate_to and delegated:
            raise DelegationError(
                f"agent: {caller.id!r} runs as a delegated agent and declares no delegate_to list, so it may not "
                "delegate further; do the task yourself"
            )
    task = task if isinstance(task, str) else ""
    if not task.strip():
        raise DelegationError("task: say what the agent should do (a self-contained instruction)")

    with transaction.atomic():
        if parent is not None:
            # The parent's session row first (the lock order of conversations.turns.state).
            Session.objects.select_for_update().filter(pk=parent.session_id).first()
            count = Turn.objects.filter(parent_turn=parent).count()
            if count >= max_children:
                raise DelegationError(
                    f"fan-out limit reached: this turn already started {count} delegated run(s) and the limit is "
                    f"{max_children} (tools.modules.agent_spawn.config.max_children)"
                )
            root = parent.session.parent or parent.session
            stream_correlation = (parent.session.delegation or {}).get("correlation_id") or parent.correlation_id
            parent_id = parent.correlation_id
        else:
            root = None
            stream_correlation = ""
            parent_id = ""
        task_id = f"agent_{uuid.uuid4().hex[:24]}"
        tags = {"agent_id": target, "task_id": task_id, "parent_id": parent_id, "correlation_id": stream_correlation}
        session = Session.objects.create(
            app_id=app.app_id,
            # Not reachable through the API's session routes ('~' is outside their id alphabet) when
            # it belongs to a parent; a run started from the API is a session of its own to follow.
            session_id=("~" if root is not None else "") + task_id,
            principal=parent.session.principal if parent is not None else principal,
            parent=root,
            delegation=tags if root is not None else None,
        )
        turn = Turn.objects.create(
            session=session,
            correlation_id=task_id,
            kind=Turn.Kind.MESSAGE,
            content=task,
            agent_id=target,
            parent_turn=parent,
            parent_call_id=f"{call.call_id}#{index}" if parent is not None else "",
            depth=depth,
            state={"description": description[:TASK_PREVIEW_CHARS] if isinstance(description, str) else ""},
        )
        event_append(
            session=session,
            type="agent_spawn",
            data={
                "task_id": task_id,
                "agent_id": target,
                "parent_agent": caller.id if caller is not None else None,
                "status": "spawned",
                "task": task[:TASK_PREVIEW_CHARS],
                "description": turn.state["description"],
                "depth": depth,
            },
            correlation_id=task_id,
        )
        event_append(session=session, type="agent_event", correlation_id=task_id,
                     data=agent_event_data("spawned", agent_id=target, task_id=task_id,
                                           parent_agent=caller.id if caller is not None else None, depth=depth))
        session_pk = session.pk
        loop = call.loop if call is not None else None
        transaction.on_commit(lambda: _schedule(session_pk, loop))
    if call is not None:
        call.spawned.append(task_id)
    out = snapshot(turn)
    if root is None:
        out["session_id"] = session.session_id
    return out


def _schedule(session_pk: int, loop: Any = None) -> None:
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(start_task, loop, session_pk)
        return
    schedule_advance(session_pk)


def snapshot(turn: Turn) -> dict[str, Any]:
    """What a caller learns of a run: ``{task_id, agent_id, status, content, error, …}``."""
    result = turn.result if isinstance(turn.result, dict) else {}
    status = FINISHED_STATUS.get(turn.status, "running")
    if turn.status == Turn.Status.WAITING_APPROVAL and (turn.state or {}).get("pending"):
        status = "waiting_approval"
    end = turn.finished_at or timezone.now()
    started = turn.started_at or turn.created_at
    out: dict[str, Any] = {
        "task_id": turn.correlation_id,
        "agent_id": turn.agent_id,
        "specialist": turn.agent_id,
        "status": status,
        "task": turn.content,
        "description": (turn.state or {}).get("description", ""),
        "depth": turn.depth,
        "parent_id": turn.parent_turn.correlation_id if turn.parent_turn_id and turn.parent_turn else None,
        "duration_seconds": round(max((end - started).total_seconds(), 0.0), 1) if started else 0.0,
        "turns_used": int(result.get("turns_used", turn.turns_used) or 0),
        "tool_calls_count": int(result.get("tool_calls_count", turn.tool_calls_count) or 0),
    }
    if turn.status not in ACTIVE:
        out["content"] = result.get("content", "")
        out["error"] = result.get("error") or (
            "cancelled" if turn.status == Turn.Status.CANCELLED else None
        )
        out["truncated"] = bool(result.get("truncated"))
        out["usage"] = result.get("usage") or {}
    return out


def _visible(turn: Turn, *, principal: str, session_id: str | None, app_id: str) -> bool:
    """A run is the caller's to see: from a turn, a run of the same root session; from the API,
    a run of the caller's (the admin sees every run)."""
    if turn.session.app_id != app_id:
        return False
    call = CURRENT.get()
    parent = _parent(call)
    if parent is not None:
        root = parent.session.parent_id or parent.session_id
        return (turn.session.parent_id or turn.session_id) == root
    return principal == ADMIN_PRINCIPAL or turn.session.principal == principal


def task_get(*, app_id: str, principal: str, session_id: str | None, task_id: Any) -> Turn:
    if not isinstance(task_id, str) or not task_id:
        raise DelegationError("task_id: the id a spawn returned (agent_…)")
    turn = (
        Turn.objects.select_related("session", "parent_turn").filter(correlation_id=task_id, depth__gt=0).first()
    )
    if turn is None or not _visible(turn, principal=principal, session_id=session_id, app_id=app_id):
        raise DelegationError(f"task_id: no delegated run {task_id!r} in this session")
    return turn


def tasks_list(*, app_id: str, principal: str, session_id: str | None) -> dict[str, Any]:
    call = CURRENT.get()
    parent = _parent(call)
    qs = Turn.objects.select_related("session", "parent_turn").filter(session__app_id=app_id, depth__gt=0)
    if parent is not None:
        root = parent.session.parent_id or parent.session_id
        qs = qs.filter(session__parent_id=root)
    elif principal != ADMIN_PRINCIPAL:
        qs = qs.filter(session__principal=principal)
    rows = [snapshot(t) for t in qs.order_by("-id")[:200]]
    rows.reverse()
    for row in rows:
        row["task"] = row["task"][:TASK_PREVIEW_CHARS]
        row.pop("content", None)
    return {"agents": rows, "total": len(rows), "running": sum(1 for r in rows if r["status"] in ("running",
                                                                                                 "waiting_approval"))}


def cancel(turn: Turn) -> dict[str, Any]:
    """Stop a run (and, through it, the runs it started) at its next step boundary."""
    if turn.status not in ACTIVE:
        return {"task_id": turn.correlation_id, "status": FINISHED_STATUS.get(turn.status, turn.status),
                "cancelled": False}
    with transaction.atomic():
        Turn.objects.filter(pk=turn.pk).update(cancel_requested=True)
        turn.refresh_from_db()
        finished_now = turn.status != Turn.Status.RUNNING or turn.lease_expired()
        session_pk = turn.session_id
        if finished_now:
            turn_finish_and_peek(turn_pk=turn.pk, content="Cancelled by the agent that delegated it.",
                                          cancelled=True)
        else:
            transaction.on_commit(lambda: _schedule(session_pk))
    return {"task_id": turn.correlation_id, "status": "cancelled" if finished_now else "cancelling", "cancelled": True}


def request_wait(tasks: list[str], *, form: str, timeout: Any = None) -> dict[str, Any]:
    """Ask the runner to suspend the current call until ``tasks`` have ended (or ``timeout``)."""
    wait: dict[str, Any] = {"tasks": list(tasks), "form": form}
    if timeout is not None:
        wait["deadline"] = time.time() + float(timeout)
    call = CURRENT.get()
    if call is not None:
        call.wait = wait
    return wait


def wait_deadline(waits: dict[str, Any] | None) -> float | None:
    deadlines = [w["deadline"] for w in (waits or {}).values() if w.get("deadline")]
    return min(deadlines) if deadlines else None


def wait_outcome(wait: dict[str, Any]) -> dict[str, Any] | None:
    """The tool result of a call waiting for runs, or None while it must wait on."""
    tasks = list(wait.get("tasks") or ())
    expired = bool(wait.get("deadline")) and wait["deadline"] <= time.time()
    if tasks_active(tasks) and not expired:
        return None
    turns = {t.correlation_id: t for t in Turn.objects.select_related("parent_turn").filter(correlation_id__in=tasks)}
    snaps = [snapshot(turns[t]) if t in turns else {"task_id": t, "status": "not_found"} for t in tasks]
    if wait.get("form") == "one" and len(snaps) == 1:
        snap = snaps[0]
        if snap["status"] == "completed":
            return {"success": True, "data": snap, "error": None}
        if snap["status"] in ("running", "waiting_approval"):
            return {"success": True, "data": {**snap, "message": "still running when the wait ended; wait again "
                                              f"with agent_spawn.wait(task_id={snap['task_id']!r})"}, "error": None}
        why = snap.get("error") or snap["status"]
        return {"success": False, "data": snap, "error": f"the delegated agent {snap.get('agent_id')!r} {snap['status']}: {why}"}
    if wait.get("order"):
        # run_parallel jobs that could not start keep their place, with their error.
        found = iter(snaps)
        errors = wait.get("errors") or {}
        snaps = [errors.get(str(i), {"status": "failed"}) if not t else next(found) for i, t in enumerate(wait["order"])]
    completed = sum(1 for s in snaps if s["status"] == "completed")
    failed = sum(1 for s in snaps if s["status"] in ("failed", "cancelled", "not_found"))
    still = [s["task_id"] for s in snaps if s["status"] in ("running", "waiting_approval")]
    return {
        "success": True,
        "data": {
            "results": snaps,
            "total": len(snaps),
            "completed": completed,
            "failed": failed,
            "timed_out": still,
            "message": f"{completed}/{len(snaps)} agents completed" + (f", {len(still)} still running" if still else ""),
        },
        "error": None,
    }
