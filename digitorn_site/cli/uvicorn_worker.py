"""The ASGI worker under uvicorn (opt-in: ``digitorn start --server uvicorn``, ``DIGITORN_SERVER``).

Daphne (``digitorn_site.cli.asgi_worker``) stays the default; this serves the same application
(``digitorn_site.asgi:application``, plain ASGI) with uvicorn on uvloop + httptools, and keeps what
that worker guarantees:

- the listening model: the supervisor's SO_REUSEPORT socket, inherited as ``--fd N``. uvicorn's own
  ``fd=`` option rebuilds the socket as AF_UNIX; here it is rebuilt with the family the descriptor
  really has and handed to uvicorn as a ready socket.
- no credential in the access log: uvicorn's logging configuration is not installed
  (``log_config=None``), so its loggers (``uvicorn.error``, ``uvicorn.access``) propagate to the
  root handler of settings.LOGGING, whose RedactFilter blanks ``?token=`` and friends, as daphne's
  redacted access log does. ``-v``: 0 warnings only and no access log, 1 info plus the access log
  (what the supervisor passes, as to daphne), 2 debug.
- limits: a request head of at most 32 KiB and 500 fields (Twisted's, under daphne; httptools has
  none); bodies are bounded by Django's and our middleware, as under daphne.
- proxy headers: daphne runs here without ``--proxy-headers``, so ``X-Forwarded-For`` is ignored;
  uvicorn trusts it from 127.0.0.1 by default, switched off here.
- no lifespan (the app has none: uvicorn would only log that it is unsupported), no websockets (the
  app serves none; an upgrade request is answered as plain HTTP by Django).
- the application close timeout (daphne's ``--application-close-timeout``): once the client went
  away, a request still running after that many seconds is cancelled.
- a graceful stop on SIGTERM within the supervisor's grace: the listening socket closes, idle
  keep-alive connections close, requests in flight get ``--graceful-timeout`` seconds, and the
  open streams (a response started and not finished: SSE) are ended at once the way a client's
  disconnect ends them, so their generators close cleanly instead of being cancelled at the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LOG_LEVELS = {0: "warning", 1: "info", 2: "debug"}
# Twisted (under daphne) answers 400 past a 16 KiB request line, 16 KiB of header lines or 500 header
# fields; httptools has no limit at all (a 2 MB header was read whole). The same bounds here.
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADER_FIELDS = 500


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head (see MAX_HEAD_BYTES): a head still
    incomplete after that many bytes, or with too many fields, gets uvicorn's plain 400 and the
    connection is closed, as Twisted does."""

    _head_bytes = 0  # bytes of a head that spans reads, so far
    _field_bytes = 0  # bytes of the current head's URL and fields
    _heads = 0  # heads parsed on this connection
    _in_body = False

    def data_received(self, data: bytes) -> None:
        was_head, heads = not self._in_body, self._heads
        super().data_received(data)
        if was_head and self._heads == heads and not self.transport.is_closing():
            self._head_bytes += len(data)  # every byte of this read belongs to an unfinished head
            if self._head_bytes > MAX_HEAD_BYTES:
                self.send_400_response("Request header fields too large.")

    def on_message_begin(self) -> None:
        self._field_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._bound(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADER_FIELDS:
            raise ValueError("too many header fields")  # httptools turns it into the 400 above
        self._bound(len(name) + len(value))
        super().on_header(name, value)

    def _bound(self, size: int) -> None:
        self._field_bytes += size
        if self._field_bytes > MAX_HEAD_BYTES:
            raise ValueError("request head too large")

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._head_bytes = 0
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()


def close_timeout(app, seconds: float):
    """``app`` with daphne's application close timeout: after the ``http.disconnect`` the app
    receives, it has ``seconds`` to finish before it is cancelled. Django's handler listens for the
    disconnect and stops by itself; this bounds an app that would not."""

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        task = asyncio.current_task()
        timer = None

        async def receive_():
            nonlocal timer
            message = await receive()
            if message["type"] == "http.disconnect" and timer is None:
                timer = asyncio.get_running_loop().call_later(seconds, task.cancel)
            return message

        try:
            return await app(scope, receive_, send)
        finally:
            if timer is not None:
                timer.cancel()

    return guarded


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn re-raises the SIGTERM it caught once it has stopped, so the process dies of it
        # (exit -15); a stop asked for and carried out is a clean exit (0), as daphne's.
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def shutdown(self, sockets=None) -> None:
        # uvicorn waits (up to timeout_graceful_shutdown) for every response to finish, and an SSE
        # stream never does: then it cancels the request tasks, each logged as an "Exception in ASGI
        # application". End the streams first: the response is terminated (the last chunk, so the
        # client reads a complete response and reconnects with its Last-Event-ID), the connection
        # closed, and the app sees http.disconnect and closes its stream as when a client leaves.
        for connection in list(self.server_state.connections):
            end_stream(connection)
        await super().shutdown(sockets=sockets)


def end_stream(connection) -> None:
    """End a connection's response if it is a stream (started, not finished); else leave it be.

    uvicorn 0.54 internals (pinned in requirements.txt): the protocol's ``cycle`` and ``transport``,
    the cycle's response flags, ``disconnected`` and ``message_event``, set here as uvicorn's
    ``connection_lost`` sets them (sends are dropped from now on; receive answers http.disconnect)."""
    cycle = getattr(connection, "cycle", None)
    transport = getattr(connection, "transport", None)
    if cycle is None or transport is None or not cycle.response_started or cycle.response_complete:
        return
    if transport.is_closing():
        return
    if cycle.chunked_encoding:
        transport.write(b"0\r\n\r\n")
    cycle.disconnected = True
    cycle.message_event.set()
    transport.close()


def build(args: argparse.Namespace) -> tuple[Server, socket.socket]:
    # socket(fileno=) detects the descriptor's family (AF_INET/AF_INET6) and type.
    sock = socket.socket(fileno=args.fd)
    verbosity = max(0, min(args.verbosity, 2))
    config = uvicorn.Config(
        args.application,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        log_level=LOG_LEVELS[verbosity],
        access_log=verbosity >= 1,
        proxy_headers=False,
        backlog=1024,  # as the supervisor's listen(); uvicorn would listen() again with 2048
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    config.load()  # imports the app (and sets Django up, with settings.LOGGING) before serving
    config.loaded_app = close_timeout(config.loaded_app, args.application_close_timeout)
    return Server(config), sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m digitorn_site.cli.uvicorn_worker")
    parser.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    parser.add_argument("--application-close-timeout", type=float, default=5.0,
                        help="seconds an app may run after its client disconnected (default 5)")
    parser.add_argument("--graceful-timeout", type=float, default=5.0,
                        help="seconds requests in flight get to finish on SIGTERM (default 5)")
    parser.add_argument("-v", "--verbosity", type=int, default=1)
    parser.add_argument("application", help="the ASGI application, module:attribute")
    args = parser.parse_args(argv)
    server, sock = build(args)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
