"""OpenAI-compatible chat completions (OpenAI, Ollama, vLLM, LM Studio, OpenRouter, ... via ``base_url``).

Config (``agents[i].brain``): ``model``, ``temperature``, ``max_tokens``, ``timeout`` and
``config: {base_url (default https://api.openai.com/v1), api_key, headers, max_retries (default 2),
retry_base_delay, max_tokens_param ("max_tokens" or "max_completion_tokens"), stream_usage (default
true), extra_body}``. Tools go out as ``module__action`` functions; streaming is used when the caller
passes ``on_token``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from apps_registry.manifest.compiled import BrainSpec

from .base import Brain, BrainError, BrainReply, OnToken, ToolCall, ToolNameMap, parse_tool_arguments
from .http import HttpEndpoint, RetryPolicy, json_body, nested_error, sse_data

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIBrain(Brain):
    provider = "openai"

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
        max_tokens_param: str = "max_tokens",
        stream_usage: bool = True,
        extra_body: dict[str, Any] | None = None,
        agent_id: str = "",
    ):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.extra_headers = dict(headers or {})
        self.max_tokens_param = max_tokens_param
        self.stream_usage = stream_usage
        self.extra_body = dict(extra_body or {})
        self.agent_id = agent_id

    @classmethod
    def from_spec(cls, spec: BrainSpec, *, agent_id: str = "") -> OpenAIBrain:
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
            max_tokens_param=str(config.get("max_tokens_param") or "max_tokens"),
            stream_usage=bool(config.get("stream_usage", True)),
            extra_body=config.get("extra_body") or {},
            agent_id=agent_id,
        )
        brain.top_p = spec.top_p  # None: not sent, the provider's default
        return brain

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    # -- request ----------------------------------------------------------------------------
    def build_body(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, stream: bool
    ) -> dict:
        names = ToolNameMap(tools)
        body: dict[str, Any] = {"model": self.model, "messages": [_wire_message(m, names) for m in messages]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens:
            body[self.max_tokens_param] = self.max_tokens
        if getattr(self, "top_p", None) is not None:
            body["top_p"] = self.top_p
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": names.wire(t["name"]),
                        "description": t.get("description") or "",
                        "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                    },
                }
                for t in tools
            ]
        if stream:
            body["stream"] = True
            if self.stream_usage:
                body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body

    def _endpoint(self) -> HttpEndpoint:
        headers = {"Content-Type": "application/json", **self.extra_headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return HttpEndpoint(
            provider="OpenAI-compatible endpoint",
            url=self.url,
            headers=headers,
            timeout=self.timeout,
            retry=self.retry,
            error_message=lambda status, text: nested_error(text),
        )

    # -- call -------------------------------------------------------------------------------
    async def complete(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_token: OnToken | None = None,
    ) -> BrainReply:
        if not self.model:
            raise BrainError(
                f"agents.{self.agent_id or '?'}.brain.model is empty; name the model to call (e.g. gpt-4o-mini)",
                kind="bad_response",
            )
        names = ToolNameMap(tools)
        stream = on_token is not None
        endpoint = self._endpoint()
        body = self.build_body(messages, tools, stream=stream)
        async with endpoint.post(body, stream=stream) as response:
            if stream:
                return await self._read_stream(response, names, on_token)
            try:
                text = (await response.aread()).decode("utf-8", errors="replace")
            except httpx.TimeoutException:
                raise BrainError(
                    f"OpenAI-compatible endpoint at {self.url} did not finish its answer within {self.timeout:g} s",
                    kind="timeout",
                )
        return self._parse_reply(json_body(text, provider="OpenAI-compatible endpoint", url=self.url), names)

    def _bad(self, what: str, payload: Any) -> BrainError:
        shown = json.dumps(payload)[:300] if not isinstance(payload, str) else payload[:300]
        return BrainError(
            f"OpenAI-compatible endpoint at {self.url} answered {what}: {shown}", kind="bad_response"
        )

    def _parse_reply(self, data: dict[str, Any], names: ToolNameMap) -> BrainReply:
        if "error" in data and not data.get("choices"):
            message, code = nested_error(json.dumps(data))
            raise self._bad(f"with an error ({code or 'no code'})", message or data)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._bad("without choices", data)
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise self._bad("without choices[0].message", data)
        calls = []
        for raw in message.get("tool_calls") or []:
            fn = raw.get("function") if isinstance(raw, dict) else None
            if not isinstance(fn, dict) or not fn.get("name"):
                raise self._bad("a tool call without a function name", raw)
            name = names.canonical(fn["name"])
            calls.append(
                ToolCall(
                    id=str(raw.get("id") or f"call_{len(calls)}"),
                    name=name,
                    params=parse_tool_arguments(
                        fn.get("arguments"), tool=name, provider="OpenAI-compatible endpoint"
                    ),
                )
            )
        content = message.get("content")
        if isinstance(content, list):  # some compatible servers send content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return BrainReply(text=content or "", tool_calls=calls, usage=_usage(data.get("usage")))

    async def _read_stream(
        self, response: httpx.Response, names: ToolNameMap, on_token: OnToken
    ) -> BrainReply:
        text_parts: list[str] = []
        partial: dict[int, dict[str, Any]] = {}  # index -> {"id", "name", "arguments"}
        usage: dict[str, Any] = {}
        async for _event, data in sse_data(
            response, provider="OpenAI-compatible endpoint", url=self.url, timeout=self.timeout
        ):
            if data.strip() == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise self._bad("a stream chunk that is not JSON", data)
            if not isinstance(chunk, dict):
                raise self._bad("a stream chunk that is not an object", data)
            if "error" in chunk:
                message, code = nested_error(data)
                lowered = f"{code} {message}".lower()
                if "context" in lowered and ("length" in lowered or "window" in lowered):
                    raise BrainError(
                        f"the conversation is longer than the model's context window: {message}; "
                        "start a new session or lower runtime.context_window_messages",
                        kind="context_overflow",
                    )
                raise self._bad(f"an error in the stream ({code or 'no code'})", message or chunk)
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                if piece:
                    text_parts.append(piece)
                    await on_token(piece)
                for tc in delta.get("tool_calls") or []:
                    index = int(tc.get("index", len(partial)))
                    slot = partial.setdefault(index, {"id": "", "name": "", "arguments": ""})
                    if tc.get("id"):
                        slot["id"] = tc["id"]
                    fn = tc.get("function") or {}
                    if fn.get("name"):
                        # Servers send the name once; a few resend it whole with each fragment.
                        slot["name"] = (
                            fn["name"] if slot["name"] in ("", fn["name"]) else slot["name"] + fn["name"]
                        )
                    if fn.get("arguments"):
                        slot["arguments"] += fn["arguments"]
        calls = []
        for index in sorted(partial):
            slot = partial[index]
            if not slot["name"]:
                raise self._bad(f"a streamed tool call #{index} without a function name", slot)
            name = names.canonical(slot["name"])
            calls.append(
                ToolCall(
                    id=slot["id"] or f"call_{index}",
                    name=name,
                    params=parse_tool_arguments(
                        slot["arguments"], tool=name, provider="OpenAI-compatible endpoint"
                    ),
                )
            )
        return BrainReply(text="".join(text_parts), tool_calls=calls, usage=usage)


def _wire_message(message: dict[str, Any], names: ToolNameMap) -> dict[str, Any]:
    role = message.get("role")
    content = message.get("content")
    content = "" if content is None else content if isinstance(content, str) else json.dumps(content)
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": content or None}
        calls = message.get("tool_calls") or []
        if calls:
            out["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {
                        "name": names.wire(c["name"]),
                        "arguments": json.dumps(c.get("params") or {}),
                    },
                }
                for c in calls
            ]
        elif out["content"] is None:
            out["content"] = ""
        return out
    if role == "tool":
        return {"role": "tool", "tool_call_id": message.get("tool_call_id") or "", "content": content}
    if role not in ("system", "user"):
        role = "user"
    return {"role": role, "content": content}


def _usage(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(raw.get("total_tokens") or prompt + completion),
    }
