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
    "415": "Unsupported media type (an upload that is not multipart, an attachment that is not an image)",
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


def _path_param(name: str, pattern: str) -> dict[str, Any]:
    return {"in": "path", "name": name, "required": True, "schema": {"type": "string", "pattern": f"^{pattern}$"}}


def _json_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:  # OpenAPI 3.0 forbids an empty ``required`` list
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


_TEXT = {"type": "string", "maxLength": 1024 * 1024, "description": "at most 1 MiB of UTF-8"}
_MESSAGE_EXTRAS = {
    "images": {
        "type": "array", "maxItems": 10,
        "description": "Validated (base64, image/* else 415), then ignored: the brains here are text-only.",
        "items": {"type": "object", "required": ["data", "mime"], "properties": {
            "data": {"type": "string"}, "mime": {"type": "string"}, "name": {"type": "string"}}},
    },
    "workspace": {"type": "string", "maxLength": 4096, "description": "Accepted and ignored (see README)."},
    "queue_mode": {"type": "string", "enum": ["async", "wait", "replace_last"]},
    "client_message_id": {"type": "string", "maxLength": 200},
}
_SESSION_ID = {"type": "string", "pattern": r"^[A-Za-z0-9_.:\-]{1,200}$"}
_DONE = {
    "type": "object",
    "properties": {
        "content": {"type": "string"},
        "session_id": {"type": "string"},
        "correlation_id": {"type": "string"},
        "tool_calls_count": {"type": "integer"},
        "turns_used": {"type": "integer"},
        "truncated": {"type": "boolean"},
        "cancelled": {"type": "boolean"},
    },
}
_TASK = {
    "type": "object",
    "required": ["task_id", "tool_name", "status"],
    "properties": {
        "task_id": {"type": "string"},
        "tool_name": {"type": "string"},
        "params": {"type": "object"},
        "session_id": {"type": "string", "nullable": True},
        "status": {"type": "string",
                   "enum": ["queued", "waiting_approval", "running", "completed", "failed", "cancelled"]},
        "result": {"nullable": True},
        "error": {"type": "string", "nullable": True},
        "hint": {"type": "string"},
        "created_at": {"type": "number"},
        "started_at": {"type": "number", "nullable": True},
        "finished_at": {"type": "number", "nullable": True},
        "elapsed_seconds": {"type": "number", "nullable": True},
        "approval_request_id": {"type": "string", "nullable": True},
        "cancel_requested": {"type": "boolean"},
    },
}
# For text/event-stream the schema describes one event as a client parses it (``data`` is the JSON text).
SSE_EVENT_TYPES = [
    "connected", "tool_start", "tool_call", "result", "error", "hook", "approval_request", "approval_resolved",
    "notification", "notification_result", "message_queued", "token", "done",
]
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": SSE_EVENT_TYPES},
        "data": {"type": "string", "description": "A JSON object (DESIGN §4 lists each event's fields)."},
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's per-session seq."},
    },
}
_SSE = {"description": "Server-Sent Events, one `id`/`event`/`data` frame each",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}}}


_QUEUED = {"type": "object", "properties": {
    "correlation_id": {"type": "string"}, "position": {"type": "integer"}, "queue_depth": {"type": "integer"},
    "client_message_id": {"type": "string", "nullable": True}, "queue_mode": {"type": "string"},
    "replaced": {"type": "boolean"}, "ignored": {"type": "array", "items": {"type": "string"}}}}


def _json_ok(data: dict[str, Any] | None, description: str = "") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": data or {}}}}


def _plain_view_paths() -> dict[str, dict[str, Any]]:
    """The plain async views (SSE streams, turn waits, task waits): drf-spectacular only sees DRF views."""
    from digitorn_site.converters import APP_ID_PATTERN, NameConverter

    app = _path_param("app_id", APP_ID_PATTERN)
    session = _path_param("session_id", NameConverter.regex)
    task = _path_param("task_id", NameConverter.regex)
    chat_body = _json_body({"session_id": _SESSION_ID, "message": _TEXT, **_MESSAGE_EXTRAS}, ["session_id", "message"])
    base = "/api/apps/{app_id}"
    return {
        f"{base}/run": {"post": {
            "operationId": "app_run_post", "description": "One-shot execution of a one_shot app.",
            "parameters": [app],
            "requestBody": _json_body(
                {"input": _TEXT, "input_type": {"type": "string", "enum": ["text", "image", "file", "json", "any"]}},
                ["input"],
            ),
            "responses": {"200": _json_ok({"type": "object", "properties": {
                "content": {"type": "string"}, "tool_calls_count": {"type": "integer"},
                "turns_used": {"type": "integer"}, "truncated": {"type": "boolean"}}})},
        }},
        f"{base}/chat": {"post": {
            "operationId": "chat_post", "description": "One conversation turn; answers the turn's `done` payload.",
            "parameters": [app], "requestBody": chat_body, "responses": {"200": _json_ok(_DONE)},
        }},
        f"{base}/chat/stream": {"post": {
            "operationId": "chat_stream_post", "description": "One conversation turn as an SSE stream ending with `done`.",
            "parameters": [app], "requestBody": chat_body, "responses": {"200": _SSE},
        }},
        f"{base}/sessions/{{session_id}}/messages": {"post": {
            "operationId": "session_messages_post",
            "description": "Queue a message; its turn's events arrive on the session's stream.",
            "parameters": [app, session],
            "requestBody": _json_body({"message": _TEXT, **_MESSAGE_EXTRAS}, ["message"]),
            "responses": {
                "202": _json_ok(_QUEUED),
                "200": _json_ok({**_QUEUED, "properties": {**_QUEUED["properties"], "result": _DONE}},
                                "queue_mode=wait: the turn's result"),
            },
        }},
        f"{base}/sessions/{{session_id}}/events": {"get": {
            "operationId": "session_events_get",
            "description": "The session's persistent SSE stream; `?token=` is accepted here (EventSource has no headers).",
            "parameters": [
                app, session,
                {"in": "query", "name": "since", "required": False, "schema": {"type": "integer", "minimum": 0}},
                {"in": "query", "name": "token", "required": False, "schema": {"type": "string"}},
                {"in": "header", "name": "Last-Event-ID", "required": False, "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {"200": _SSE},
        }},
        f"{base}/notifications": {"post": {
            "operationId": "notifications_drain_post",
            "description": "Drains pending notifications into a turn streamed as SSE; JSON `{notifications: 0}` when none.",
            "parameters": [app], "requestBody": _json_body({"session_id": _SESSION_ID}, ["session_id"]),
            "responses": {"200": {"description": "", "content": {
                **_SSE["content"],
                "application/json": {"schema": {"type": "object", "properties": {"notifications": {"type": "integer"}}}},
            }}},
        }},
        "/api/metrics/prometheus": {"get": {
            "operationId": "metrics_prometheus_get", "tags": ["metrics"],
            "description": "The metrics as Prometheus gauges (text exposition format 0.0.4); needs the admin scope.",
            "responses": {"200": {"description": "", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        f"{base}/background-tasks/{{task_id}}": {
            "get": {"operationId": "background_task_get", "parameters": [app, task], "responses": {"200": _json_ok(_TASK)}},
            "delete": {"operationId": "background_task_delete", "description": "Cancel the task (answers it settled).",
                       "parameters": [app, task], "responses": {"200": _json_ok(_TASK)}},
        },
        f"{base}/background-tasks/{{task_id}}/wait": {"post": {
            "operationId": "background_task_wait_post", "description": "Wait up to `timeout` seconds for the task to finish.",
            "parameters": [app, task],
            "requestBody": _json_body({"timeout": {"type": "number", "minimum": 0, "nullable": True}}, []),
            "responses": {"200": _json_ok(_TASK)},
        }},
    }


def wrap_in_envelope(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    paths = result.setdefault("paths", {})
    for route, item in _plain_view_paths().items():
        for operation in item.values():
            operation.setdefault("tags", ["apps"])
        paths.setdefault(route, {}).update(item)
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
