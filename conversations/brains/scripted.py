"""The scripted brain: deterministic, offline replies and tool calls from rules in the manifest.

A product feature (dry-run an app's tools and policies without spending tokens), not a test double::

    brain:
      provider: scripted
      config:
        rules:
          - when: "list|files"            # regex, case-insensitive, searched in the latest user message
            steps:
              - call: filesystem.find
                params: {path: ".", pattern: "*.py"}
              - say: "Found: {result}"
          - steps: [{say: "You said: {message}"}]   # no `when`: matches anything

The brain is stateless: the step to play is the number of assistant messages since the latest user
message, so a turn resumed on another worker (after an approval, a crash) continues where it was.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import Brain, BrainError, BrainReply, OnToken, ToolCall, canonical_tool_name, chunk_text

_PLACEHOLDER = re.compile(r"\{(message|result)\}")


def scripted_rules_problems(rules: Any, *, path: str = "brain.config.rules") -> list[dict[str, str]]:
    """Structural problems of a scripted rule list as ``[{"path", "message"}]`` (empty when valid).

    The manifest compiler may call this to reject a bad script at deploy time; the brain reports the
    same problems as a ``BrainError`` when it meets them at run time.
    """
    problems: list[dict[str, str]] = []
    if not isinstance(rules, list):
        return [{"path": path, "message": "must be a list of rules like {when: <regex>, steps: [...]}"}]
    for i, rule in enumerate(rules):
        rpath = f"{path}[{i}]"
        if not isinstance(rule, dict):
            problems.append({"path": rpath, "message": "must be a mapping with 'when' and 'steps'"})
            continue
        when = rule.get("when")
        if when is not None and not isinstance(when, str):
            problems.append({"path": f"{rpath}.when", "message": "must be a regular expression string"})
        elif when:
            try:
                re.compile(when)
            except re.error as exc:
                problems.append(
                    {"path": f"{rpath}.when", "message": f"is not a valid regular expression: {exc}"}
                )
        steps = rule.get("steps", [])
        if not isinstance(steps, list):
            problems.append(
                {"path": f"{rpath}.steps", "message": "must be a list of {call}, {calls} or {say} steps"}
            )
            continue
        for j, step in enumerate(steps):
            problems.extend(_step_problems(step, f"{rpath}.steps[{j}]"))
    return problems


def _step_problems(step: Any, path: str) -> list[dict[str, str]]:
    if not isinstance(step, dict):
        return [
            {
                "path": path,
                "message": "must be a mapping: {call: <tool>, params: {...}}, {calls: [...]} or {say: <text>}",
            }
        ]
    kinds = [k for k in ("call", "calls", "say") if k in step]
    if len(kinds) != 1:
        return [{"path": path, "message": "needs exactly one of 'call', 'calls' or 'say'"}]
    if "say" in step:
        if not isinstance(step["say"], str):
            return [{"path": f"{path}.say", "message": "must be a string"}]
        return []
    calls = [step] if "call" in step else step["calls"]
    if not isinstance(calls, list) or not calls:
        return [
            {"path": f"{path}.calls", "message": "must be a non-empty list of {call: <tool>, params: {...}}"}
        ]
    problems = []
    for k, call in enumerate(calls):
        cpath = path if "call" in step else f"{path}.calls[{k}]"
        if not isinstance(call, dict) or not isinstance(call.get("call"), str) or not call["call"]:
            problems.append({"path": f"{cpath}.call", "message": "must name a tool, e.g. filesystem.read"})
        elif not isinstance(call.get("params", {}), dict):
            problems.append({"path": f"{cpath}.params", "message": "must be a mapping of tool parameters"})
    return problems


class ScriptedBrain(Brain):
    provider = "scripted"

    def __init__(self, *, rules: Any, path: str = "brain.config.rules"):
        self.rules = rules
        self.path = path

    async def complete(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: OnToken | None = None,
    ) -> BrainReply:
        problems = scripted_rules_problems(self.rules, path=self.path)
        if problems:
            first = problems[0]
            raise BrainError(f"scripted brain: {first['path']} {first['message']}", kind="bad_response")

        user_index, message = _latest_user_message(messages)
        rule_index, rule = self._match(message)
        # Steps already played = assistant replies since the user spoke (tool results are not replies).
        step_no = sum(1 for m in messages[user_index + 1 :] if m.get("role") == "assistant")
        result = _previous_result(messages[user_index + 1 :])
        steps = rule.get("steps") or []

        if step_no < len(steps):
            step = steps[step_no]
            if "say" in step:
                return await _say(_substitute(step["say"], message, result), on_token)
            calls = [step] if "call" in step else step["calls"]
            return BrainReply(
                text="",
                tool_calls=[
                    ToolCall(
                        id=f"call_{step_no}_{i}",
                        name=canonical_tool_name(call["call"]),
                        params=_substitute(dict(call.get("params") or {}), message, result),
                    )
                    for i, call in enumerate(calls)
                ],
                usage=_usage(),
            )
        # Script ran out (a rule ending on a call, or no steps at all): answer with what the tools said.
        return await _say(result, on_token)

    def _match(self, message: str) -> tuple[int, dict[str, Any]]:
        for i, rule in enumerate(self.rules):
            when = rule.get("when")
            if not when or re.search(when, message, re.IGNORECASE):
                return i, rule
        shown = message if len(message) <= 120 else message[:117] + "..."
        raise BrainError(
            f"no scripted rule matches the message {shown!r}; add a rule whose 'when' regex matches it "
            f"(or a rule without 'when' as a fallback) to {self.path}",
            kind="no_rule",
        )


def _latest_user_message(messages: list[dict[str, Any]]) -> tuple[int, str]:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i, str(messages[i].get("content") or "")
    return -1, ""


def _previous_result(after_user: list[dict[str, Any]]) -> str:
    """The tool results that answered the latest assistant call(s), as compact JSON.

    One call → that result; several calls in one response → a JSON list of their results in order.
    """
    results: list[Any] = []
    for m in after_user:
        if m.get("role") == "assistant":
            results = []
        elif m.get("role") == "tool":
            results.append(_as_json_value(m.get("content")))
    if not results:
        return ""
    value = results[0] if len(results) == 1 else results
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _as_json_value(content: Any) -> Any:
    if isinstance(content, str):
        try:
            return json.loads(content)
        except (json.JSONDecodeError, ValueError):
            return content
    return content


def _substitute(value: Any, message: str, result: str) -> Any:
    if isinstance(value, str):
        # One pass, so a message that itself contains "{result}" is not expanded again.
        return _PLACEHOLDER.sub(lambda m: message if m.group(1) == "message" else result, value)
    if isinstance(value, dict):
        return {k: _substitute(v, message, result) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, message, result) for v in value]
    return value


async def _say(text: str, on_token: OnToken | None) -> BrainReply:
    if on_token is not None:
        for piece in chunk_text(text):
            await on_token(piece)
    return BrainReply(text=text, tool_calls=[], usage=_usage())


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
