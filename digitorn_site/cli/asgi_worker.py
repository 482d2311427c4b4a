"""The ASGI worker the supervisor starts: Daphne, with its access log redacted.

Daphne writes one access-log line per request, path and query string included; a key passed as
``?token=`` (SSE streams) would land in ``daemon.log``. Its access-log writer is replaced by one that
redacts credentials (``digitorn_site.logredact``) before the line is written. Arguments are Daphne's.
"""

from __future__ import annotations

from daphne import cli as daphne_cli
from daphne.access import AccessLogGenerator

from digitorn_site.logredact import redact


class RedactingAccessLog(AccessLogGenerator):
    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        super().write_entry(host, date, redact(request), status, length, ident, user)


def main() -> None:
    daphne_cli.AccessLogGenerator = RedactingAccessLog  # cli.run instantiates it by this name
    daphne_cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
