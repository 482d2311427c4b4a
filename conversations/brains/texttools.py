"""``brain.native_tool_use: false``: tools described in the prompt and read back from the reply text.

For models that do not speak the provider's native tool-call format (the original's text-based
mode, e.g. small models on Ollama): the tool catalog goes into a system message, the model answers
``<tool_call>{"name": "module.action", "arguments": {...}}</tool_call>`` blocks, and earlier calls and
results are replayed as plain text. Replies are not streamed token by token in this mode, so the
markup never reaches a client.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import Brain, BrainReply, OnToken, ToolCall

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
MAX_RESULT_CHARS = 20_000


def _catalog(tools: list[dict[str, Any]]) -> str:
    lines = [
        "You can call tools. To call one, answer with a block exactly like",
        '<tool_call>{"name": "module.action", "arguments": {"param": "value"}}</tool_call>',
        "(one block per call, nothing else inside it). The results come back in the next message.",
        "Tools:",
    ]
    for tool in tools:
        params = json.dumps(tool.get("parameters") or {}, separators=(",", ":"))
        lines.append(f"- {tool['name']}: {tool.get('description') or ''} Parameters (JSON schema): {params}")
    return "\n".join(lines)


def _replay(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            blocks = "".join(
                "<tool_call>" + json.dumps({"name": c["name"], "arguments": c.get("params") or {}}) + "</tool_call>"
                for c in m["tool_calls"]
            )
            out.append({"role": "assistant", "content": (m.get("content") or "") + blocks})
        elif role == "tool":
            content = str(m.get("content") or "")[:MAX_RESULT_CHARS]
            out.append({"role": "user", "content": f"[result of {m.get('name') or 'the tool'}]\n{content}"})
        else:
            out.append(m)
    return out


def parse_text_calls(text: str) -> tuple[str, list[ToolCall]]:
    calls: list[ToolCall] = []
    for index, match in enumerate(_CALL.finditer(text or "")):
        try:
            data = json.loads(match.group(1))
        except ValueError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        params = data.get("arguments", data.get("params", {}))
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError:
                params = {}
        calls.append(ToolCall(id=f"text_call_{index}", name=data["name"], params=params if isinstance(params, dict) else {}))
    return _CALL.sub("", text or "").strip(), calls


class TextToolsBrain(Brain):
    def __init__(self, inner: Brain):
        self.inner = inner
        self.provider = getattr(inner, "provider", "")

    async def complete(
        self, *, messages: list[dict[str, Any]], tools: list[dict[str, Any]], on_token: OnToken | None = None
    ) -> BrainReply:
        wire = _replay(messages)
        if tools:
            wire = [{"role": "system", "content": _catalog(tools)}, *wire]
        reply = await self.inner.complete(messages=wire, tools=[], on_token=None)
        text, calls = parse_text_calls(reply.text)
        if on_token is not None and text:
            await on_token(text)
        return BrainReply(text=text, tool_calls=calls, usage=reply.usage)
