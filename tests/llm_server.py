"""A small local LLM server for tests: OpenAI chat completions and a minimal Anthropic Messages API.

It answers from a FIFO of scripted replies so a test (or an end-to-end run of the daemon) can talk
real HTTP to "the model" on 127.0.0.1::

    with LLMServer() as llm:
        llm.enqueue(Reply(tool_calls=[("filesystem.read", {"path": "a.txt"})]))
        llm.enqueue(Reply(text="The file says hi."))
        brain config: {base_url: llm.base_url, api_key: "k"}        # OpenAI-compatible
                      {base_url: llm.anthropic_base_url, api_key: "k"}   # Anthropic
        ...
        assert llm.requests[0].json["tools"][0]["function"]["name"] == "filesystem__read"

Each request takes the next reply; the reply is rendered in the protocol of the path it arrived on
(``/v1/chat/completions`` or ``/v1/messages``) and streamed as SSE when the request asked for
``stream: true``. With the queue empty the server answers ``server.default`` if set, else HTTP 400
"no scripted reply queued" (not retried by the brains, so a missing reply fails fast).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ToolCallSpec = tuple[str, dict[str, Any]] | dict[str, Any]


@dataclass
class Reply:
    """One scripted answer.

    - ``text``: assistant text; ``chunks`` overrides how it is split when streamed (default: ~4 pieces).
    - ``tool_calls``: ``[(name, params)]`` or ``[{"name", "params"/"arguments" (raw str), "id"}]``;
      dotted names are sent as ``module__action``, as a real model would.
    - ``status`` + ``error``: an error answer, e.g. ``Reply(status=429, error="slow down")``;
      ``error_code`` fills ``error.code`` (OpenAI) / ``error.type`` (Anthropic).
    - ``headers``: extra response headers (e.g. ``{"Retry-After": "0"}``).
    - ``delay``: seconds to wait before answering; ``chunk_delay``: between streamed chunks.
    - ``raw``: bytes sent verbatim as the body (with ``content_type``), e.g. malformed JSON.
    - ``disconnect``: close the connection without answering.
    - ``stream_error``: for streamed replies, send this error object mid-stream after the text.
    """

    text: str = ""
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    status: int = 200
    error: str | None = None
    error_code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunks: list[str] | None = None
    raw: bytes | None = None
    content_type: str = "application/json"
    disconnect: bool = False
    stream_error: dict[str, Any] | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 7})


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any


class LLMServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.Lock()
        self._queue: list[Reply] = []
        self.default: Reply | None = None
        self.requests: list[RecordedRequest] = []
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """For the ``openai`` brain's ``config.base_url`` (ends in ``/v1`` like api.openai.com/v1)."""
        return f"{self.root_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For the ``anthropic`` brain's ``config.base_url`` (the brain appends ``/v1/messages``)."""
        return self.root_url

    def start(self) -> LLMServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="llm-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- script -----------------------------------------------------------------------------
    def enqueue(self, *replies: Reply | str) -> LLMServer:
        """Queue replies (a plain string is a text reply)."""
        with self._lock:
            self._queue.extend(Reply(text=r) if isinstance(r, str) else r for r in replies)
        return self

    def enqueue_text(self, text: str, **kw: Any) -> LLMServer:
        return self.enqueue(Reply(text=text, **kw))

    def enqueue_tool_calls(self, *calls: ToolCallSpec, text: str = "", **kw: Any) -> LLMServer:
        return self.enqueue(Reply(text=text, tool_calls=list(calls), **kw))

    def enqueue_error(
        self, status: int, message: str = "error", *, code: str | None = None, **kw: Any
    ) -> LLMServer:
        return self.enqueue(Reply(status=status, error=message, error_code=code, **kw))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _next(self) -> Reply | None:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
            return self.default

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


# -- rendering --------------------------------------------------------------------------------


def _wire_name(name: str) -> str:
    return name.replace(".", "__")


def _calls(reply: Reply) -> list[dict[str, Any]]:
    out = []
    for i, spec in enumerate(reply.tool_calls):
        if isinstance(spec, tuple):
            name, params = spec
            spec = {"name": name, "params": params}
        arguments = spec["arguments"] if "arguments" in spec else json.dumps(spec.get("params") or {})
        out.append(
            {
                "id": spec.get("id") or f"call_srv_{i}",
                "name": _wire_name(spec["name"]),
                "arguments": arguments,
            }
        )
    return out


def _chunks(reply: Reply) -> list[str]:
    if reply.chunks is not None:
        return list(reply.chunks)
    text = reply.text
    if not text:
        return []
    size = max(1, -(-len(text) // 4))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _openai_error(reply: Reply) -> dict[str, Any]:
    return {
        "error": {
            "message": reply.error or "error",
            "type": "invalid_request_error",
            "code": reply.error_code,
        }
    }


def _anthropic_error(reply: Reply) -> dict[str, Any]:
    kind = reply.error_code or {401: "authentication_error", 429: "rate_limit_error"}.get(
        reply.status, "api_error"
    )
    return {"type": "error", "error": {"type": kind, "message": reply.error or "error"}}


def _openai_completion(reply: Reply, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    calls = _calls(reply)
    if calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls
        ]
    usage = dict(reply.usage)
    usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": usage,
    }


def _openai_stream(reply: Reply, model: str) -> list[dict[str, Any]]:
    base = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    for piece in _chunks(reply):
        events.append({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
    calls = _calls(reply)
    for index, call in enumerate(calls):
        # As OpenAI does: id and name first, then the arguments in fragments.
        head = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        events.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
        args = call["arguments"]
        half = len(args) // 2
        for frag in (args[:half], args[half:]):
            if frag:
                delta = {"tool_calls": [{"index": index, "function": {"arguments": frag}}]}
                events.append({**base, "choices": [{"index": 0, "delta": delta}]})
    if reply.stream_error is not None:
        events.append({"error": reply.stream_error})
        return events
    events.append(
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}]}
    )
    usage = dict(reply.usage)
    usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    events.append({**base, "choices": [], "usage": usage})
    return events


def _anthropic_message(reply: Reply, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for call in _calls(reply):
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["name"],
                "input": json.loads(call["arguments"] or "{}"),
            }
        )
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.usage.get("prompt_tokens", 0),
            "output_tokens": reply.usage.get("completion_tokens", 0),
        },
    }


def _anthropic_stream(reply: Reply, model: str) -> list[tuple[str, dict[str, Any]]]:
    msg = _anthropic_message(reply, model)
    start = {
        **msg,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": msg["usage"]["input_tokens"], "output_tokens": 0},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    index = 0
    pieces = _chunks(reply)
    if pieces:
        events.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for piece in pieces:
            delta = {"type": "text_delta", "text": piece}
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    for call in _calls(reply):
        block = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
        events.append(
            ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        )
        args = call["arguments"]
        half = len(args) // 2
        for frag in (args[:half], args[half:]):
            if frag:
                delta = {"type": "input_json_delta", "partial_json": frag}
                events.append(
                    ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if reply.stream_error is not None:
        events.append(("error", {"type": "error", "error": reply.stream_error}))
        return events
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": msg["stop_reason"]},
        "usage": {"output_tokens": msg["usage"]["output_tokens"]},
    }
    events.append(("message_delta", delta))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _make_handler(server: LLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                parsed = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                parsed = None
            path = self.path.split("?", 1)[0]
            server._record(
                RecordedRequest(
                    method="POST",
                    path=path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=raw,
                    json=parsed,
                )
            )
            anthropic = path.rstrip("/").endswith("/messages")
            if not (anthropic or path.rstrip("/").endswith("/chat/completions")):
                self._send_json(
                    404, {"error": {"message": f"llm_server: no route for {path}", "code": "not_found"}}
                )
                return
            reply = server._next()
            if reply is None:
                message = "llm_server: no scripted reply queued (enqueue one, or set server.default)"
                body = (
                    _anthropic_error(Reply(status=400, error=message))
                    if anthropic
                    else {"error": {"message": message, "code": "no_reply"}}
                )
                self._send_json(400, body)
                return
            if reply.delay:
                time.sleep(reply.delay)
            if reply.disconnect:
                self.close_connection = True
                self.connection.close()
                return
            try:
                self._answer(reply, parsed if isinstance(parsed, dict) else {}, anthropic)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def _answer(self, reply: Reply, request: dict[str, Any], anthropic: bool) -> None:
            model = str(request.get("model") or "test-model")
            if reply.raw is not None:
                self._send(reply.status, reply.raw, reply.content_type, reply.headers)
                return
            if reply.status >= 400 or reply.error is not None:
                body = _anthropic_error(reply) if anthropic else _openai_error(reply)
                self._send_json(reply.status if reply.status >= 400 else 500, body, reply.headers)
                return
            if request.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.close_connection = True
                if anthropic:
                    for name, data in _anthropic_stream(reply, model):
                        self._frame(f"event: {name}\ndata: {json.dumps(data)}\n\n", reply.chunk_delay)
                else:
                    for data in _openai_stream(reply, model):
                        self._frame(f"data: {json.dumps(data)}\n\n", reply.chunk_delay)
                    self._frame("data: [DONE]\n\n", 0)
                return
            body = _anthropic_message(reply, model) if anthropic else _openai_completion(reply, model)
            self._send_json(200, body, reply.headers)

        def _frame(self, text: str, delay: float) -> None:
            if delay:
                time.sleep(delay)
            self.wfile.write(text.encode())
            self.wfile.flush()

        def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(body).encode(), "application/json", headers or {})

        def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

    return Handler
