"""The manifest's hooks (``runtime.hooks``, legacy ``execution.hooks``): condition → action pairs
evaluated at points of a turn, as the original Digitorn's HookRunner does.

Events: ``session_start`` (the first turn of a session), ``turn_start`` (alias ``user_prompt``) and
``turn_end``. Conditions: ``always``, ``never``, ``turn_count`` (``threshold``, or ``every`` /
``interval`` N turns of the session), ``tool_calls`` (the turn's calls ≥ ``threshold``),
``message_count`` (≥ ``threshold``), ``context_pressure`` (estimated tokens / budget ≥ ``threshold``)
and the composites ``all_of`` / ``any_of`` / ``not``. Actions run without a model: ``log`` (a log
line, its formatted ``message`` in the event), ``notify`` (a ``hook_notification`` event
``{title, message, level}``) and ``inject_message`` (a ``system`` or ``user`` message added to the
transcript the model reads next). Any other action (``compact_context``, ``module_action``, …) is
reported as fired with ``phase: "skipped"``: the compiler warned about it at deploy.

Every firing is a ``hook`` event ``{hook_id, action_type, phase, event, details}`` (``phase``
``end`` / ``skipped`` / ``error``, ``event`` the point it fired at), carried into the turn's next
write like the other progress events (``turn_events.Carry``): a hook costs no transaction of its
own, except ``inject_message``, which writes its message.

Cooldowns and ``max_fires`` count per session in this process (bounded; a restart forgets them).
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from conversations.models import Message, Session
from digitorn_site import fastsql
from tooling.services import mask_secrets

log = logging.getLogger("digitorn.hooks")

ALIASES = {"user_prompt": "turn_start"}
_PLACEHOLDER = re.compile(r"\{(turn|tokens|tools|messages)\}")
MAX_DETAIL_CHARS = 2000
MAX_INJECT_CHARS = 20_000
# session pk → {hook id: [last fired (monotonic), fire count]}; the oldest sessions go first. A
# session's first turn starts it afresh (a pk SQLite reuses after a delete inherits nothing).
_fired: OrderedDict[int, dict[str, list[float]]] = OrderedDict()
_FIRED_MAX = 10_000
MAX_CONDITION_DEPTH = 8


class _TooDeep(ValueError):
    pass


@dataclass
class HookState:
    """What conditions read at one evaluation point."""

    session_pk: int
    turn_number: int  # 1 for the session's first turn
    tool_calls: int  # this turn's tool calls so far
    messages: int  # transcript messages the turn holds
    tokens: int  # estimated tokens of the transcript
    budget: int  # the context budget those tokens count against


def app_hooks(app: Any) -> tuple[dict, ...]:
    return tuple(getattr(getattr(app, "runtime", None), "hooks", ()) or ())


def wants(app: Any, event: str) -> bool:
    """Whether any enabled hook of the app listens to ``event`` (cheap: no state is built otherwise)."""
    return any(h.get("enabled", True) and ALIASES.get(h.get("on"), h.get("on")) == event for h in app_hooks(app))


def turn_number(*, session_pk: int, turn_pk: int) -> int:
    """The turn's rank in its session (1 = the first): what ``turn_count`` and ``session_start`` read."""
    return fastsql.turn_rank(session_pk, turn_pk)


def _number(params: dict, key: str, default: float) -> float:
    value = params.get(key, default)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _holds(condition: Any, state: HookState, depth: int = 0) -> bool:
    if depth > MAX_CONDITION_DEPTH:
        raise _TooDeep(f"conditions nested more than {MAX_CONDITION_DEPTH} deep")
    if not isinstance(condition, dict):
        return False
    kind = condition.get("type", "always")
    if kind == "always":
        return True
    if kind == "never":
        return False
    if kind == "turn_count":
        every = int(_number(condition, "every", 0) or _number(condition, "interval", 0))
        if every > 0:
            return state.turn_number % every == 0
        return state.turn_number >= _number(condition, "threshold", 10)
    if kind == "tool_calls":
        return state.tool_calls >= _number(condition, "threshold", 20)
    if kind == "message_count":
        return state.messages >= _number(condition, "threshold", 50)
    if kind == "context_pressure":
        return state.tokens / max(state.budget, 1) >= _number(condition, "threshold", 0.75)
    inner = condition.get("conditions")
    if kind == "all_of":
        return isinstance(inner, list) and all(_holds(c, state, depth + 1) for c in inner)
    if kind == "any_of":
        return isinstance(inner, list) and any(_holds(c, state, depth + 1) for c in inner)
    if kind == "not":
        return not _holds(condition.get("condition"), state, depth + 1)
    return False  # unknown condition: the original logs it and does not fire


def _may_fire(hook: dict, session_pk: int) -> bool:
    seen = _fired.get(session_pk, {}).get(hook["id"])
    if seen is None:
        return True
    if hook.get("max_fires") and seen[1] >= hook["max_fires"]:
        return False
    return time.monotonic() - seen[0] >= float(hook.get("cooldown") or 0)


def _mark_fired(hook: dict, session_pk: int) -> int:
    hooks = _fired.pop(session_pk, {})
    seen = hooks.get(hook["id"], [0.0, 0])
    hooks[hook["id"]] = seen = [time.monotonic(), int(seen[1]) + 1]
    _fired[session_pk] = hooks
    while len(_fired) > _FIRED_MAX:
        _fired.popitem(last=False)
    return int(seen[1])


def _placeholder(state: HookState, name: str) -> int:
    return {"turn": state.turn_number, "tokens": state.tokens, "tools": state.tool_calls,
            "messages": state.messages}[name]


def _text(value: Any, limit: int, secrets: tuple[str, ...] = ()) -> str:
    """Manifest text a hook shows, logs or injects: a string, cut, every app secret masked (a
    `{{secret.X}}` in a hook is resolved like the rest of the manifest, and must not reach the
    transcript, an event or the log)."""
    text = value if isinstance(value, str) else ""
    return mask_secrets(text, secrets)[:limit] if secrets else text[:limit]


def run(app: Any, event: str, state: HookState, *, correlation_id: str) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Evaluate the app's hooks for ``event``: (events to carry, messages to inject ``{role, content}``)."""
    events: list[tuple[str, dict]] = []
    inject: list[dict] = []
    secrets = tuple(getattr(app, "secret_values", ()) or ())
    for hook in app_hooks(app):
        if not hook.get("enabled", True) or ALIASES.get(hook.get("on"), hook.get("on")) != event:
            continue
        if not _may_fire(hook, state.session_pk):
            continue
        try:
            if not _holds(hook.get("condition") or {"type": "always"}, state):
                continue
        except Exception:  # noqa: BLE001 - a hostile condition never breaks the turn
            log.warning("hook %s: condition failed", hook.get("id"), exc_info=True)
            continue
        action = hook.get("action") or {}
        kind = str(action.get("type") or "")
        count = _mark_fired(hook, state.session_pk)
        details: dict[str, Any] = {"condition": (hook.get("condition") or {}).get("type", "always"), "fire_count": count}
        phase = "end"
        note = None
        if kind == "log":
            # The original's placeholders, substituted by name only (never str.format on manifest text).
            message = _PLACEHOLDER.sub(lambda m, st=state: str(_placeholder(st, m.group(1))),
                                       _text(action.get("message"), MAX_DETAIL_CHARS, secrets))
            details["message"] = message[:MAX_DETAIL_CHARS]
            log.info("hook %s: %s", hook["id"], details["message"])
        elif kind in ("notify", "notification"):
            note = {
                "title": _text(action.get("title"), 200, secrets) or hook["id"],
                "message": _text(action.get("message") or action.get("content"), MAX_DETAIL_CHARS, secrets),
                "level": action.get("level") if action.get("level") in ("info", "warning", "error", "success") else "info",
                "hook_id": hook["id"],
                "correlation_id": correlation_id,
            }
            details["title"] = note["title"]
        elif kind == "inject_message":
            content = _text(action.get("content") or action.get("message"), MAX_INJECT_CHARS, secrets)
            role = "user" if action.get("role") == "user" else "system"
            if content:
                inject.append({"role": role, "content": content})
            details.update(role=role, chars=len(content))
        else:
            phase = "skipped"
            details["reason"] = f"action {kind!r} is not run by this daemon"
        events.append(("hook", {
            "hook_id": hook["id"], "action_type": kind, "phase": phase, "event": event, "details": details,
            "correlation_id": correlation_id,
        }))
        if note is not None:
            events.append(("hook_notification", note))
    return events, inject


def inject_messages(*, session_pk: int, correlation_id: str, messages: list[dict]) -> list[Message]:
    """Write the messages ``inject_message`` hooks add (read by the model from its next call on)."""
    out = []
    with transaction.atomic():
        session = Session(pk=session_pk)
        for item in messages:
            role = Message.Role.USER if item["role"] == "user" else Message.Role.SYSTEM
            out.append(fastsql.insert(Message(session=session, role=role, content=item["content"],
                                              correlation_id=correlation_id)))
    return out


def wants_any(app: Any, event: str) -> bool:
    """``wants`` for the events one evaluation point covers (turn_start brings session_start)."""
    return wants(app, event) or (event == "turn_start" and wants(app, "session_start"))


DEFAULT_BUDGET = 128_000


def fire(
    *, app: Any, event: str, session_pk: int, turn_pk: int, correlation_id: str, tool_calls: int,
    transcript: list, context: dict | None, inject_now: bool,
) -> tuple[list[tuple[str, dict]], list]:
    """One evaluation point of a turn (sync: it may read the turn's rank and write injected messages).

    Returns the events to carry and the injected messages: written ``Message`` rows when
    ``inject_now``, else ``{role, content}`` for the caller to write once the turn has ended."""
    number = turn_number(session_pk=session_pk, turn_pk=turn_pk)
    calls = sum(len(m.tool_calls or ()) for m in transcript
                if getattr(m, "correlation_id", None) == correlation_id and m.role == Message.Role.ASSISTANT)
    context = context or {}
    budget = max(int(context.get("max_tokens") or 0) or DEFAULT_BUDGET, 1)
    state = HookState(
        session_pk=session_pk, turn_number=number, tool_calls=max(tool_calls, calls), messages=len(transcript),
        tokens=sum(len(m.content or "") for m in transcript) // 4, budget=budget,
    )
    if number == 1 and event == "turn_start":
        _fired.pop(session_pk, None)  # a new session: no cooldown or fire count carried over
    points = ["session_start", "turn_start"] if event == "turn_start" and number == 1 else [event]
    events: list[tuple[str, dict]] = []
    inject: list[dict] = []
    for point in points:
        more, messages = run(app, point, state, correlation_id=correlation_id)
        events.extend(more)
        inject.extend(messages)
    if inject and inject_now:
        return events, inject_messages(session_pk=session_pk, correlation_id=correlation_id, messages=inject)
    return events, inject
