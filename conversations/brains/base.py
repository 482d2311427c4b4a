"""The brain interface: messages and tool schemas in, text and/or tool calls out.

Every provider speaks the same neutral transcript (see ``Brain.complete``) so the agent loop never
knows which LLM it talks to. Tool names are canonical ``module.action`` on this side of the
interface; providers that restrict tool-name characters get ``module__action`` on the wire and the
reply is mapped back here.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

OnToken = Callable[[str], Awaitable[None]]

BRAIN_ERROR_KINDS = frozenset(
    {"auth", "timeout", "context_overflow", "rate_limited", "bad_response", "no_rule", "connection"}
)

_WIRE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class ToolCall:
    id: str
    name: str  # canonical "module.action" (meta-tools keep their bare name, e.g. "search_tools")
    params: dict[str, Any]


@dataclass
class BrainReply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)  # prompt_tokens, completion_tokens, total_tokens


class BrainError(Exception):
    """A brain could not produce a reply; ``kind`` tells the agent loop (and the user) why."""

    def __init__(self, message: str, *, kind: str, status: int | None = None):
        if kind not in BRAIN_ERROR_KINDS:
            raise ValueError(f"unknown BrainError kind {kind!r}; use one of {sorted(BRAIN_ERROR_KINDS)}")
        self.message = message
        self.kind = kind
        self.status = status  # the provider's HTTP status, when there was one
        super().__init__(message)

    def __repr__(self) -> str:
        return f"BrainError(kind={self.kind!r}, message={self.message!r})"


class Brain(abc.ABC):
    """One LLM (or the scripted stand-in) behind one agent."""

    provider: str = ""

    @abc.abstractmethod
    async def complete(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: OnToken | None = None,
    ) -> BrainReply:
        """Answer the transcript.

        ``messages``: ``[{"role": "system"|"user"|"assistant"|"tool", "content": str,
        "tool_calls": [{"id", "name", "params"}] (assistant), "tool_call_id": str (tool),
        "name": str (tool)}]``; ``tools``: ``[{"name": "filesystem.read", "description",
        "parameters"}]``. ``on_token`` is awaited with each text delta when given (streaming).
        Raises :class:`BrainError`.
        """


# -- tool-name mapping ----------------------------------------------------------------------


def canonical_tool_name(name: str) -> str:
    """``module__action`` → ``module.action``; dotted and bare names are returned unchanged."""
    if "." not in name and "__" in name:
        module, _, action = name.partition("__")
        if module and action:
            return f"{module}.{action}"
    return name


def wire_tool_name(name: str) -> str:
    """``module.action`` → ``module__action``; providers accept only ``[A-Za-z0-9_-]{1,64}``."""
    return _WIRE_UNSAFE.sub("_", name.replace(".", "__"))[:64]


class ToolNameMap:
    """Exact wire ↔ canonical mapping for the tools of one request.

    Built from the tools actually sent so an unusual name maps back to precisely what was offered;
    names the model invents fall back to :func:`canonical_tool_name`.
    """

    def __init__(self, tools: Iterable[dict[str, Any]]):
        self._to_canonical: dict[str, str] = {}
        for tool in tools:
            self._to_canonical.setdefault(wire_tool_name(tool["name"]), tool["name"])

    def wire(self, name: str) -> str:
        return wire_tool_name(name)

    def canonical(self, wire_name: str) -> str:
        return self._to_canonical.get(wire_name) or canonical_tool_name(wire_name)


def parse_tool_arguments(raw: Any, *, tool: str, provider: str) -> dict[str, Any]:
    """Tool-call arguments as a dict: JSON text (OpenAI) or an object (Anthropic); empty means ``{}``."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BrainError(
                f"{provider} returned a call to tool '{tool}' whose arguments are not valid JSON "
                f"({exc.msg} at position {exc.pos}): {raw[:200]!r}",
                kind="bad_response",
            )
        if isinstance(value, dict):
            return value
    raise BrainError(
        f"{provider} returned a call to tool '{tool}' whose arguments are not a JSON object: {str(raw)[:200]!r}",
        kind="bad_response",
    )


def chunk_text(text: str, pieces: int = 4) -> list[str]:
    """Split ``text`` into a few word-aligned chunks (used to stream offline replies)."""
    if not text:
        return []
    words = re.findall(r"\S+\s*|\s+", text)
    size = max(1, -(-len(words) // pieces))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]
