"""`digitorn chat APP [--session ID]`: a terminal chat on the session's persistent SSE stream.

A background thread keeps ``GET /sessions/{sid}/events`` open (reconnecting with ``Last-Event-ID``
so nothing is lost or repeated) and hands events to the main thread, which reads lines from stdin
(a terminal or a pipe), posts each to ``/sessions/{sid}/messages`` and prints the turn as it
happens until its ``result`` (the turn's last event). An ``approval_request`` asks "approve? [y/N]" on the next input line
and posts the decision to ``/approve``. ``/quit`` or end of input leaves.
"""

from __future__ import annotations

import json
import queue
import secrets
import sys
import threading
import time
from typing import Any

import httpx

from digitorn_site.cli.client import EXIT_API_ERROR, EXIT_DAEMON_DOWN, ApiClient, CliError, path_part
from digitorn_site.cli.sse import parse_sse_lines

# Control messages from the stream thread travel on the same queue as events.
_DOWN = "__down__"
_FATAL = "__fatal__"
# How long the stream may stay unreachable (daemon worker restarting) before the chat gives up.
RECONNECT_SECONDS = 30.0


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


class EventStream(threading.Thread):
    """Reads the session's SSE stream into ``events`` until ``stop()``."""

    def __init__(self, api: ApiClient, path: str):
        super().__init__(daemon=True, name="digitorn-chat-sse")
        self.api = api
        self.path = path
        self.events: queue.Queue = queue.Queue()
        self.last_id: str | None = None
        self._stopping = threading.Event()
        self._response: httpx.Response | None = None

    def stop(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:  # noqa: BLE001 - closing from another thread may race; we are leaving
                pass

    def run(self) -> None:
        failures = 0
        down_since: float | None = None
        headers = {"Authorization": f"Bearer {self.api.api_key}", "Accept": "text/event-stream"}
        timeout = httpx.Timeout(10.0, read=None)
        with httpx.Client(base_url=self.api.url, timeout=timeout) as http:
            while not self._stopping.is_set():
                request_headers = dict(headers)
                if self.last_id is not None:
                    request_headers["Last-Event-ID"] = self.last_id
                try:
                    with http.stream("GET", self.path, headers=request_headers) as response:
                        self._response = response
                        if response.status_code != 200:
                            response.read()
                            try:
                                ApiClient.unwrap(response)
                                message = f"the event stream answered HTTP {response.status_code}"
                            except CliError as exc:
                                message = exc.message
                            self.events.put((_FATAL, message))
                            return
                        failures, down_since = 0, None
                        for event in parse_sse_lines(response.iter_lines()):
                            if event.id is not None:
                                self.last_id = event.id
                            self.events.put((event.event, event.data))
                except httpx.ConnectError:
                    failures += 1
                except (httpx.HTTPError, OSError, RuntimeError):
                    # A dropped stream (daemon worker restarted, network blip): reconnect below.
                    failures += 1
                finally:
                    self._response = None
                if self._stopping.is_set():
                    return
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > RECONNECT_SECONDS:
                    self.events.put((_DOWN, f"lost the event stream at {self.api.url}{self.path}"))
                    return
                time.sleep(min(3.0, 0.2 * 2**failures))


class Chat:
    def __init__(self, api: ApiClient, app: str, session_id: str, *, out=None, stdin=None):
        self.api = api
        self.app = app
        self.session_id = session_id
        self.out = out or sys.stdout
        self.stdin = stdin or sys.stdin
        self.interactive = bool(getattr(self.stdin, "isatty", lambda: False)())
        self.base = f"/api/apps/{path_part(app)}"
        self.stream = EventStream(api, f"{self.base}/sessions/{path_part(session_id)}/events")
        self.streamed: dict[str, str] = {}

    # --- io ---------------------------------------------------------------------------------
    def say(self, text: str = "", *, end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def read_line(self, prompt: str) -> str | None:
        """One line of input, or None at end of input."""
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = self.stdin.readline()
        if line == "":
            return None
        return line.rstrip("\r\n")

    # --- flow -------------------------------------------------------------------------------
    def run(self) -> int:
        self.stream.start()
        try:
            kind, data = self._next_event(timeout=60.0)
            if kind != "connected":
                return self._control(kind, data) or EXIT_API_ERROR
            self.say(f"chatting with {self.app} in session {self.session_id} — /quit or end of input leaves.")
            while True:
                line = self.read_line("you> ")
                if line is None or line.strip() in ("/quit", "/exit"):
                    return 0
                if not line.strip():
                    continue
                if not self.interactive:
                    self.say(f"you> {line}")
                sent = self.api.post(f"{self.base}/sessions/{path_part(self.session_id)}/messages",
                                     json={"message": line})
                correlation = (sent or {}).get("correlation_id", "")
                if (sent or {}).get("position"):
                    self.say(f"(queued behind {sent['position']} turn(s))")
                code = self._follow_turn(correlation)
                if code is not None:
                    return code
        finally:
            self.stream.stop()

    def _next_event(self, timeout: float | None = None) -> tuple[str, Any]:
        try:
            return self.stream.events.get(timeout=timeout)
        except queue.Empty:
            return _FATAL, f"no answer on the event stream within {timeout:g}s"

    def _control(self, kind: str, data: Any) -> int | None:
        if kind == _DOWN:
            raise CliError(f"{data}; is digitorn still running? (`digitorn status`)", EXIT_DAEMON_DOWN)
        if kind == _FATAL:
            raise CliError(str(data), EXIT_API_ERROR)
        return None

    def _follow_turn(self, correlation: str) -> int | None:
        """Print the turn's events until its ``result``; None to keep chatting, else an exit code."""
        while True:
            kind, data = self._next_event()
            self._control(kind, data)
            data = data if isinstance(data, dict) else {"value": data}
            mine = not correlation or data.get("correlation_id") in (None, "", correlation)
            if kind == "result" and mine:
                self._print_done(data, correlation)
                return None
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:
                handler(data)

    # --- event printers -------------------------------------------------------------------------
    def _on_token(self, data: dict) -> None:
        corr = data.get("correlation_id", "")
        if corr not in self.streamed:
            self.streamed[corr] = ""
            self.say("assistant> ", end="")
        self.streamed[corr] += str(data.get("delta", ""))
        self.say(str(data.get("delta", "")), end="")

    def _end_tokens(self) -> None:
        for corr, text in list(self.streamed.items()):
            if text is not None and not text.endswith("\n"):
                self.say()
            self.streamed[corr] = "\n"

    def _on_tool_start(self, data: dict) -> None:
        self._end_tokens()
        self.say(f"→ {data.get('name')} {_short(data.get('params', {}), 200)}")

    def _on_tool_call(self, data: dict) -> None:
        if data.get("success"):
            self.say(f"← {data.get('name')} ok: {_short(data.get('result'))}")
        else:
            self.say(f"← {data.get('name')} failed: {_short(data.get('error'))}")

    def _on_error(self, data: dict) -> None:
        self._end_tokens()
        code = f" ({data['code']})" if data.get("code") else ""
        self.say(f"error{code}: {data.get('error') or data}")

    def _on_hook(self, data: dict) -> None:
        self.say(f"· hook {data.get('hook_id', '')}")

    def _on_hook_notification(self, data: dict) -> None:  # a manifest hook's `notify` action
        self._end_tokens()
        self.say(f"· {data.get('title', 'notice')}: {_short(data.get('message', ''))}")

    def _on_notification(self, data: dict) -> None:
        self.say(f"· notification: task {data.get('task_id')} ({data.get('tool_name')}) {data.get('status')}")

    def _on_approval_resolved(self, data: dict) -> None:
        status = data.get("status") or ("approved" if data.get("approved") else "denied")
        self.say(f"· approval {data.get('request_id')}: {status}")

    def _on_approval_request(self, data: dict) -> None:
        self._end_tokens()
        reason = f" — {data['description']}" if data.get("description") else ""
        self.say(f"? approval needed: {data.get('tool_name')} {_short(data.get('tool_params', {}), 200)} "
                 f"(risk {data.get('risk_level', '?')}){reason}")
        answer = self.read_line("approve? [y/N] ")
        if not self.interactive:
            self.say(f"approve? [y/N] {answer if answer is not None else ''}")
        approved = (answer or "").strip().lower() in ("y", "yes")
        message = "" if approved else ("no answer (end of input)" if answer is None else "denied in digitorn chat")
        try:
            decided = self.api.post(f"{self.base}/approve", json={
                "request_id": data.get("request_id"), "approved": approved, "message": message})
            self.say(f"· {'approved' if approved else 'denied'} {decided.get('request_id', data.get('request_id'))}")
        except CliError as exc:
            # Already decided elsewhere or expired: the turn goes on; say why.
            self.say(f"· could not record the decision: {exc.message}")

    def _print_done(self, data: dict, correlation: str) -> None:
        streamed = self.streamed.pop(correlation, None) or self.streamed.pop("", None)
        content = data.get("content")
        if streamed:
            if not streamed.endswith("\n"):
                self.say()
        elif content:
            self.say(f"assistant> {content}")
        notes = [flag for flag in ("truncated", "cancelled") if data.get(flag)]
        if notes:
            self.say(f"({', '.join(notes)})")


def cmd_chat(args) -> int:
    session_id = args.session or f"cli-{secrets.token_hex(6)}"
    with ApiClient(url=args.url, api_key=args.api_key) as api:
        # Fail fast and clearly when the daemon is down or the app is unknown.
        api.get(f"/api/apps/{path_part(args.app)}")
        return Chat(api, args.app, session_id).run()
