"""The Anthropic Messages API (``POST {base_url}/v1/messages``) with tool use.

Config (``agents[i].brain``): ``model``, ``temperature``, ``max_tokens`` (the API requires one;
default 4096), ``timeout`` and ``config: {base_url (default https://api.anthropic.com), api_key,
anthropic_version (default 2023-06-01), headers, max_retries, retry_base_delay}``. System messages
become the separate ``system`` field; tool calls and results become ``tool_use`` / ``tool_result``
blocks; consecutive same-role turns are merged because the API wants them alternating.
Streaming (``on_token``) uses the API's SSE events.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from apps_registry.manifest.compiled import BrainSpec

from .base import Brain, BrainError, BrainReply, OnToken, ToolCall, ToolNameMap, parse_tool_arguments
from .http import CONTEXT_OVERFLOW_MARKERS, HttpEndpoint, RetryPolicy, json_body, nested_error, sse_data

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
PROVIDER = "Anthropic API"


class AnthropicBrain(Brain):
    provider = "anthropic"

    def __init__(
        self,
        *,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        temperature: float | None = 0.2,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
        anthropic_version: str = DEFAULT_VERSION,
        agent_id: str = "",
    ):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.extra_headers = dict(headers or {})
        self.anthropic_version = anthropic_version
        self.agent_id = agent_id

    @classmethod
    def from_spec(cls, spec: BrainSpec, *, agent_id: str = "") -> AnthropicBrain:
        config = dict(spec.config or {})
        brain = cls(
            model=spec.model or config.get("model", ""),
            base_url=str(config.get("base_url") or DEFAULT_BASE_URL),
            api_key=str(config.get("api_key") or ""),
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            timeout=float(spec.timeout or 60.0),
            retry=RetryPolicy.from_config(config),
            headers=config.get("headers") or {},
            anthropic_version=str(config.get("anthropic_version") or DEFAULT_VERSION),
            agent_id=agent_id,
        )
        brain.top_p = spec.top_p  # None: not sent, the provider's default
        return brain

    @property
    def url(self) -> str:
        # Accept a base_url given with or without the /v1 suffix.
        base = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        return f"{base}/v1/messages"

    def build_body(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, stream: bool
    ) -> dict:
        names = ToolNameMap(tools)
        system = "\n\n".join(
            str(m.get("content") or "") for m in messages if m.get("role") == "system"
        ).strip()
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": _wire_messages([m for m in messages if m.get("role") != "system"], names),
        }
        if system:
            body["system"] = system
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if getattr(self, "top_p", None) is not None:
            body["top_p"] = self.top_p
        if tools:
            body["tools"] = [
                {
                    "name": names.wire(t["name"]),
                    "description": t.get("description") or "",
                    "input_schema": t.get("parameters") or {"type": "object", "properties": {}},
                }
                for t in tools
            ]
        if stream:
            body["stream"] = True
        return body

    def _endpoint(self) -> HttpEndpoint:
        headers = {
            "Content-Type": "application/json",
            "anthropic-version": self.anthropic_version,
            **self.extra_headers,
        }
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return HttpEndpoint(
            provider=PROVIDER,
            url=self.url,
            headers=headers,
            timeout=self.timeout,
            retry=self.retry,
            error_message=lambda status, text: nested_error(text),
        )

    async def complete(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: OnToken | None = None,
    ) -> BrainReply:
        if not self.model:
            raise BrainError(
                f"agents.{self.agent_id or '?'}.brain.model is empty; name the model to call (e.g. claude-sonnet-4-5)",
                kind="bad_response",
            )
        names = ToolNameMap(tools)
        stream = on_token is not None
        body = self.build_body(messages, tools, stream=stream)
        async with self._endpoint().post(body, stream=stream) as response:
            if stream:
                return await self._read_stream(response, names, on_token)
            try:
                text = (await response.aread()).decode("utf-8", errors="replace")
            except httpx.TimeoutException:
                raise BrainError(
                    f"{PROVIDER} at {self.url} did not finish its answer within {self.timeout:g} s",
                    kind="timeout",
                )
        return self._parse_message(json_body(text, provider=PROVIDER, url=self.url), names)

    def _bad(self, what: str, payload: Any) -> BrainError:
        shown = payload[:300] if isinstance(payload, str) else json.dumps(payload)[:300]
        return BrainError(f"{PROVIDER} at {self.url} answered {what}: {shown}", kind="bad_response")

    def _stream_error(self, error: Any) -> BrainError:
        message, kind = nested_error(json.dumps({"error": error}))
        lowered = f"{kind} {message}".lower()
        if "overloaded" in lowered or "rate_limit" in lowered:
            return BrainError(
                f"{PROVIDER} at {self.url} is overloaded or rate limiting: {message}", kind="rate_limited"
            )
        if any(m in lowered for m in CONTEXT_OVERFLOW_MARKERS):
            return BrainError(
                f"the conversation is longer than the model's context window: {message}; "
                "start a new session or lower runtime.context_window_messages",
                kind="context_overflow",
            )
        return self._bad(f"an error in the stream ({kind or 'no type'})", message or error)

    def _parse_message(self, data: dict[str, Any], names: ToolNameMap) -> BrainReply:
        if data.get("type") == "error":
            raise self._stream_error(data.get("error"))
        content = data.get("content")
        if not isinstance(content, list):
            raise self._bad("without a content list", data)
        texts, calls = [], []
        for block in content:
            if not isinstance(block, dict):
                raise self._bad("a content block that is not an object", block)
            if block.get("type") == "text":
                texts.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                if not block.get("name"):
                    raise self._bad("a tool_use block without a name", block)
                name = names.canonical(block["name"])
                params = parse_tool_arguments(block.get("input"), tool=name, provider=PROVIDER)
                calls.append(
                    ToolCall(id=str(block.get("id") or f"toolu_{len(calls)}"), name=name, params=params)
                )
        return BrainReply(text="".join(texts), tool_calls=calls, usage=_usage(data.get("usage")))

    async def _read_stream(
        self, response: httpx.Response, names: ToolNameMap, on_token: OnToken
    ) -> BrainReply:
        texts: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}  # index -> {"id", "name", "json"} for tool_use blocks
        usage_raw: dict[str, Any] = {}
        async for event, data in sse_data(response, provider=PROVIDER, url=self.url, timeout=self.timeout):
            try:
                payload = json.loads(data)
            except json.JSONDecodeError:
                raise self._bad("a stream event that is not JSON", data)
            if not isinstance(payload, dict):
                raise self._bad("a stream event that is not an object", data)
            kind = payload.get("type") or event
            if kind == "error":
                raise self._stream_error(payload.get("error"))
            if kind == "message_start":
                usage_raw.update((payload.get("message") or {}).get("usage") or {})
            elif kind == "content_block_start":
                block = payload.get("content_block") or {}
                if block.get("type") == "tool_use":
                    blocks[int(payload.get("index", len(blocks)))] = {
                        "id": block.get("id") or "",
                        "name": block.get("name") or "",
                        "json": "",
                    }
                elif block.get("type") == "text" and block.get("text"):
                    texts.append(block["text"])
                    await on_token(block["text"])
            elif kind == "content_block_delta":
                delta = payload.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    texts.append(delta["text"])
                    await on_token(delta["text"])
                elif delta.get("type") == "input_json_delta":
                    slot = blocks.get(int(payload.get("index", -1)))
                    if slot is None:
                        raise self._bad("input_json_delta for a block that was not started", payload)
                    slot["json"] += delta.get("partial_json") or ""
            elif kind == "message_delta":
                usage_raw.update(payload.get("usage") or {})
            elif kind == "message_stop":
                break
        calls = []
        for index in sorted(blocks):
            slot = blocks[index]
            if not slot["name"]:
                raise self._bad(f"a streamed tool_use block #{index} without a name", slot)
            name = names.canonical(slot["name"])
            params = parse_tool_arguments(slot["json"], tool=name, provider=PROVIDER)
            calls.append(ToolCall(id=slot["id"] or f"toolu_{index}", name=name, params=params))
        return BrainReply(text="".join(texts), tool_calls=calls, usage=_usage(usage_raw))


def _wire_messages(messages: list[dict[str, Any]], names: ToolNameMap) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        role = m.get("role")
        content = m.get("content")
        text = "" if content is None else content if isinstance(content, str) else json.dumps(content)
        if role == "assistant":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            for c in m.get("tool_calls") or []:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": c["id"],
                        "name": names.wire(c["name"]),
                        "input": c.get("params") or {},
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id") or "",
                "content": text,
            }
            if _is_failure(text):
                block["is_error"] = True
            add("user", [block])
        else:
            add("user", [{"type": "text", "text": text or " "}])
    # The API wants the conversation to open with a user turn.
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": "(conversation resumed)"}]})
    return out


def _is_failure(text: str) -> bool:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return False
    return isinstance(value, dict) and value.get("success") is False


def _usage(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    prompt = int(raw.get("input_tokens") or 0)
    completion = int(raw.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
