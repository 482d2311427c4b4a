"""Process-wide pool of MCP client connections, one per (app, server), on one asyncio loop thread.

Why a loop thread: the official SDK is async and a connection is an async context (a stdio
subprocess or an HTTP session) that must be entered and left by the same task. Tool calls arrive
on synchronous threads (request workers, Celery tasks), so every connection lives in a runner task
on a private event loop and callers submit coroutines to it with a deadline.

Lifecycle:
- lazy: nothing starts until a server's tools are listed or called;
- reused: a connection serves every turn of the process while its config is unchanged (a changed
  config — a redeploy — replaces it);
- restarted: a call that finds the connection closed (the stdio server died, the HTTP session was
  dropped) reconnects once and retries, because the request was never delivered; a call during
  which the server dies is reported, and the next call reconnects;
- stopped: on undeploy (in the process that undeploys), after ``idle_timeout`` seconds without
  use (in every process: workers never see the undeploy signal), and at process exit.
A server that fails to start is not retried for ``RETRY_AFTER`` seconds, so a dead server costs one
timeout per window, not one per tool call or index build.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("digitorn.tooling.mcp")

RETRY_AFTER = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_IDLE = 600.0
_BLOCKED_ENV = {"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONSTARTUP", "PYTHONPATH_OVERRIDE",
                "DYLD_INSERT_LIBRARIES", "BASH_ENV", "ENV"}


class McpUnavailable(Exception):
    """The server cannot be reached or died; the message says why (no secrets: config values stay out)."""


def fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _timeout(config: dict[str, Any]) -> float:
    return float(config.get("timeout") or DEFAULT_TIMEOUT)


@dataclass
class _Conn:
    app_id: str
    server_id: str
    config: dict[str, Any]
    digest: str
    client: Any = None
    task: asyncio.Task | None = None
    stop: asyncio.Event | None = None
    tools: list[Any] | None = None
    error: str = ""
    failed_at: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stderr: Any = None
    started: int = 0  # how many times a connection was opened (restarts show here)

    @property
    def connected(self) -> bool:
        return self.client is not None and self.task is not None and not self.task.done()


def _transport(config: dict[str, Any]) -> str:
    transport = config.get("transport")
    if transport:
        return str(transport).replace("-", "_")
    return "stdio" if config.get("command") else "streamable_http"


def _client_for(conn: _Conn) -> Any:
    from mcp import Client, StdioServerParameters

    config = conn.config
    kind = _transport(config)
    timeout = _timeout(config)
    if kind == "stdio":
        env = {str(k): str(v) for k, v in (config.get("env") or {}).items() if str(k).upper() not in _BLOCKED_ENV}
        command = str(config.get("command") or "")
        if command in ("python", "python3"):
            command = sys.executable  # the daemon's interpreter, so SDK-based servers find their packages
        params = StdioServerParameters(command=command, args=[str(a) for a in config.get("args") or []],
                                       env=env or None, cwd=config.get("cwd") or None)
        from mcp.client.stdio import stdio_client

        if conn.stderr is not None:
            conn.stderr.close()
        # Kept open for the connection's life: the child writes to it; its tail explains a failure.
        conn.stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        return Client(stdio_client(params, errlog=conn.stderr), read_timeout_seconds=timeout)
    url = str(config.get("url") or "")
    headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()}
    if kind == "sse":
        from mcp.client.sse import sse_client

        return Client(sse_client(url, headers=headers or None, timeout=timeout), read_timeout_seconds=timeout)
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers=headers or None, timeout=httpx2.Timeout(timeout, read=max(timeout, 300)))
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=timeout)


def _import_sdk() -> None:
    """Import the SDK in the caller's thread: the first import takes seconds, which must neither
    count against a server's connect timeout nor block the loop other connections run on."""
    import mcp.client.sse  # noqa: F401
    import mcp.client.stdio  # noqa: F401
    import mcp.client.streamable_http  # noqa: F401


def _stderr_tail(conn: _Conn) -> str:
    if conn.stderr is None:
        return ""
    try:
        conn.stderr.flush()
        conn.stderr.seek(0, os.SEEK_END)
        size = conn.stderr.tell()
        conn.stderr.seek(max(0, size - 600))
        tail = conn.stderr.read().strip()
    except (OSError, ValueError):
        return ""
    return f" Server stderr (end): {tail[-400:]}" if tail else ""


def _dead(client: Any) -> bool:
    """The SDK's dispatcher marks itself closed when the transport ends (best effort: private)."""
    dispatcher = getattr(getattr(client, "_session", None), "_dispatcher", None)
    return bool(getattr(dispatcher, "_closed", False))


def _closed(exc: BaseException) -> bool:
    """The connection is gone (as opposed to the server answering with an error)."""
    import anyio
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED

    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    return isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError | anyio.EndOfStream)


class Pool:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._guard = threading.Lock()
        self._conns: dict[tuple[str, str], _Conn] = {}

    # -- the loop thread ------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._loop is None or self._pid != os.getpid() or not (self._thread and self._thread.is_alive()):
                # A forked child (prefork worker) inherits no running thread: start its own loop.
                self._conns = {}
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop.run_forever, name="digitorn-mcp", daemon=True)
                self._thread.start()
                asyncio.run_coroutine_threadsafe(self._reaper(), self._loop)
            return self._loop

    def run(self, coro_factory, timeout: float) -> Any:
        _import_sdk()
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(coro_factory(), loop)
        try:
            return future.result(timeout + 15)  # room for the closes that follow a timeout
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise McpUnavailable(f"no answer within {timeout:g} s")

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(15)
            now = time.monotonic()
            for conn in list(self._conns.values()):
                idle = float(conn.config.get("idle_timeout") or DEFAULT_IDLE)
                if conn.connected and now - conn.last_used > idle:
                    log.info("mcp: stopping idle server %s of app %s", conn.server_id, conn.app_id)
                    await self._close(conn)

    # -- connections ----------------------------------------------------------------------------
    def _conn(self, app_id: str, server_id: str, config: dict[str, Any]) -> _Conn:
        digest = fingerprint(config)
        key = (app_id, server_id)
        conn = self._conns.get(key)
        if conn is None or conn.digest != digest:
            if conn is not None:
                asyncio.ensure_future(self._close(conn))  # a redeploy changed the config
            conn = _Conn(app_id=app_id, server_id=server_id, config=config, digest=digest)
            self._conns[key] = conn
        conn.last_used = time.monotonic()
        return conn

    async def _open(self, conn: _Conn) -> None:
        if conn.connected:
            return
        if conn.failed_at and time.monotonic() - conn.failed_at < RETRY_AFTER:
            raise McpUnavailable(conn.error)
        await self._close(conn)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future = loop.create_future()
        stop = asyncio.Event()

        async def runner() -> None:
            try:
                async with _client_for(conn) as client:
                    if not ready.done():
                        ready.set_result(client)
                    await stop.wait()
            except BaseException as exc:  # noqa: BLE001 - reported through `ready`
                if not ready.done():
                    ready.set_exception(exc)
                elif not isinstance(exc, asyncio.CancelledError):
                    log.info("mcp: server %s of app %s closed: %s", conn.server_id, conn.app_id, exc)
            finally:
                conn.client = None

        conn.stop = stop
        conn.task = asyncio.create_task(runner())
        timeout = _timeout(conn.config)
        try:
            client = await asyncio.wait_for(asyncio.shield(ready), timeout)
            result = await asyncio.wait_for(client.list_tools(), timeout)
        except BaseException as exc:
            await self._close(conn)
            if ready.done() and not ready.cancelled():
                ready.exception()  # retrieved: no "exception was never retrieved" noise at exit
            reason = f"did not answer within {timeout:g} s" if isinstance(exc, TimeoutError) else _describe(exc)
            conn.error = f"cannot connect to MCP server '{conn.server_id}': {reason}.{_stderr_tail(conn)}"
            conn.failed_at = time.monotonic()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise McpUnavailable(conn.error) from None
        conn.client = client
        conn.tools = list(result.tools)
        conn.error = ""
        conn.failed_at = 0.0
        conn.started += 1

    async def _close(self, conn: _Conn) -> None:
        task, stop = conn.task, conn.stop
        conn.task = conn.stop = None
        conn.client = None
        if stop is not None:
            stop.set()
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except BaseException:  # noqa: BLE001 - a stuck shutdown is cancelled instead
                task.cancel()

    async def _request(self, conn: _Conn, op) -> Any:
        """Run ``op(client)``; a connection already closed (a dead stdio server, a dropped HTTP
        session) is reopened first. One that closes during the call is reported, not retried: the
        server may have acted on it."""
        async with conn.lock:
            if conn.connected and _dead(conn.client):
                log.info("mcp: server %s of app %s died; restarting", conn.server_id, conn.app_id)
                await self._close(conn)
            await self._open(conn)
            client = conn.client
        timeout = _timeout(conn.config)
        try:
            return await asyncio.wait_for(op(client), timeout)
        except TimeoutError:
            raise McpUnavailable(f"MCP server '{conn.server_id}' did not answer within {timeout:g} s") from None
        except BaseException as exc:
            if not _closed(exc):
                raise
        async with conn.lock:
            await self._close(conn)
        raise McpUnavailable(
            f"MCP server '{conn.server_id}' closed the connection during the call; it restarts on the next "
            f"call.{_stderr_tail(conn)}"
        )

    # -- public, synchronous --------------------------------------------------------------------
    def tools(self, app_id: str, server_id: str, config: dict[str, Any]) -> list[Any]:
        async def go() -> list[Any]:
            conn = self._conn(app_id, server_id, config)
            async with conn.lock:
                await self._open(conn)
            return list(conn.tools or [])

        return self.run(go, _timeout(config) * 2)

    def tools_many(self, app_id: str, servers: dict[str, dict[str, Any]]) -> dict[str, list[Any] | Exception]:
        """Every server's tools, connecting concurrently: an index build waits for the slowest
        server, not for the sum of their timeouts."""
        if not servers:
            return {}

        async def one(server_id: str, config: dict[str, Any]) -> list[Any]:
            conn = self._conn(app_id, server_id, config)
            async with conn.lock:
                await self._open(conn)
            return list(conn.tools or [])

        async def go() -> dict[str, list[Any] | Exception]:
            ids = list(servers)
            results = await asyncio.gather(*(one(i, servers[i]) for i in ids), return_exceptions=True)
            return {
                i: r if not isinstance(r, BaseException) or isinstance(r, Exception) else McpUnavailable(str(r))
                for i, r in zip(ids, results, strict=True)
            }

        return self.run(go, max(_timeout(c) for c in servers.values()) * 2)

    def request(self, app_id: str, server_id: str, config: dict[str, Any], op) -> Any:
        async def go() -> Any:
            return await self._request(self._conn(app_id, server_id, config), op)

        return self.run(go, _timeout(config) * 3)

    def status(self, app_id: str, server_id: str) -> dict[str, Any]:
        conn = self._conns.get((app_id, server_id))
        if conn is None:
            return {"status": "not_started"}
        return {
            "status": "connected" if conn.connected else ("error" if conn.error else "stopped"),
            "error": conn.error or None,
            "tools_count": len(conn.tools or []) if conn.connected else 0,
            "starts": conn.started,
        }

    def stop(self, app_id: str, server_id: str | None = None) -> int:
        """Close an app's connections (one server, or all); returns how many were open."""
        if self._loop is None or self._pid != os.getpid():
            return 0

        async def go() -> int:
            count = 0
            for key, conn in list(self._conns.items()):
                if key[0] == app_id and (server_id is None or key[1] == server_id):
                    count += int(conn.connected)
                    await self._close(conn)
                    conn.failed_at = 0.0
                    if server_id is None:
                        self._conns.pop(key, None)
            return count

        try:
            return self.run(go, 10)
        except McpUnavailable:
            return 0

    def stop_all(self) -> None:
        if self._loop is None or self._pid != os.getpid():
            return

        async def go() -> None:
            for conn in list(self._conns.values()):
                await self._close(conn)
            self._conns.clear()

        try:
            self.run(go, 10)
        except Exception:  # noqa: BLE001 - process exit
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        inner = exc.exceptions[0] if exc.exceptions else exc
        return _describe(inner)
    if isinstance(exc, FileNotFoundError):
        return f"command not found ({exc.filename or exc})"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


POOL = Pool()
atexit.register(POOL.stop_all)
