"""OpenAPI: every documented response is wrapped in the envelope, every error shares one schema."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "data", "error", "error_code"],
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "data": {"nullable": True},
        "error": {"type": "string", "description": "A message a person can act on."},
        "error_code": {
            "type": "string",
            "description": "VALIDATION_ERROR, INVALID_MANIFEST, UNAUTHORIZED, FORBIDDEN, RESOURCE_NOT_FOUND, "
            "METHOD_NOT_ALLOWED, CONFLICT, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, RATE_LIMIT_EXCEEDED, "
            "QUEUE_FULL, MISSING_SECRET, INTERNAL_ERROR, ...",
        },
        "details": {"description": "Field errors with their path, where useful.", "nullable": True},
    },
}

ERROR_STATUSES = {
    "400": "Invalid request (the message names the field)",
    "401": "Missing or invalid API key",
    "403": "The key lacks the scope, or the policy blocks the tool",
    "404": "Unknown app, session, task, tool or request",
    "413": "Request body too large",
    "429": "Rate limit exceeded",
}


def _envelope(data_schema: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "data", "error"],
        "properties": {
            "success": {"type": "boolean"},
            "data": data_schema or {"nullable": True},
            "error": {"type": "string", "nullable": True},
        },
    }


def wrap_in_envelope(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for status, response in list(responses.items()):
                content = response.get("content", {})
                if status.startswith("2") and "application/json" in content:
                    inner = content["application/json"].get("schema")
                    content["application/json"]["schema"] = _envelope(inner)
            for status, description in ERROR_STATUSES.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
    return result
