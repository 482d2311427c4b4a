"""The shapes a Digitorn client reads, one test per endpoint, against the table below.

The table is the contract: each row names an endpoint and the fields of its ``data`` with their JSON
types (``float`` = epoch seconds, as the original's). No snapshot files: a field renamed, dropped or
retyped fails here with the endpoint and the field in the message. Additive fields are allowed;
the README's Compatibility section lists them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from apps_registry import services as registry
from conversations import services
from tests.helpers import ADMIN_KEY, HEADERS, admin_client, make_workspace, scripted_manifest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("admin_key")]

STR, INT, FLOAT, BOOL, LIST, DICT, ANY = "str", "int", "float", "bool", "list", "dict", "any"
NULL = "|null"

_TYPES = {STR: str, INT: int, FLOAT: (int, float), BOOL: bool, LIST: list, DICT: dict}

SESSION = {
    "session_id": STR, "app_id": STR, "title": STR, "user_id": STR, "created_at": FLOAT, "last_active": FLOAT,
    "turn_count": INT, "message_count": INT, "last_message_preview": STR, "is_active": BOOL, "status": STR,
}  # fmt: skip
TASK = {
    "task_id": STR, "tool_name": STR, "params": DICT, "session_id": STR + NULL, "status": STR, "result": ANY,
    "error": STR + NULL, "hint": STR, "created_at": FLOAT, "started_at": FLOAT + NULL,
    "finished_at": FLOAT + NULL, "elapsed_seconds": FLOAT + NULL,
}  # fmt: skip
PENDING = {
    "request_id": STR, "session_id": STR + NULL, "agent_id": STR, "user_id": STR, "app_id": STR,
    "tool_name": STR, "tool_params": DICT, "risk_level": STR, "description": STR, "created_at": FLOAT,
    "expires_at": FLOAT,
}  # fmt: skip
CALL = {"id": STR, "name": STR, "params": DICT, "result": ANY, "status": STR}

# endpoint → {field: type}; a nested row is ``(field, {…})`` for a list of objects or an object.
CONTRACT: dict[str, dict[str, Any]] = {
    "GET /sessions": {"sessions": [SESSION], "total": INT, "limit": INT, "offset": INT},
    "GET /sessions/{sid}": {**SESSION, "tokens": {"prompt": INT, "completion": INT, "total": INT}, "context": DICT},
    "GET /sessions/{sid}/history": {
        "session_id": STR,
        "messages": [{"role": STR, "content": STR, "created_at": FLOAT}],
        "events": [{"seq": INT, "type": STR, "data": DICT, "ts": FLOAT}],
        "events_total": INT, "events_next_seq": INT, "events_has_more": BOOL,
    },  # fmt: skip
    "GET /sessions/{sid}/history (assistant turn)": {
        "role": STR, "content": STR, "tool_calls": [CALL], "created_at": FLOAT,
    },
    "POST /sessions/{sid}/messages": {
        "correlation_id": STR, "position": INT, "queue_depth": INT, "client_message_id": STR + NULL,
    },
    "POST /tools/{name}/execute": {"success": BOOL, "data": ANY, "error": STR + NULL},
    "GET /tools/categories": {
        "categories": [{"id": STR, "summary": STR, "tool_count": INT}], "total_categories": INT, "total_tools": INT,
    },
    "GET /tools/categories/{c}": {
        "category": STR, "summary": STR,
        "tools": [{"name": STR, "description": STR, "risk_level": STR, "tags": LIST}],
        "page": INT, "total_pages": INT, "total_tools": INT,
    },  # fmt: skip
    "GET /tools/search": {
        "query": STR, "mode": STR, "count": INT,
        "tools": [{"name": STR, "description": STR, "relevance": FLOAT, "risk_level": STR, "tags": LIST,
                   "params_summary": STR, "parameters": DICT}],
    },  # fmt: skip
    "GET /tools/search (empty query)": {"tools": LIST, "count": INT, "query": STR},
    "GET /tools/{name}": {
        "name": STR, "module": STR, "description": STR, "parameters": DICT, "examples": LIST,
        "side_effects": LIST, "aliases": LIST, "tags": LIST, "risk_level": STR, "irreversible": BOOL, "policy": STR,
    },  # fmt: skip
    "GET /index": {
        "total_tools": INT, "total_categories": INT, "tool_injection_mode": STR,
        "categories": [{"id": STR, "summary": STR, "tool_count": INT,
                        "tools": [{"name": STR, "description": STR, "params_schema": DICT}]}],
    },  # fmt: skip
    "POST /background-tasks": TASK,
    "GET /background-tasks": {"tasks": [TASK], "total": INT, "running": INT, "completed": INT, "failed": INT},
    "GET /approvals": {"pending": [PENDING]},
    "POST /approve": {"request_id": STR, "approved": BOOL, "payload_received": BOOL},
    "GET /notifications/active (unknown app)": {"active": BOOL},
    "POST /notifications (unknown session)": {"notifications": INT},
    "PUT /secrets/{key}": {"app_id": STR, "key": STR, "status": STR, "reloaded": BOOL, "reload_error": STR + NULL},
    "DELETE /secrets/{key}": {"app_id": STR, "key": STR, "status": STR},
    "DELETE /api/apps/{id}": {"app_id": STR, "undeployed": BOOL, "deleted": BOOL, "message": STR},
    "GET /deploy-status": {"app_id": STR, "status": STR, "deployed": BOOL},
    "GET /api/apps": [{"app_id": STR, "name": STR, "version": STR, "deployed_at": FLOAT}],
    "GET /quota": {"app_id": STR, "current": INT, "limit": INT, "remaining": INT, "window_seconds": INT},
    "GET /quota/user/{user}": {"app_id": STR, "user_id": STR, "scope": STR, "effective": DICT, "usage": DICT},
    "POST /sessions/{sid}/abort": {"session_id": STR, "was_active": BOOL, "aborted": BOOL},
    "POST /sessions/{sid}/compact": {"before": INT, "after": INT, "freed": INT},
    "POST /sessions/{sid}/fork": {
        "session_id": STR, "source_session_id": STR, "forked_from": STR, "new_session_id": STR, "forked": BOOL,
        "message_count": INT,
    },  # fmt: skip
    "POST /sessions/{sid}/undo": {"session_id": STR, "undone": BOOL, "removed_messages": INT},
    "GET /sessions/{sid}/memory": {"session_id": STR, "entries": [{"key": STR, "value": STR}], "count": INT},
    "GET /sessions/{sid}/workspace": {
        "session_id": STR, "files": [{"path": STR, "type": STR, "size": INT + NULL}], "total": INT,
    },
    "GET /api/metrics": {"apps": INT, "sessions": DICT, "turns": DICT, "background_tasks": DICT, "approvals": DICT},
    "GET /api/metrics/sessions": {"total": INT, "by_status": DICT, "apps": LIST},
    "GET /healthz": {"status": STR},
    "GET /readyz": {"status": STR, "database": BOOL},
    "GET /api/config": {"server": {"auth_enabled": BOOL, "database": STR}, "limits": DICT, "editable": BOOL},
    "GET /api/modules": {
        "modules": [{"module_id": STR, "name": STR, "description": STR, "actions": LIST, "action_count": INT}],
        "total": INT,
    },
    "GET /diagnostics": {
        "app_id": STR, "status": STR, "version": STR, "mode": STR, "deployed_at": FLOAT,
        "agents": [{"id": STR, "role": STR, "provider": STR, "model": STR, "modules": LIST, "tool_count": INT}],
        "modules": LIST, "hooks": LIST, "secrets": {"referenced": LIST, "missing": LIST}, "warnings": LIST,
        "problems": LIST,
    },  # fmt: skip
}


def conforms(value: Any, shape: Any, path: str = "data") -> list[str]:
    """Every way ``value`` breaks ``shape``: missing fields and wrong types, each with its path."""
    problems: list[str] = []
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        for field, sub in shape.items():
            if field not in value:
                problems.append(f"{path}.{field}: missing")
            else:
                problems.extend(conforms(value[field], sub, f"{path}.{field}"))
        return problems
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        for index, item in enumerate(value):
            problems.extend(conforms(item, shape[0], f"{path}[{index}]"))
        return problems
    kind, _, nullable = shape.partition("|")
    if value is None:
        return [] if nullable or kind == ANY else [f"{path}: null, expected {kind}"]
    if kind == ANY:
        return []
    expected = _TYPES[kind]
    if isinstance(value, bool) and kind != BOOL:
        return [f"{path}: expected {kind}, got bool"]
    if not isinstance(value, expected):
        return [f"{path}: expected {kind}, got {type(value).__name__} {value!r:.60}"]
    return []


def check(endpoint: str, data: Any, *, nonempty: tuple[str, ...] = ()) -> None:
    problems = conforms(data, CONTRACT[endpoint])
    for field in nonempty:  # a list the row describes must have items, or its item shape went unchecked
        if not data.get(field):
            problems.append(f"data.{field}: empty, so its items were not checked")
    assert not problems, f"{endpoint} breaks the contract:\n" + "\n".join(problems)


def test_the_contract_checker_reports_names_and_types():
    assert conforms({"a": 1}, {"a": STR, "b": INT}) == ["data.a: expected str, got int 1", "data.b: missing"]
    assert conforms({"t": 1.5, "n": None, "l": [{"x": True}]}, {"t": FLOAT, "n": STR + NULL, "l": [{"x": INT}]}) == [
        "data.l[0].x: expected int, got bool"
    ]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, deployed_app) -> str:
    ws = make_workspace(tmp_path, {"README.md": "# Demo project\n"})
    deployed_app(scripted_manifest("demo", ws, [
        {"when": "read", "steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "read: {result}"}]},
        {"when": "remember", "steps": [{"call": "memory.remember", "params": {"key": "color", "value": "blue"}},
                                       {"say": "noted"}]},
        {"steps": [{"say": "echo: {message}"}]},
    ], capabilities={"default_policy": "auto", "approve": [{"module": "shell"}]}).replace(
        '"shell": {}', '"shell": {}, "memory": {}'), force=True)
    return "demo"


def c() -> Client:
    return admin_client()


def post(url: str, body: Any = None) -> Any:
    return c().post(url, data=json.dumps(body or {}), content_type="application/json")


def apost(url: str, body: Any) -> Any:
    async def go():
        return await AsyncClient().post(url, data=json.dumps(body), content_type="application/json", headers=HEADERS)

    return async_to_sync(go)()


def data_of(response, status: int = 200) -> Any:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is True, body
    return body["data"]


def chat(message: str, session_id: str = "s1") -> dict:
    return data_of(apost("/api/apps/demo/chat", {"session_id": session_id, "message": message}))


# --- sessions ------------------------------------------------------------------------------------


def test_sessions_list(app):
    chat("hello")
    check("GET /sessions", data_of(c().get("/api/apps/demo/sessions?limit=10&offset=0")), nonempty=("sessions",))


def test_session_detail(app):
    chat("read the readme")
    data = data_of(c().get("/api/apps/demo/sessions/s1"))
    check("GET /sessions/{sid}", data)
    assert data["is_active"] is False and data["turn_count"] == 1 and data["title"] == "read the readme"


def test_session_history_folds_tool_rows(app):
    chat("read the readme")
    data = data_of(c().get("/api/apps/demo/sessions/s1/history"))
    check("GET /sessions/{sid}/history", data, nonempty=("messages", "events"))
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "assistant"]
    check("GET /sessions/{sid}/history (assistant turn)", data["messages"][1], nonempty=("tool_calls",))
    # The turn's end is listed as the original's `turn_end` too, right after `result`, same payload.
    result, turn_end = [e for e in data["events"] if e["type"] in ("result", "turn_end")]
    assert (result["type"], turn_end["type"]) == ("result", "turn_end")
    assert turn_end["seq"] == result["seq"] and turn_end["data"] == result["data"]
    assert turn_end["data"]["tool_calls_count"] == 1


def test_session_messages_echo_and_images(app):
    image = {"data": base64.b64encode(b"\x89PNG fake").decode(), "mime": "image/png", "name": "a.png"}
    response = apost("/api/apps/demo/sessions/m1/messages",
                     {"message": "hi", "images": [image], "client_message_id": "cm-1", "workspace": "/tmp"})
    data = data_of(response, 202)
    check("POST /sessions/{sid}/messages", data)
    assert data["client_message_id"] == "cm-1" and data["ignored"] == ["images", "workspace"]


def test_session_abort(app):
    services.message_enqueue(app_id="demo", session_id="a1", principal="admin", message="hi")
    data = data_of(post("/api/apps/demo/sessions/a1/abort"))
    check("POST /sessions/{sid}/abort", data)
    assert data["was_active"] is True and data["aborted"] is True


def test_session_compact(app):
    for text in ("one", "two", "three"):
        chat(text, "k1")
    data = data_of(post("/api/apps/demo/sessions/k1/compact"))
    check("POST /sessions/{sid}/compact", data)
    assert (data["before"], data["after"], data["freed"]) == (6, 5, 1)


def test_session_fork(app):
    chat("hello", "f1")
    data = data_of(post("/api/apps/demo/sessions/f1/fork"))
    check("POST /sessions/{sid}/fork", data)
    assert data["message_count"] == 2 and data["source_session_id"] == "f1"


def test_session_undo(app):
    chat("one", "u1")
    chat("two", "u1")
    data = data_of(post("/api/apps/demo/sessions/u1/undo"))
    check("POST /sessions/{sid}/undo", data)
    assert data["removed_messages"] == 2 and data["message_count"] == 2


def test_session_memory(app):
    chat("remember my color", "mem")
    data = data_of(c().get("/api/apps/demo/sessions/mem/memory"))
    check("GET /sessions/{sid}/memory", data, nonempty=("entries",))
    assert data["entries"][0] == {**data["entries"][0], "key": "color", "value": "blue"}


def test_session_workspace(app):
    chat("hello", "w1")
    data = data_of(c().get("/api/apps/demo/sessions/w1/workspace"))
    check("GET /sessions/{sid}/workspace", data, nonempty=("files",))
    assert {"path": "README.md", "type": "file"}.items() <= data["files"][0].items()


# --- tools ---------------------------------------------------------------------------------------


def test_tool_execute_flattens_the_result(app):
    ok = post("/api/apps/demo/tools/filesystem.read/execute", {"params": {"path": "README.md"}})
    check("POST /tools/{name}/execute", ok.json())
    assert ok.json()["success"] is True and ok.json()["data"]["content"] == "# Demo project\n"
    failed = post("/api/apps/demo/tools/filesystem.read/execute", {"params": {"path": "nope.md"}})
    assert failed.status_code == 200
    check("POST /tools/{name}/execute", failed.json())
    assert failed.json()["success"] is False and failed.json()["error"]


def test_tool_categories(app):
    check("GET /tools/categories", data_of(c().get("/api/apps/demo/tools/categories")), nonempty=("categories",))


def test_tool_category_browse(app):
    data = data_of(c().get("/api/apps/demo/tools/categories/filesystem"))
    check("GET /tools/categories/{c}", data, nonempty=("tools",))


def test_tool_search(app):
    data = data_of(c().get("/api/apps/demo/tools/search?query=read+file"))
    check("GET /tools/search", data, nonempty=("tools",))


def test_tool_search_empty_query(app):
    check("GET /tools/search (empty query)", data_of(c().get("/api/apps/demo/tools/search")))
    check("GET /tools/search (empty query)", data_of(c().get("/api/apps/demo/tools/search?query=")))


def test_tool_detail(app):
    check("GET /tools/{name}", data_of(c().get("/api/apps/demo/tools/filesystem.read")))


def test_index(app):
    from tooling.index import DIRECT_TOOLS_LIMIT

    data = data_of(c().get("/api/apps/demo/index"))
    check("GET /index", data, nonempty=("categories",))
    # tool_injection_mode reports what the engine does (tooling.index.injection_mode, which it calls).
    assert data["tool_injection_mode"] == ("discovery" if data["total_tools"] > DIRECT_TOOLS_LIMIT else "direct")


# --- background tasks, approvals, notifications -------------------------------------------------


def test_background_task_launch(app):
    data = data_of(post("/api/apps/demo/background-tasks", {"tool": "filesystem.read", "params": {"path": "README.md"}}),
                   202)
    check("POST /background-tasks", data)
    assert data["tool_name"] == "filesystem.read"


def test_background_task_list(app):
    post("/api/apps/demo/background-tasks", {"tool": "filesystem.read", "params": {"path": "README.md"}})
    data = data_of(c().get("/api/apps/demo/background-tasks"))
    check("GET /background-tasks", data, nonempty=("tasks",))
    assert data["running"] + data["completed"] + data["failed"] <= data["total"] == 1


def test_approvals_list(app):
    pending = post("/api/apps/demo/tools/shell.run/execute", {"params": {"command": "true"}})
    assert pending.status_code == 202, pending.content
    check("GET /approvals", data_of(c().get("/api/apps/demo/approvals")), nonempty=("pending",))


def test_approve_with_aliases(app):
    request_id = post("/api/apps/demo/tools/shell.run/execute", {"params": {"command": "true"}}).json()["data"][
        "request_id"
    ]
    # approval_id for request_id, answer for message: the original's aliases.
    data = data_of(post("/api/apps/demo/approve", {"approval_id": request_id, "approved": False, "answer": "nope"}))
    check("POST /approve", data)
    assert data == {**data, "request_id": request_id, "approved": False, "payload_received": True}
    detail = data_of(c().get(f"/api/apps/demo/approvals/{request_id}"))
    assert detail["decision_message"] == "nope"


def test_notifications_active_never_404():
    check("GET /notifications/active (unknown app)", data_of(c().get("/api/apps/ghost/notifications/active")))


def test_notifications_drain_unknown_session(app):
    data = data_of(apost("/api/apps/demo/notifications", {"session_id": "never-seen"}))
    check("POST /notifications (unknown session)", data)
    assert data == {"notifications": 0}


# --- apps, secrets, quota, probes -----------------------------------------------------------------


def test_secret_put_before_deploy():
    response = c().put("/api/apps/later/secrets/TOKEN", data='{"value": "v-1"}', content_type="application/json")
    data = data_of(response)
    check("PUT /secrets/{key}", data)
    assert (data["status"], data["reloaded"]) == ("set", False) and "v-1" not in response.content.decode()


def test_secret_delete():
    c().put("/api/apps/later/secrets/TOKEN", data='{"value": "v-1"}', content_type="application/json")
    data = data_of(c().delete("/api/apps/later/secrets/TOKEN"))
    check("DELETE /secrets/{key}", data)
    assert data["status"] == "deleted"


def test_app_delete(app):
    check("DELETE /api/apps/{id}", data_of(c().delete("/api/apps/demo")))


def test_deploy_status(app):
    data = data_of(c().get("/api/apps/demo/deploy-status"))
    check("GET /deploy-status", data)
    assert data["status"] == "deployed"
    assert data_of(c().get("/api/apps/ghost/deploy-status"))["status"] == "not_deployed"


def test_app_list_without_trailing_slash(app):
    data = data_of(c().get("/api/apps"))
    check("GET /api/apps", data)
    assert [a["app_id"] for a in data] == ["demo"]


def test_quota_and_limit_alias(app):
    check("GET /quota", data_of(c().get("/api/apps/demo/quota")))
    assert data_of(c().put("/api/apps/demo/quota", data='{"limit": 7}', content_type="application/json"))["limit"] == 7


def test_user_quota(app):
    data = data_of(c().get("/api/apps/demo/quota/user/alice"))
    check("GET /quota/user/{user}", data)
    assert data["user_id"] == "alice"


def test_metrics(app):
    chat("hello")
    data = data_of(c().get("/api/metrics"))
    check("GET /api/metrics", data)
    assert data["apps"] == 1 and data["turns"].get("done") == 1


def test_metrics_sessions(app):
    chat("hello")
    check("GET /api/metrics/sessions", data_of(c().get("/api/metrics/sessions")))


def test_metrics_prometheus(app):
    response = c().get("/api/metrics/prometheus")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "# TYPE digitorn_apps gauge" in text and "digitorn_apps 1.0" in text
    assert Client().get("/api/metrics/prometheus").status_code == 401


def test_probes():
    anonymous = Client()
    check("GET /healthz", anonymous.get("/healthz").json())
    health = anonymous.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    check("GET /readyz", ready.json())


# --- daemon configuration, modules, diagnostics -----------------------------------------------------


def test_config_get_and_patch():
    data = data_of(c().get("/api/config"))
    check("GET /api/config", data)
    assert data["server"]["auth_enabled"] is True and data["limits"]["queue_depth"] >= 1
    assert ADMIN_KEY not in json.dumps(data)  # no key, whatever else it shows
    refused = c().patch("/api/config", data='{"logging": {"level": "warning"}}', content_type="application/json")
    assert refused.status_code == 400 and refused.json()["error_code"] == "VALIDATION_ERROR"
    assert Client().get("/api/config").status_code == 401


def test_modules_list_also_at_the_top_level():
    response = c().get("/api/modules")
    data = data_of(response)
    check("GET /api/modules", data, nonempty=("modules",))
    ids = [m["module_id"] for m in data["modules"]]
    assert "filesystem" in ids and "shell" in ids and "bash" not in ids  # an alias is not a second module
    # The original's clients read `modules` at the top of the body (additive beside the envelope).
    assert response.json()["modules"] == data["modules"]


def test_diagnostics(app):
    data = data_of(c().get("/api/apps/demo/diagnostics"))
    check("GET /diagnostics", data, nonempty=("agents",))
    assert data["status"] == "healthy" and data["agents"][0]["tool_count"] > 0
    missing = c().get("/api/apps/ghost/diagnostics")
    assert missing.status_code == 404 and missing.json()["success"] is False


def test_diagnostics_names_a_missing_secret(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    doc = json.loads(scripted_manifest("needs", ws, [{"steps": [{"say": "hi"}]}]))
    doc["agents"][0]["system_prompt"] = "token {{secret.API_TOKEN}}"
    registry.app_deploy(text=json.dumps(doc), force=True)
    data = data_of(c().get("/api/apps/needs/diagnostics"))
    assert data["status"] == "degraded" and data["secrets"] == {"referenced": ["API_TOKEN"], "missing": ["API_TOKEN"]}
