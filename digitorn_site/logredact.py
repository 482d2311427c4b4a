"""Keys never reach a log line.

EventSource clients pass their key as ``?token=`` (they cannot set headers), so every line that
prints a URL with its query string would write the key to ``daemon.log``: Daphne's access log does
for every request. :func:`redact` blanks such parameters; :class:`RedactFilter` applies it to every
record of Python logging (settings.LOGGING), and the ASGI worker's access log goes through it too
(``digitorn_site.cli.asgi_worker``).
"""

from __future__ import annotations

import logging
import re

# Query parameters that carry credentials; the value runs to the next separator or quote.
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:token|access_token|api_key|apikey|key)=)[^&;#\s\"']*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    if "=" not in text:
        return text
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)


class RedactFilter(logging.Filter):
    """Formats the record's message once, redacted, so arguments cannot smuggle a key past it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
