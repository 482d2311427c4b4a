"""OpenAPI: every documented response is wrapped in the envelope, every error shares one schema."""

from __future__ import annotations

import re
from typing import Any

from digitorn_site.converters import APP_ID_PATTERN, NameConverter

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
        "usage": {"type": "object", "properties": {
            "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"}}},
        "tool_calls_count": {"type": "integer"},
        "turns_used": {"type": "integer"},
        "error": {"type": "string", "nullable": True},
        "correlation_id": {"type": "string"},
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
    "notification", "notification_result", "message_queued", "token", "agent_spawn", "agent_result",
    "memory_update", "status", "in_token", "out_token", "stream_done", "hook_notification", "agent_event",
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
            "operationId": "chat_post", "description": "One conversation turn; answers the turn's `result` event payload.",
            "parameters": [app], "requestBody": chat_body, "responses": {"200": _json_ok(_DONE)},
        }},
        f"{base}/chat/stream": {"post": {
            "operationId": "chat_stream_post", "description": "One conversation turn as an SSE stream ending with `result`.",
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


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_S, _I, _N, _B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_NS, _NN = {"type": "string", "nullable": True}, {"type": "number", "nullable": True}
_SESSION = _obj(
    ["session_id", "app_id", "title", "user_id", "created_at", "last_active", "turn_count", "message_count",
     "last_message_preview", "is_active", "status"],
    session_id=_S, app_id=_S, title=_S, user_id=_S, created_at=_N, last_active=_N, turn_count=_I,
    message_count=_I, last_message_preview=_S, last_message_role=_NS, is_active=_B, status=_S,
)
_PENDING = _obj(
    ["request_id", "session_id", "agent_id", "user_id", "app_id", "tool_name", "tool_params", "risk_level",
     "description", "created_at", "expires_at"],
    request_id=_S, session_id=_NS, agent_id=_S, user_id=_S, app_id=_S, tool_name=_S,
    tool_params={"type": "object"}, risk_level=_S, description=_S, origin=_S, created_at=_N, expires_at=_N,
)
_CATEGORY = _obj(["id", "summary", "tool_count"], id=_S, summary=_S, tool_count=_I)
_TOOL_SUMMARY = _obj(["name", "description", "risk_level", "tags"], name=_S, description=_S, risk_level=_S,
                     tags={"type": "array", "items": _S})
# ``data`` of the DRF views, by operationId: the original Digitorn's shapes (README "API shapes").
DATA_SCHEMAS: dict[str, dict[str, Any]] = {
    "session_list_get": _obj(["sessions", "total", "limit", "offset"], sessions={"type": "array", "items": _SESSION},
                             total=_I, limit=_I, offset=_I),
    "session_detail_get": {**_SESSION, "properties": {**_SESSION["properties"], "tokens": _obj(
        ["prompt", "completion", "total"], prompt=_I, completion=_I, total=_I), "context": {"type": "object"}}},
    "session_history_get": _obj(
        ["session_id", "messages", "events", "events_total", "events_next_seq", "events_has_more"],
        session_id=_S,
        messages={"type": "array", "items": _obj(["role", "content", "created_at"], role={
            "type": "string", "enum": ["user", "assistant"]}, content=_S, created_at=_N, tool_calls={
            "type": "array", "items": _obj(["id", "name", "params", "result", "status"], id=_S, name=_S,
                                           params={"type": "object"}, result={"nullable": True}, status=_S)})},
        events={"type": "array", "items": _obj(["seq", "type", "data"], seq=_I, type=_S, data={"type": "object"},
                                               correlation_id=_S, ts=_N)},
        events_total=_I, events_next_seq=_I, events_has_more=_B,
    ),
    "approval_list_get": _obj(["pending"], pending={"type": "array", "items": _PENDING}),
    "approve_post": _obj(["request_id", "approved", "payload_received"], request_id=_S, approved=_B,
                         payload_received=_B, status=_S),
    "tool_categories_get": _obj(["categories", "total_categories", "total_tools"],
                                categories={"type": "array", "items": _CATEGORY}, total_categories=_I, total_tools=_I),
    "tool_category_get": _obj(["category", "summary", "tools", "page", "total_pages", "total_tools"], category=_S,
                              summary=_S, tools={"type": "array", "items": _TOOL_SUMMARY}, page=_I, total_pages=_I,
                              total_tools=_I),
    "tool_search_get": _obj(["query", "count", "tools"], query=_S, mode=_S, count=_I, tools={"type": "array", "items": _obj(
        ["name", "description", "relevance", "risk_level", "tags", "params_summary", "parameters"], name=_S,
        description=_S, relevance=_N, risk_level=_S, tags={"type": "array", "items": _S}, params_summary=_S,
        parameters={"type": "object"})}),
    "tool_detail_get": _obj(["name", "module", "description", "parameters", "examples", "risk_level", "policy"],
                            name=_S, module=_S, description=_S, parameters={"type": "object"},
                            examples={"type": "array", "items": {}}, side_effects={"type": "array", "items": _S},
                            aliases={"type": "array", "items": _S}, tags={"type": "array", "items": _S},
                            risk_level=_S, irreversible=_B, policy=_S),
    "tool_index_get": _obj(["total_tools", "total_categories", "tool_injection_mode", "categories"], total_tools=_I,
                           total_categories=_I, tool_injection_mode={"type": "string", "enum": ["direct", "discovery"]},
                           categories={"type": "array", "items": {**_CATEGORY, "properties": {
                               **_CATEGORY["properties"], "tools": {"type": "array", "items": _obj(
                                   ["name", "description", "params_schema"], name=_S, description=_S,
                                   params_schema={"type": "object"})}}}}),
    "background_task_list_get": _obj(["tasks", "total", "running", "completed", "failed"],
                                     tasks={"type": "array", "items": _TASK}, total=_I, running=_I, completed=_I,
                                     failed=_I),
    "background_task_list_post": _TASK,
    "secret_detail_put": _obj(["app_id", "key", "status", "reloaded", "reload_error"], app_id=_S, key=_S,
                              status={"type": "string", "enum": ["set"]}, reloaded=_B, reload_error=_NS),
    "secret_detail_delete": _obj(["app_id", "key", "status"], app_id=_S, key=_S,
                                 status={"type": "string", "enum": ["deleted"]}),
    "app_detail_delete": _obj(["app_id", "undeployed", "deleted", "message"], app_id=_S, undeployed=_B, deleted=_B,
                              message=_S),
    "deploy_status_get": _obj(["app_id", "status", "deployed"], app_id=_S, status={
        "type": "string", "enum": ["deployed", "not_deployed"]}, deployed=_B, version=_NS, deployed_at=_NN,
                              error=_NS),
    "notifications_active_get": _obj(["active"], active=_B),
    "session_compact_post": _obj(["before", "after", "freed"], before=_I, after=_I, freed=_I),
    "session_fork_post": _obj(["session_id", "source_session_id", "forked"], session_id=_S, source_session_id=_S,
                              forked_from=_S, new_session_id=_S, forked=_B, message_count=_I),
    "session_undo_post": _obj(["session_id", "undone", "removed_messages"], session_id=_S, undone=_B,
                              correlation_id=_S, removed_messages=_I, message_count=_I),
    "session_abort_post": _obj(["session_id", "was_active", "aborted"], session_id=_S, was_active=_B, aborted=_B),
    "session_memory_get": _obj(["session_id", "entries", "count"], session_id=_S, count=_I, entries={
        "type": "array", "items": _obj(["key", "value"], key=_S, value=_S, created_at=_N, updated_at=_N)}),
    "session_workspace_get": _obj(["session_id", "files", "total"], session_id=_S, available=_B, total=_I,
                                  truncated=_B, files={"type": "array", "items": _obj(
                                      ["path", "type"], path=_S, type=_S, size={"type": "integer", "nullable": True},
                                      modified_at=_N)}),
    "config_get": _obj(["server", "limits", "editable"], server=_obj(["auth_enabled", "database"], auth_enabled=_B,
                                                                      database=_S, debug=_B),
                       limits={"type": "object"}, editable=_B),
    "module_list_get": _obj(["modules", "total"], total=_I, modules={"type": "array", "items": _obj(
        ["module_id", "name", "description", "actions", "action_count"], module_id=_S, name=_S, description=_S,
        actions={"type": "array", "items": _S}, action_count=_I, aliases={"type": "array", "items": _S})}),
    "app_diagnostics_get": _obj(
        ["app_id", "status", "version", "mode", "agents", "modules", "secrets", "warnings", "problems"],
        app_id=_S, status={"type": "string", "enum": ["healthy", "degraded"]}, version=_S, mode=_S, deployed_at=_N,
        agents={"type": "array", "items": _obj(["id", "provider", "tool_count"], id=_S, role=_S, provider=_S,
                                               model=_S, modules={"type": "array", "items": _S}, tool_count=_I,
                                               tools_error=_NS)},
        modules={"type": "array", "items": _S}, hooks={"type": "array", "items": _S},
        secrets=_obj(["referenced", "missing"], referenced={"type": "array", "items": _S},
                     missing={"type": "array", "items": _S}),
        warnings={"type": "array", "items": _S}, problems={"type": "array", "items": _S},
    ),
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
                    # Trailing-slash twins get a numeral suffix from drf-spectacular; same shape.
                    op_id = re.sub(r"_\d+$", "", operation.get("operationId", ""))
                    inner = DATA_SCHEMAS.get(op_id) or content["application/json"].get("schema")
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
