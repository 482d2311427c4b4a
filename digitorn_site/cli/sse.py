"""A small Server-Sent-Events reader over an httpx streaming response.

Used by `digitorn chat` and by the end-to-end test harness. It follows the WHATWG parsing rules the
daemon relies on: ``id:``, ``event:`` and multi-line ``data:`` fields, comments (``: ping``)
ignored, a blank line dispatches the event, and ``data`` is decoded as JSON when it is JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class SseEvent:
    event: str
    data: Any
    id: str | None = None
    raw: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.event, "data": self.data}


def parse_sse_lines(lines: Iterable[str]) -> Iterator[SseEvent]:
    event_type = ""
    data_lines: list[str] = []
    last_id: str | None = None
    for raw_line in lines:
        line = raw_line.rstrip("\r\n")
        if line == "":
            if data_lines or event_type:
                raw = "\n".join(data_lines)
                try:
                    data: Any = json.loads(raw) if raw else None
                except ValueError:
                    data = raw
                yield SseEvent(event=event_type or "message", data=data, id=last_id, raw=raw)
            event_type, data_lines = "", []
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data_lines.append(value)
        elif name == "id":
            last_id = value
    # A stream cut mid-event drops that event, as browsers do.
