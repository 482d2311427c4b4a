"""Request bodies parsed as JSON with a nesting limit.

``json.loads`` raises ``RecursionError`` (not ``ValueError``) on arrays or objects nested about a
thousand deep, which every caller let escape as a 500; a body nested a few hundred deep parses but
then breaks whatever walks it recursively (schema validation, secret masking, JSONField encoding).
Every JSON body the API reads goes through :func:`loads_body`, which answers both with a 400: the
REST views through :class:`DepthLimitedJSONParser`, the plain async views through :func:`request_json`.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from digitorn_site.errors import ValidationError

# No request of the API needs more; tool parameters and manifests are far shallower.
MAX_JSON_DEPTH = 64


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when containers nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _too_deep() -> str:
    return f"Malformed request body: JSON nested deeper than {MAX_JSON_DEPTH} levels."


def loads_body(raw: bytes | str) -> Any:
    """The parsed body; ValidationError (400) when it is not JSON or nests too deep."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValidationError(_too_deep())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"Malformed request body: expected JSON ({exc}).")
    if json_depth_exceeds(data):
        raise ValidationError(_too_deep())
    return data


def request_json(request) -> Any:
    """The JSON body of a plain (non-DRF) view; an empty body (or only white space) reads as ``{}``,
    so endpoints whose fields are all optional need no body. Whether it is an object is for
    ``base.parse`` to say, with the rest of the validation."""
    if not request.body.strip():
        return {}
    return loads_body(request.body)


class DepthLimitedJSONParser(JSONParser):
    """DRF's JSON parser with the nesting limit (its own catches ValueError only)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(_too_deep().removeprefix("Malformed request body: "))
        if json_depth_exceeds(data):
            raise ParseError(_too_deep().removeprefix("Malformed request body: "))
        return data
