"""Session, chat, run, quota and notification endpoints through Django's test clients (real DB)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from conversations import services
from conversations.turns import state as turn_state
from tests.helpers import (
    HEADERS,
    admin_client,
    assert_envelope_error,
    client_for,
    make_workspace,
    scripted_manifest,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("admin_key")]


@pytest.fixture
def app(tmp_path: Path, deployed_app):
    ws = make_workspace(tmp_path, {"README.md": "# Demo project\n"})
    deployed_app(scripted_manifest("demo", ws, [
        {"when": "read", "steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "read: {result}"}]},
        {"steps": [{"say": "echo: {message}"}]},
    ]), force=True)
    deployed_app(scripted_manifest("oneshot", ws, [{"steps": [{"say": "ran: {message}"}]}], mode="one_shot"),
                 force=True)
    return "demo"


def post(c, url, body, **extra):
    return c.post(url, data=json.dumps(body) if not isinstance(body, str) else body,
                  content_type="application/json", **extra)


def stream_post(url: str, body):
    """POST and read the SSE body on one event loop (the turn runs as a task on it)."""

    async def go():
        response = await AsyncClient().post(url, data=json.dumps(body), content_type="application/json", headers=HEADERS)
        text = ""
        if response.get("Content-Type") == "text/event-stream":
            text = b"".join([chunk async for chunk in response.streaming_content]).decode()
        return response, text

    return async_to_sync(go)()


def async_post(url: str, body, **extra):
    async def go():
        return await AsyncClient().post(url, data=json.dumps(body), content_type="application/json", headers=HEADERS, **extra)

    return async_to_sync(go)()


def test_chat_returns_the_result_payload_and_history_has_tool_calls(app):
    response = async_post("/api/apps/demo/chat", {"session_id": "s1", "message": "read the readme"})
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["session_id"] == "s1" and data["tool_calls_count"] == 1 and data["turns_used"] == 2
    assert "Demo project" in data["content"] and data["truncated"] is False
    assert response["X-RateLimit-Limit"] == "60" and response["X-RateLimit-Remaining"] == "59"

    c = admin_client()
    detail = c.get("/api/apps/demo/sessions/s1").json()["data"]
    assert {"session_id", "app_id", "title", "user_id", "created_at", "last_active", "turn_count", "message_count",
            "last_message_preview", "is_active", "status", "tokens", "context"} <= set(detail)
    assert detail["message_count"] == 4 and detail["status"] == "idle" and detail["is_active"] is False
    assert detail["title"] == "read the readme" and detail["turn_count"] == 1
    assert isinstance(detail["created_at"], float) and isinstance(detail["last_active"], float)
    history = c.get("/api/apps/demo/sessions/s1/history").json()["data"]
    # The tool row is folded into the call of the assistant message that asked for it.
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "assistant"]
    call = history["messages"][1]["tool_calls"][0]
    assert call["name"] == "filesystem.read" and call["status"] == "done"
    assert "Demo project" in call["result"]["data"]["content"]
    assert "result" in [e["type"] for e in history["events"]]
    listing = c.get("/api/apps/demo/sessions").json()["data"]
    assert [s["session_id"] for s in listing["sessions"]] == ["s1"]
    assert (listing["total"], listing["limit"], listing["offset"]) == (1, 50, 0)

    assert c.delete("/api/apps/demo/sessions/s1").json()["data"]["deleted"] is True
    assert_envelope_error(c.get("/api/apps/demo/sessions/s1"), 404, "RESOURCE_NOT_FOUND")


def test_chat_stream_frames(app):
    response, text = stream_post("/api/apps/demo/chat/stream", {"session_id": "s2", "message": "read it"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache" and response["X-Accel-Buffering"] == "no"
    frames = [f for f in text.split("\n\n") if f.strip()]
    types = [line.split(": ", 1)[1] for f in frames for line in f.splitlines() if line.startswith("event: ")]
    # `status` frames (issue 15) come along; the turn's other frames keep their order.
    assert [t for t in types if t != "status"] == ["connected", "tool_start", "tool_call", "result"]
    assert types[-1] == "result" and "status" in types
    ids = [int(line.split(": ")[1]) for f in frames for line in f.splitlines() if line.startswith("id: ")]
    assert ids == list(range(1, len(types)))  # every logged frame (all but `connected`), gapless


def test_run_only_for_one_shot_apps(app):
    response = async_post("/api/apps/oneshot/run", {"input": "hello"})
    assert response.status_code == 200, response.content
    assert response.json()["data"] == {"content": "ran: hello", "tool_calls_count": 0, "turns_used": 1, "truncated": False}
    # One-shot runs leave no session behind.
    assert admin_client().get("/api/apps/oneshot/sessions").json()["data"]["total"] == 0
    body = assert_envelope_error(async_post("/api/apps/demo/run", {"input": "x"}), 400, "VALIDATION_ERROR")
    assert "one_shot" in body["error"]


def test_bad_input_gets_the_envelope(app):
    assert_envelope_error(async_post("/api/apps/demo/chat", {"session_id": "s1"}), 400, "VALIDATION_ERROR")
    body = assert_envelope_error(async_post("/api/apps/demo/chat", {"session_id": "a/b", "message": "x"}), 400, "VALIDATION_ERROR")
    assert "session_id" in body["error"]
    assert_envelope_error(async_post("/api/apps/demo/chat", {"session_id": "s", "message": 5}), 400, "VALIDATION_ERROR")
    assert_envelope_error(async_post("/api/apps/nope/chat", {"session_id": "s", "message": "x"}), 404, "RESOURCE_NOT_FOUND")
    assert_envelope_error(async_post("/api/apps/demo/run", {}), 400, "VALIDATION_ERROR")

    async def raw():
        return await AsyncClient().post("/api/apps/demo/chat", data="{not json", content_type="application/json", headers=HEADERS)

    assert_envelope_error(async_to_sync(raw)(), 400, "VALIDATION_ERROR")

    async def unauth():
        return await AsyncClient().post("/api/apps/demo/chat/stream", data="{}", content_type="application/json")

    assert_envelope_error(async_to_sync(unauth)(), 401, "UNAUTHORIZED")
    c = admin_client()
    assert_envelope_error(post(c, "/api/apps/demo/sessions/s1/messages", {"message": ""}), 400, "VALIDATION_ERROR")
    assert_envelope_error(post(c, "/api/apps/demo/quota", {"rpm": 0}, REQUEST_METHOD="PUT"), 400, "VALIDATION_ERROR")
    assert_envelope_error(c.put("/api/apps/demo/quota", data=json.dumps({"rpm": "ten"}), content_type="application/json"),
                          400, "VALIDATION_ERROR")
    assert_envelope_error(c.get("/api/apps/demo/sessions/missing/history"), 404, "RESOURCE_NOT_FOUND")


def test_scopes_and_ownership(app):
    reader = client_for("bob", ["apps:read"])
    runner = client_for("carol", ["apps:read", "apps:run"])
    assert_envelope_error(post(reader, "/api/apps/demo/sessions/b1/messages", {"message": "hi"}), 403, "FORBIDDEN")
    assert post(runner, "/api/apps/demo/sessions/c1/messages", {"message": "hi"}).status_code == 202
    # carol's session is invisible to bob, visible to the admin.
    assert_envelope_error(reader.get("/api/apps/demo/sessions/c1"), 404, "RESOURCE_NOT_FOUND")
    assert reader.get("/api/apps/demo/sessions").json()["data"]["total"] == 0
    assert admin_client().get("/api/apps/demo/sessions/c1").status_code == 200
    assert_envelope_error(runner.put("/api/apps/demo/quota", data='{"rpm": 5}', content_type="application/json"),
                          403, "FORBIDDEN")


def test_an_admin_scoped_key_sees_what_the_admin_sees(app):
    """"Admin sees everything" is one rule: the admin scope, for sessions as for background tasks."""
    runner = client_for("carol", ["apps:read", "apps:run"])
    ops = client_for("dave", ["admin"])
    assert post(runner, "/api/apps/demo/sessions/c9/messages", {"message": "hi"}).status_code == 202
    assert ops.get("/api/apps/demo/sessions/c9").status_code == 200
    assert "c9" in {s["session_id"] for s in ops.get("/api/apps/demo/sessions").json()["data"]["sessions"]}
    # ...and carol still does not see what the admin-scoped key creates.
    assert post(ops, "/api/apps/demo/sessions/d9/messages", {"message": "hi"}).status_code == 202
    assert_envelope_error(runner.get("/api/apps/demo/sessions/d9"), 404, "RESOURCE_NOT_FOUND")


def test_messages_202_and_queue_full(app, settings):
    from conversations.services import message_enqueue
    from digitorn_site.api.auth import ADMIN_PRINCIPAL

    settings.DIGITORN_QUEUE_DEPTH = 2
    c = admin_client()
    first = post(c, "/api/apps/demo/sessions/q1/messages", {"message": "one"})
    assert first.status_code == 202, first.content
    queued = first.json()["data"]
    assert (queued["position"], queued["queue_depth"], queued["queue_mode"]) == (0, 1, "async")
    # Turns queued without starting (the service schedules nothing), so the counts below are exact:
    # the view counts inside the enqueue transaction, before it starts anything.
    message_enqueue(app_id="demo", session_id="q2", principal=ADMIN_PRINCIPAL, message="one")
    second = post(c, "/api/apps/demo/sessions/q2/messages", {"message": "two"}).json()["data"]
    assert second["position"] == 1 and second["queue_depth"] == 2
    for text in ("one", "two"):
        message_enqueue(app_id="demo", session_id="q3", principal=ADMIN_PRINCIPAL, message=text)
    body = assert_envelope_error(post(c, "/api/apps/demo/sessions/q3/messages", {"message": "three"}), 429, "QUEUE_FULL")
    assert "limit is 2" in body["error"]


def test_quota_get_put_delete_and_429(app):
    c = admin_client()
    usage = c.get("/api/apps/demo/quota").json()["data"]
    assert usage == {"app_id": "demo", "current": 0, "limit": 60, "remaining": 60, "window_seconds": 60}
    assert c.put("/api/apps/demo/quota", data='{"rpm": 2}', content_type="application/json").json()["data"]["limit"] == 2
    for i in range(2):
        ok = post(c, f"/api/apps/demo/sessions/r{i}/messages", {"message": "hi"})
        assert ok.status_code == 202 and ok["X-RateLimit-Remaining"] == str(1 - i)
    limited = post(c, "/api/apps/demo/sessions/r9/messages", {"message": "hi"})
    assert_envelope_error(limited, 429, "RATE_LIMIT_EXCEEDED")
    assert int(limited["Retry-After"]) >= 1 and limited["X-RateLimit-Remaining"] == "0"
    assert_envelope_error(async_post("/api/apps/demo/chat", {"session_id": "x", "message": "hi"}), 429, "RATE_LIMIT_EXCEEDED")
    assert c.get("/api/apps/demo/quota").json()["data"]["current"] == 2
    reset = c.delete("/api/apps/demo/quota").json()["data"]
    assert reset["limit"] == 60 and reset["remaining"] == 58


def test_cancel_and_notifications_endpoints(app):
    from digitorn_site.api.auth import ADMIN_PRINCIPAL

    c = admin_client()
    # Queued by the service, which starts nothing: the cancel below finds it still queued.
    services.message_enqueue(app_id="demo", session_id="n1", principal=ADMIN_PRINCIPAL, message="hi")
    cancelled = post(c, "/api/apps/demo/sessions/n1/cancel", {}).json()["data"]
    assert cancelled["cancelled"] is True and cancelled["status"] == "cancelled"
    assert post(c, "/api/apps/demo/sessions/n1/cancel", {}).json()["data"]["cancelled"] is False

    assert c.get("/api/apps/demo/notifications/active").json()["data"] == {"active": False}
    empty = async_post("/api/apps/demo/notifications", {"session_id": "n1"})
    assert empty.status_code == 200 and empty.json()["data"] == {"notifications": 0}
    services.notification_record(task_id="t-1", app_id="demo", session_id="n1", status="completed")
    assert c.get("/api/apps/demo/notifications/active?session_id=n1").json()["data"] == {"active": True}
    streamed, text = stream_post("/api/apps/demo/notifications", {"session_id": "n1"})
    assert streamed["Content-Type"] == "text/event-stream"
    types = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert types[0] == "notification" and types[-2:] == ["notification_result", "result"]
    assert c.get("/api/apps/demo/notifications/active").json()["data"] == {"active": False}
    assert_envelope_error(async_post("/api/apps/demo/notifications", {}), 400, "VALIDATION_ERROR")


def test_session_listing_costs_the_same_queries_for_one_or_many_sessions(app):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from conversations import selectors
    from digitorn_site.api.auth import ADMIN_PRINCIPAL

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            page = selectors.session_list(app_id="demo", principal=ADMIN_PRINCIPAL)
        assert all(s["title"] for s in page["sessions"])
        return len(captured)

    services.message_enqueue(app_id="demo", session_id="l0", principal=ADMIN_PRINCIPAL, message="first words")
    turn_state.turn_claim(session_pk=services.session_resolve(app_id="demo", session_id="l0",
                                                            principal=ADMIN_PRINCIPAL).pk, worker="t")
    one = queries()
    for i in range(1, 6):
        sid = f"l{i}"
        services.message_enqueue(app_id="demo", session_id=sid, principal=ADMIN_PRINCIPAL, message="x " * 500)
        turn_state.turn_claim(session_pk=services.session_resolve(app_id="demo", session_id=sid,
                                                                principal=ADMIN_PRINCIPAL).pk, worker="t")
    assert queries() == one
    titles = {s["session_id"]: s for s in selectors.session_list(app_id="demo", principal=ADMIN_PRINCIPAL)["sessions"]}
    assert titles["l0"]["title"] == "first words" and len(titles["l1"]["title"]) == 80
    assert titles["l1"]["last_message_preview"] == ("x " * 100)[:200] and titles["l1"]["is_active"] is True
