"""The ASGI worker the supervisor starts: Daphne, with its access log redacted.

Daphne writes one access-log line per request, path and query string included; a key passed as
``?token=`` (SSE streams) would land in ``daemon.log``. Its access-log writer is replaced by one that
redacts credentials (``digitorn_site.logredact``) before the line is written. Arguments are Daphne's.
"""

from __future__ import annotations

from daphne import cli as daphne_cli
from daphne.access import AccessLogGenerator
from daphne.http_protocol import HTTPFactory

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


def main() -> None:
    daphne_cli.AccessLogGenerator = RedactingAccessLog  # cli.run instantiates it by this name
    HTTPFactory.log = _twisted_access_line
    daphne_cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
