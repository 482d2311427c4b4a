"""Pure helpers over a transcript: what the model sees, where compaction cuts, the recaps.

No Django and no database here: a message is anything with ``pk``, ``role``, ``content``,
``tool_calls``, ``tool_call_id``, ``name`` and ``correlation_id`` (a ``Message`` or the runner's
lighter row), roles are the ``Message.Role`` values.
"""

from __future__ import annotations

import json
from typing import Any

SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"  # Message.Role's values

RECAP_ITEM_CHARS = 300
# Older messages summarised in a recap at most; anything before them is only counted. Bounds both
# the recap's size and what a step reads from the database, however long the session grows.
RECAP_MAX_ITEMS = 40
# Once compacted, the kept tail may grow back to the window before the cut moves again, and a new
# cut keeps this share of the window. A cut that moves at every step would write a `hook` event per
# step and change the recap (the prompt's prefix, which providers cache) at every model call.
RECOMPACT_KEEP = 0.75
# runtime.context.max_tokens 0 means "the model's window"; without a model table, assume this much.
DEFAULT_CONTEXT_TOKENS = 128_000


def unanswered_calls(transcript: list[Any], correlation_id: str) -> list[dict]:
    """Calls of this turn's latest assistant reply that have no tool result yet (resume point)."""
    for index in range(len(transcript) - 1, -1, -1):
        message = transcript[index]
        if message.correlation_id != correlation_id:
            return []
        if message.role == ASSISTANT:
            if not message.tool_calls:
                return []
            answered = {m.tool_call_id for m in transcript[index + 1 :] if m.role == TOOL}
            return [c for c in message.tool_calls if c.get("id") not in answered]
        if message.role == USER:
            return []
    return []


def last_assistant_text(transcript: list[Any], correlation_id: str) -> str:
    for message in reversed(transcript):
        if message.correlation_id != correlation_id:
            break
        if message.role == ASSISTANT and message.content:
            return message.content
    return ""


def to_brain(messages: list[Any]) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        if m.role == ASSISTANT:
            item: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.tool_calls:
                item["tool_calls"] = [{"id": c["id"], "name": c["name"], "params": c.get("params", {})} for c in m.tool_calls]
            out.append(item)
        elif m.role == TOOL:
            out.append({"role": "tool", "content": m.content, "tool_call_id": m.tool_call_id, "name": m.name})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def compaction_cut(transcript: list[Any], window: int) -> int:
    """Index where the kept tail starts: about ``window`` messages, never inside a call/result pair."""
    cut = len(transcript) - window
    while cut < len(transcript) and transcript[cut].role == TOOL:
        cut += 1
    if cut >= len(transcript):
        return 0
    return max(cut, 0)


def stable_cut(transcript: list[Any], window: int, compacted_upto: int) -> int:
    """The previous cut while the tail after it still fits the window, else a new one that keeps
    ``RECOMPACT_KEEP`` of the window (so the cut moves once per several steps, not at each)."""
    if compacted_upto:
        for index in range(len(transcript) - 1, -1, -1):
            pk = transcript[index].pk
            if pk == compacted_upto:
                if 0 < len(transcript) - (index + 1) <= window:
                    return index + 1
                break
            if pk < compacted_upto:
                break
    return compaction_cut(transcript, max(int(window * RECOMPACT_KEEP), 2))


def clip(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= RECAP_ITEM_CHARS else text[: RECAP_ITEM_CHARS - 1] + "…"


def recap(older: list[Any], *, on_request: bool = False) -> str:
    """One system message standing for ``older``: the automatic compaction's (tool results say
    whether they succeeded) or, ``on_request``, a manual compaction's (the session's compact route)."""
    why = "compacted on request" if on_request else "compacted to fit the context window"
    lines = [f"Recap of earlier messages of this conversation ({why}):"]
    for m in older:
        if m.role == ASSISTANT and m.tool_calls:
            names = ", ".join(str(c.get("name", "?")) for c in m.tool_calls)
            lines.append(f"- assistant called {names}" + (f": {clip(m.content)}" if m.content else ""))
        elif m.role == TOOL and on_request:
            lines.append(f"- {m.name} returned: {clip(m.content)}")
        elif m.role == TOOL:
            try:
                ok = json.loads(m.content).get("success")
            except (ValueError, AttributeError):
                ok = None
            lines.append(f"- {m.name} returned {'ok' if ok else 'an error' if ok is False else 'a result'}: {clip(m.content)}")
        else:
            lines.append(f"- {m.role}: {clip(m.content)}")
    return "\n".join(lines)


def notification_text(summaries: list[dict]) -> str:
    """What the model reads of finished background tasks (a notification turn's opening message)."""
    lines = ["Background task notifications (these tasks finished since you last heard of them):"]
    for s in summaries:
        # tool/result: summaries recorded before the event took the original's shape.
        body = s.get("result_preview", s.get("result")) if s.get("status") == "completed" else s.get("error")
        lines.append(
            f"- task {s.get('task_id')} ({s.get('tool_name') or s.get('tool')}) {s.get('status')}: "
            f"{(body if isinstance(body, str) else json.dumps(body, default=str))[:2000]}"
        )
    return "\n".join(lines)


def delegation_note(app, agent, depth: int, tools: list[dict]) -> str:
    """What a model needs to delegate well (the original's "Agent Pool" prompt section): the agents
    it may hand tasks to, and, for a delegated run, whom its answer goes to."""
    lines: list[str] = []
    if depth > 0:
        lines.append("You are running a task delegated by another agent: it cannot see this conversation and "
                     "reads only your final answer, so end with a complete, self-contained answer.")
    if any(t["name"].startswith("agent_spawn.") for t in tools) or any(t["name"] == "search_tools" for t in tools):
        targets = list(agent.delegate_to) or ([] if depth > 0 else [a.id for a in app.agents if a.id != agent.id])
        reachable = "agent_spawn" in app.modules and (agent.modules is None or "agent_spawn" in agent.modules)
        if targets and reachable:
            lines.append("Agents you can delegate a self-contained task to with agent_spawn.agent(agent=<id>, "
                         "task=...):")
            specs = {a.id: a for a in app.agents}
            for target in targets:
                spec = specs.get(target)
                what = (spec.specialty or spec.name) if spec is not None else ""
                lines.append(f"- {target}" + (f": {what}" if what and what != target else ""))
    return "\n".join(lines)


def split_before_secret_prefix(text: str, secrets: tuple[str, ...]) -> tuple[str, str]:
    """``text`` cut before its longest tail that begins some secret: (safe to emit, to hold back)."""
    cut = len(text)
    for secret in secrets:
        for size in range(min(len(secret) - 1, len(text)), 0, -1):
            if text.endswith(secret[:size]):
                cut = min(cut, len(text) - size)
                break
    return text[:cut], text[cut:]
