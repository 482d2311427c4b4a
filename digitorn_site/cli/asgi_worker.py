"""The ASGI worker the supervisor starts: Daphne, with its access log redacted.

Daphne writes one access-log line per request, path and query string included; a key passed as
``?token=`` (SSE streams) would land in ``daemon.log``. Its access-log writer is replaced by one that
redacts credentials (``digitorn_site.logredact``) before the line is written. Arguments are Daphne's.
"""

from __future__ import annotations

import asyncio

from daphne import cli as daphne_cli
from daphne import http_protocol
from daphne.access import AccessLogGenerator
from daphne.http_protocol import HTTPFactory
from twisted.internet import tcp
from twisted.web import http as twisted_http

from digitorn_site.logredact import redact


class RedactingAccessLog(AccessLogGenerator):
    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        super().write_entry(host, date, redact(request), status, length, ident, user)


def _twisted_access_line(self, request) -> None:
    """Twisted's own access line, only where it goes somewhere.

    Besides Daphne's access log, Twisted's HTTP factory formats a second, combined-log-format line
    per request (headers looked up, a string built) and hands it to Twisted's log, which Daphne
    points at a discarding observer at verbosity <= 1 (the supervisor's ``-v 1``): pure waste on
    every request. At a higher verbosity Twisted's log reaches Python logging (and its RedactFilter),
    so the line is written as before."""
    if self.server.verbosity > 1:
        _twisted_log(self, request)


_twisted_log = HTTPFactory.log


class SendSoonServer(tcp.Server):
    """Twisted's server-side TCP connection, minus two epoll calls and a reactor dispatch per write.

    Twisted never sends on ``write``: it buffers, registers the socket for writability (an
    ``epoll_ctl``), sends from ``doWrite`` when the loop reports the socket writable, then
    unregisters it (another ``epoll_ctl``), each step through the reactor's logging and context
    layers. An SSE turn writes three or four times. Here, when nothing is buffered and nothing is
    pending (the common case: the kernel's send buffer has room), the bytes go into Twisted's own
    buffer and one callback at the end of this pass of the event loop sends them: the writes of one
    pass still leave in one ``send``, as before. Whatever that ``send`` cannot take stays in
    Twisted's buffer and the socket is registered, so a slow client is served by Twisted's code
    (its buffer, its producer pausing) exactly as before. Anything unusual (a close or half-close
    under way, TLS started on the connection, a send error) is also left to Twisted, which finds
    the error and closes the connection its own way.
    """

    _send_pending = False

    def write(self, data: bytes) -> None:
        if not self._sends_soon(data):
            return super().write(data)
        if data:
            self._tempDataBuffer.append(data)
            self._tempDataLen += len(data)
            self._maybePauseProducer()

    def writeSequence(self, iovec) -> None:
        data = b"".join(iovec)  # TypeError for str, as Twisted
        if not self._sends_soon(data):
            return super().writeSequence([data])
        if data:
            self._tempDataBuffer.append(data)
            self._tempDataLen += len(data)
            self._maybePauseProducer()

    def _sends_soon(self, data: bytes) -> bool:
        if not isinstance(data, bytes) or not self._plain_and_open():
            return False
        if self.producer is not None and not self.streamingProducer:
            return False  # a pull producer is asked for more from doWrite: Twisted's way
        if self._send_pending:
            return True
        if self.dataBuffer or self._tempDataLen:  # Twisted's buffer is draining: its turn
            return False
        try:
            asyncio.get_running_loop().call_soon(self._send_now)
        except RuntimeError:  # no loop running (shutting down): Twisted's way
            return False
        self._send_pending = True
        return True

    def _plain_and_open(self) -> bool:
        return not (
            self.TLS or not self.connected or self.disconnecting or self._writeDisconnecting
            or self._writeDisconnected or getattr(self, "_aborting", False)
        )

    def _send_now(self) -> None:
        self._send_pending = False
        if not self.connected or getattr(self, "_aborting", False) or not self._tempDataLen:
            return  # lost or aborted meanwhile (Twisted drops the buffer), or already sent by Twisted
        if self.dataBuffer or not self._plain_and_open():
            self.startWriting()  # Twisted's own path (it may already be on it: no harm)
            return
        data = b"".join(self._tempDataBuffer)
        self._tempDataBuffer = []
        self._tempDataLen = 0
        sent = self.writeSomeData(data)  # at most SEND_LIMIT bytes; 0 when the socket is full
        if isinstance(sent, Exception) or sent < len(data):
            # The rest (or all of it, on an error) goes Twisted's way: doWrite sends it as the socket
            # drains, or meets the error again and closes the connection.
            self.dataBuffer = data
            self.offset = 0 if isinstance(sent, Exception) else sent
            self.startWriting()
        elif self.producer is not None and self.producerPaused:
            # Everything is out: what doWrite does once its buffer is empty.
            self.producerPaused = False
            self.producer.resumeProducing()


class _TwistedHttp:
    """``twisted.web.http`` as daphne's module sees it, minus the proxy Twisted puts in front of it.

    That module is wrapped in a deprecation proxy whose every attribute read is a dozen Python
    steps, and daphne reads it per request and per body message (``http.Request.write(self, ...)``).
    The names daphne uses are plain class attributes here; any other name goes through the proxy,
    warnings included."""

    Request = twisted_http.Request
    HTTPFactory = twisted_http.HTTPFactory

    def __getattr__(self, name: str):
        return getattr(twisted_http, name)


def main() -> None:
    daphne_cli.AccessLogGenerator = RedactingAccessLog  # cli.run instantiates it by this name
    HTTPFactory.log = _twisted_access_line
    tcp.Port.transport = SendSoonServer  # the connections daphne accepts (its --fd/tcp endpoints)
    http_protocol.http = _TwistedHttp()
    daphne_cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
