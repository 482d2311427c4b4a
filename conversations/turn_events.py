"""Payloads of the turn's progress events the original Digitorn streams besides tokens and tools:
``status {phase}``, ``in_token`` / ``out_token {count}`` and ``stream_done {}``.

They report no state of their own, so none costs a transaction: the engine collects them
(``Carry``) and the next write of the turn appends them in its own transaction, before the event
that write reports (the first token flush, the assistant reply asking for tools, or the turn's end).
Kept apart from the engine so the loop only holds one call per emission point.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from conversations.events import announce, event_append
from conversations.models import Event, Session
from digitorn_site import fastsql

# The original's phases: a model call is running ("thinking"), tools are running ("tool"), the turn
# has ended ("done"; the `result` event follows).
THINKING = "thinking"
TOOL = "tool"
DONE = "done"


def status_data(phase: str, correlation_id: str, **extra: Any) -> dict:
    """``status`` ``{phase, correlation_id, …}``."""
    return {"phase": phase, "correlation_id": correlation_id, **extra}


def model_call_events(
    usage: dict | None, totals: dict[str, int], correlation_id: str, *, model_call: int
) -> list[tuple[str, dict]]:
    """After one model call: ``in_token`` and ``out_token`` (that call's prompt / completion tokens,
    ``total`` the turn's so far) then ``stream_done`` (its text is complete)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return [
        ("in_token", {"count": prompt, "total": int(totals.get("input_tokens") or 0), "model_call": model_call,
                      "correlation_id": correlation_id}),
        ("out_token", {"count": completion, "total": int(totals.get("output_tokens") or 0),
                       "model_call": model_call, "correlation_id": correlation_id}),
        ("stream_done", {"correlation_id": correlation_id}),
    ]


class Carry:
    """Events waiting for the turn's next write (appended, in order, in that write's transaction)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def add(self, type: str, data: dict) -> None:
        self.events.append((type, data))

    def extend(self, events: list[tuple[str, dict]]) -> None:
        self.events.extend(events)

    def take(self) -> list[tuple[str, dict]]:
        events, self.events = self.events, []
        return events


def append_carried(*, session: Any, events: list[tuple[str, dict]] | None, correlation_id: str) -> None:
    """Append carried events inside the caller's transaction, as ``event_append`` would one by one,
    in two statements whatever their number: one seq increment by ``len(events)`` and one INSERT of
    all the rows (the progress events of a model call come four at a time)."""
    if not events:
        return
    if len(events) == 1:
        type, data = events[0]
        event_append(session=session, type=type, data=data, correlation_id=correlation_id)
        return
    with transaction.atomic(savepoint=False):
        # The stream the session's events go to: its own, or its parent's for a delegated run.
        found = fastsql.stream_reserve_seqs(session.pk, len(events))
        if found is None:
            raise Session.DoesNotExist(f"session {session.pk} is gone")
        stream_pk, last = found
        tags: dict = {}
        if stream_pk != session.pk:
            # A delegated run's events, tagged like event_append tags them.
            tags = fastsql.session_delegation(session.pk) or {}
            correlation_id = tags.get("correlation_id") or correlation_id
            tags = {k: v for k, v in tags.items() if k != "correlation_id"}
        else:
            session.last_seq = last
        first = last - len(events) + 1
        rows = [
            Event(session_id=stream_pk, seq=first + i, type=type, data={**data, **tags}, correlation_id=correlation_id)
            for i, (type, data) in enumerate(events)
        ]
        fastsql.insert_many(rows)
        announce(stream_pk, rows)  # on commit: handed to this process's streams, rung elsewhere


def agent_event_data(event: str, *, agent_id: str, task_id: str, **extra: Any) -> dict:
    """``agent_event`` ``{event, agent_id, task_id, …}``: a delegated run was spawned or ended
    (``event`` ``spawned`` / ``completed`` / ``failed`` / ``cancelled``), beside the detailed
    ``agent_spawn`` / ``agent_result`` events, for the original's clients that follow agents by it."""
    return {"event": event, "agent_id": agent_id, "task_id": task_id, **extra}
