"""Attacks of issue #10 replayed against the real views and services (real DB, real engine).

Each test performs the attack as a client would and checks the daemon refuses it or leaks nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from apps_registry import services as registry
from conversations.turns import state as turn_state
from tests.helpers import (
    HEADERS,
    admin_client,
    assert_envelope_error,
    key_for,
    make_workspace,
    scripted_manifest,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("admin_key")]


@pytest.fixture
def app(tmp_path: Path, deployed_app) -> str:
    ws = make_workspace(tmp_path, {"README.md": "# Demo project\n"})
    deployed_app(scripted_manifest("demo", ws, [{"steps": [{"say": "echo: {message}"}]}]), force=True)
    return "demo"


def _async(method: str, url: str, *, body=None, headers=None, raw: str | None = None):
    async def go():
        client = AsyncClient()
        kwargs = {"headers": {**HEADERS, **(headers or {})}}
        if method == "GET":
            return await client.get(url, **kwargs)
        data = raw if raw is not None else json.dumps(body)
        return await client.post(url, data=data, content_type="application/json", **kwargs)

    return async_to_sync(go)()


# --- item 8: hostile request bodies and cursors -------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [5_000, 100])
def test_deeply_nested_json_answers_400_everywhere(app, depth):
    nested = _nested(depth)
    # DRF views (tool execution, deploy, quota...), the async message views, the task wait view.
    body = '{"params": {"x": ' + nested + "}}"
    assert_envelope_error(
        admin_client().post(
            "/api/apps/demo/tools/filesystem.read/execute", data=body, content_type="application/json"
        ),
        400,
        "VALIDATION_ERROR",
    )
    assert_envelope_error(
        _async("POST", "/api/apps/demo/chat", raw='{"session_id": "s", "message": "x", "extra": ' + nested + "}"),
        400,
        "VALIDATION_ERROR",
    )
    assert_envelope_error(
        _async("POST", "/api/apps/demo/sessions/s/messages", raw=nested), 400, "VALIDATION_ERROR"
    )
    assert_envelope_error(
        admin_client().post(
            "/api/apps/demo/background-tasks/nope/wait", data='{"timeout": ' + nested + "}",
            content_type="application/json",
        ),
        400,
        "VALIDATION_ERROR",
    )


def test_shallow_json_still_accepted(app):
    response = _async("POST", "/api/apps/demo/chat", body={"session_id": "s", "message": "hi", "x": [[[[1]]]]})
    assert response.status_code in (200, 400), response.content  # unknown field may be refused, never 500
    ok = _async("POST", "/api/apps/demo/chat", body={"session_id": "s", "message": "hi"})
    assert ok.status_code == 200 and ok.json()["data"]["content"] == "echo: hi"


@pytest.mark.parametrize("cursor", [str(2**63), str(2**64 + 5), "9" * 40, "-1", "1e3"])
def test_event_cursor_out_of_range_answers_400(app, cursor):
    assert _async("POST", "/api/apps/demo/chat", body={"session_id": "s", "message": "hi"}).status_code == 200
    assert_envelope_error(
        _async("GET", "/api/apps/demo/sessions/s/events", headers={"Last-Event-ID": cursor}), 400, "VALIDATION_ERROR"
    )
    assert_envelope_error(_async("GET", f"/api/apps/demo/sessions/s/events?since={cursor}"), 400, "VALIDATION_ERROR")


# --- item 2: a secret flowing through tool *parameters* -------------------------------------------

SECRET = "ParamCanary" + "7f3a9c1e5b2d4a6c8e0f"


def _dump() -> str:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("dumpdata", stdout=out)
    return out.getvalue()


def _secret_app(ws: Path, rules: list, capabilities: dict | None = None) -> None:
    from apps_registry.services import secret_set

    registry.app_deploy(text=scripted_manifest("sec", ws, rules, capabilities=capabilities), force=True)
    secret_set(app_id="sec", key="API_TOKEN", value=SECRET)


def test_secret_in_tool_params_is_masked_everywhere_but_the_call(tmp_path, caplog):
    from approvals.services import approval_decide
    from conversations.models import Event, Message, Turn
    from conversations.services import message_enqueue
    from conversations.turns.scheduler import advance_session

    ws = tmp_path / "ws"
    ws.mkdir()
    rules = [{"steps": [
        {"call": "filesystem.write", "params": {"path": "auto.txt", "content": "Bearer {{secret.API_TOKEN}}"}},
        {"call": "shell.run", "params": {"command": "echo approved-{{secret.API_TOKEN}} > gated.txt"}},
        {"say": "done with {{secret.API_TOKEN}}"},
    ]}]
    _secret_app(ws, rules, {"default_policy": "auto", "approve": [{"module": "shell", "reason": "runs commands"}]})
    caplog.set_level("DEBUG")
    enq = message_enqueue(app_id="sec", session_id="s1", principal="alice", message="go")
    async_to_sync(advance_session)(session_pk=enq.session_pk)

    # The calls really got the plaintext ...
    assert (ws / "auto.txt").read_text() == f"Bearer {SECRET}"
    turn = Turn.objects.get(correlation_id=enq.correlation_id)
    assert turn.status == Turn.Status.WAITING_APPROVAL
    # ... while every stored or emitted form carries the mask.
    calls = [e.data for e in Event.objects.filter(session_id=enq.session_pk, type="tool_call").order_by("seq")]
    assert calls[0]["params"]["content"] == "Bearer ***", calls
    request = Event.objects.get(session_id=enq.session_pk, type="approval_request").data
    assert request["tool_params"]["command"] == "echo approved-*** > gated.txt"
    assert SECRET not in _dump()

    approval_decide(app_id="sec", request_id=request["request_id"], approved=True, message="", principal="alice")
    async_to_sync(advance_session)(session_pk=enq.session_pk)
    assert (ws / "gated.txt").read_text().strip() == f"approved-{SECRET}"
    done = Event.objects.filter(session_id=enq.session_pk, type="result").get().data
    assert done["content"] == "done with ***"
    history = admin_client().get("/api/apps/sec/sessions/s1/history")
    assert history.status_code == 200 and "Bearer ***" in history.content.decode()
    assert Message.objects.filter(session_id=enq.session_pk, role="assistant").filter(tool_calls__isnull=False).count() == 2
    assert SECRET not in _dump()
    assert SECRET not in caplog.text


def test_sealed_params_cannot_be_forged_by_the_model(tmp_path):
    """A model writing the marker form itself gets the marker text, never the secret."""
    from tooling.services import _seal_tag, seal_secrets, unseal_secrets

    sealed = seal_secrets({"h": f"Bearer {SECRET}"}, (SECRET,))
    assert SECRET not in json.dumps(sealed)
    assert unseal_secrets(sealed, (SECRET,)) == {"h": f"Bearer {SECRET}"}
    # A guessed marker (wrong tag) stays as written.
    forged = {"h": "{{sealed-secret:" + "0" * 32 + "}}"}
    assert unseal_secrets(forged, (SECRET,)) == forged
    # A rotated secret leaves the marker in place rather than running with another value.
    assert unseal_secrets(sealed, ("other-value",)) == sealed
    assert len(_seal_tag(SECRET)) == 32


# --- item 5: direct tool execution spends the app's rate-limit window ----------------------------


def test_tool_execute_is_rate_limited_like_chat(app):
    registry.app_rate_limit_set(app_id="demo", rpm=3)
    web = admin_client()
    url = "/api/apps/demo/tools/filesystem.read/execute"
    for expected_remaining in ("2", "1"):
        response = web.post(url, data={"params": {"path": "README.md"}}, content_type="application/json")
        assert response.status_code == 200, response.content
        assert response["X-RateLimit-Limit"] == "3" and response["X-RateLimit-Remaining"] == expected_remaining
    # Chat and execute share one window: the chat takes the last slot, the next execute is refused.
    chat = _async("POST", "/api/apps/demo/chat", body={"session_id": "s", "message": "hi"})
    assert chat.status_code == 200 and chat["X-RateLimit-Remaining"] == "0"
    refused = web.post(url, data={"params": {"path": "README.md"}}, content_type="application/json")
    body = assert_envelope_error(refused, 429, "RATE_LIMIT_EXCEEDED")
    assert "quota" in body["error"]
    assert refused["X-RateLimit-Limit"] == "3" and refused["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert_envelope_error(_async("POST", "/api/apps/demo/chat", body={"session_id": "s", "message": "x"}), 429,
                          "RATE_LIMIT_EXCEEDED")


# --- item 6: session squatting ------------------------------------------------------------------


async def _read_until(stream, done, timeout: float = 15.0) -> list[str]:
    """SSE frames from an open streaming response until ``done(frame)`` (or the stream ends)."""
    import asyncio

    frames: list[str] = []
    buffer = ""
    iterator = aiter(stream)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            chunk = await asyncio.wait_for(anext(iterator), timeout=max(deadline - loop.time(), 0.01))
        except StopAsyncIteration:
            return frames
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            frame, buffer = buffer.split("\n\n", 1)
            frames.append(frame)
            if done(frame):
                return frames


def test_watching_a_session_id_neither_creates_nor_squats_it(app):
    from conversations.models import Session

    mallory_read, mallory_run = key_for("mallory", ["apps:read"]), key_for("mallory", ["apps:read", "apps:run"])
    alice = key_for("alice", ["apps:read", "apps:run"])

    async def go():
        watch = await AsyncClient().get(f"/api/apps/demo/sessions/target/events?token={mallory_read}")
        assert watch.status_code == 200 and watch["Content-Type"] == "text/event-stream"
        first = await _read_until(watch.streaming_content, lambda f: "event: connected" in f)
        assert "connected" in first[-1]
        await watch.streaming_content.aclose()

    async_to_sync(go)()
    assert not Session.objects.filter(session_id="target").exists()  # watching created nothing

    # The owner's chat on that id works, and the squatter can neither see it nor block it later.
    chat = _async("POST", "/api/apps/demo/chat", body={"session_id": "target", "message": "mine"},
                  headers={"Authorization": f"Bearer {alice}"})
    assert chat.status_code == 200, chat.content
    as_mallory = {"HTTP_AUTHORIZATION": f"Bearer {mallory_read}"}
    assert_envelope_error(Client(**as_mallory).get("/api/apps/demo/sessions/target/history"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope_error(Client(**as_mallory).get("/api/apps/demo/sessions/target"), 404, "RESOURCE_NOT_FOUND")
    # Mallory using the same id gets a session of her own (ids are per owner), not Alice's.
    hers = _async("POST", "/api/apps/demo/chat", body={"session_id": "target", "message": "theirs"},
                  headers={"Authorization": f"Bearer {mallory_run}"})
    assert hers.status_code == 200, hers.content
    again = _async("POST", "/api/apps/demo/chat", body={"session_id": "target", "message": "still mine"},
                   headers={"Authorization": f"Bearer {alice}"})
    assert again.status_code == 200, again.content
    alice_history = Client(HTTP_AUTHORIZATION=f"Bearer {alice}").get("/api/apps/demo/sessions/target/history")
    contents = [m["content"] for m in alice_history.json()["data"]["messages"]]
    assert contents == ["mine", "echo: mine", "still mine", "echo: still mine"]
    mallory_history = Client(**as_mallory).get("/api/apps/demo/sessions/target/history").json()["data"]
    assert [m["content"] for m in mallory_history["messages"]] == ["theirs", "echo: theirs"]
    # Deleting her session leaves Alice's untouched.
    assert Client(HTTP_AUTHORIZATION=f"Bearer {mallory_run}").delete("/api/apps/demo/sessions/target").status_code == 200
    assert Client(HTTP_AUTHORIZATION=f"Bearer {alice}").get("/api/apps/demo/sessions/target").status_code == 200


def test_a_stream_opened_before_the_session_exists_gets_its_first_turn(app):
    alice = key_for("alice", ["apps:read", "apps:run"])
    auth = {"Authorization": f"Bearer {alice}"}

    async def go():
        client = AsyncClient()
        watch = await client.get("/api/apps/demo/sessions/fresh/events", headers=auth)
        frames = await _read_until(watch.streaming_content, lambda f: "event: connected" in f)
        posted = await client.post("/api/apps/demo/sessions/fresh/messages", data=json.dumps({"message": "hi"}),
                                   content_type="application/json", headers=auth)
        assert posted.status_code == 202, posted.content
        frames += await _read_until(watch.streaming_content, lambda f: "event: result" in f)
        await watch.streaming_content.aclose()
        return frames

    frames = async_to_sync(go)()
    assert any("event: result" in f and "echo: hi" in f for f in frames), frames


# --- item 8: a revoked key's open stream is cut --------------------------------------------------


@pytest.mark.parametrize("where", ["events", "chat_stream"])
def test_revoking_a_key_cuts_its_open_streams(app, where, settings, tmp_path):
    from apps_registry.services import api_key_revoke
    from conversations.events import db

    settings.DIGITORN_SSE_AUTH_RECHECK_SECONDS = 0.3
    # The turn waits for an approval nobody gives: its stream stays open until something cuts it.
    registry.app_deploy(text=scripted_manifest("slow", tmp_path, [
        {"steps": [{"call": "shell.run", "params": {"command": "true"}}, {"say": "late"}]},
    ], capabilities={"default_policy": "auto", "approve": [{"module": "shell", "reason": "runs commands"}]}), force=True)
    raw = key_for("alice", ["apps:read", "apps:run"])

    async def go():
        client = AsyncClient()
        if where == "events":
            stream = await client.get(f"/api/apps/demo/sessions/s/events?token={raw}")
        else:
            stream = await client.post("/api/apps/slow/chat/stream", data=json.dumps({"session_id": "s", "message": "x"}),
                                       content_type="application/json", headers={"Authorization": f"Bearer {raw}"})
        assert stream.status_code == 200
        frames = await _read_until(stream.streaming_content, lambda f: "event: connected" in f)
        await db(api_key_revoke)(prefix=raw)
        frames += await _read_until(stream.streaming_content, lambda f: False, timeout=10.0)
        return frames

    frames = async_to_sync(go)()
    assert "unauthorized" in frames[-1] and "event: error" in frames[-1], frames


# --- item 7: a crash does not re-run a tool with side effects ------------------------------------


def _crash_mid_call(app_id: str, call: dict):
    """A worker claimed the turn, recorded the model's call, marked it started, and died."""
    from datetime import timedelta

    from django.utils import timezone

    from conversations import services
    from conversations.models import Turn

    enq = services.message_enqueue(app_id=app_id, session_id="c1", principal="alice", message="go")
    claim = turn_state.turn_claim(session_pk=enq.session_pk, worker="doomed")
    turn_state.turn_record_reply(turn_pk=claim.turn_pk, text="", tool_calls=[call])
    turn_state.turn_calls_started(turn_pk=claim.turn_pk, call_ids=[call["id"]])
    Turn.objects.filter(pk=claim.turn_pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    return enq


def test_recovery_answers_an_interrupted_side_effect_call_instead_of_rerunning_it(tmp_path):
    from conversations.models import Event, Message
    from conversations.turns.scheduler import advance_session

    ws = tmp_path / "ws"
    ws.mkdir()
    registry.app_deploy(text=scripted_manifest("crash", ws, [{"steps": [
        {"call": "shell.run", "params": {"command": "echo ran >> runs.txt"}}, {"say": "after: {result}"},
    ]}]), force=True)
    call = {"id": "call_x", "name": "shell.run", "params": {"command": "echo ran >> runs.txt"}}
    enq = _crash_mid_call("crash", call)
    async_to_sync(advance_session)(session_pk=enq.session_pk)

    assert not (ws / "runs.txt").exists()  # not run a second time (nor a first: the "crash" was before)
    result = Event.objects.get(session_id=enq.session_pk, type="tool_call").data
    assert result["id"] == "call_x" and result["success"] is False and result["error"].startswith("interrupted")
    tool = Message.objects.get(session_id=enq.session_pk, role="tool")
    assert "interrupted" in tool.content
    assert Event.objects.filter(session_id=enq.session_pk, type="result").count() == 1


def test_recovery_retries_a_read_only_call(tmp_path):
    from conversations.models import Event
    from conversations.turns.scheduler import advance_session

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "README.md").write_text("# Demo project\n")
    registry.app_deploy(text=scripted_manifest("crash", ws, [{"steps": [{"say": "unused"}]}]), force=True)
    enq = _crash_mid_call("crash", {"id": "call_r", "name": "filesystem.read", "params": {"path": "README.md"}})
    async_to_sync(advance_session)(session_pk=enq.session_pk)
    result = Event.objects.get(session_id=enq.session_pk, type="tool_call").data
    assert result["success"] is True and "Demo project" in json.dumps(result["result"])


def test_a_started_mark_is_written_before_a_side_effect_tool_runs(tmp_path):
    """A call with side effects leaves its committed "started" mark in the turn's state."""
    from conversations.models import Turn
    from conversations.turns.scheduler import advance_session

    ws = tmp_path / "ws"
    ws.mkdir()
    registry.app_deploy(text=scripted_manifest("crash", ws, [{"steps": [
        {"call": "filesystem.write", "params": {"path": "a.txt", "content": "x"}}, {"say": "ok"},
    ]}]), force=True)
    from conversations.services import message_enqueue

    enq = message_enqueue(app_id="crash", session_id="c2", principal="alice", message="go")
    async_to_sync(advance_session)(session_pk=enq.session_pk)
    turn = Turn.objects.get(correlation_id=enq.correlation_id)
    assert turn.status == Turn.Status.DONE and list(turn.state.get("started_calls", {})) == ["call_0_0"]
    assert (ws / "a.txt").read_text() == "x"


# --- item 8: keys passed as ?token= never reach a log line ---------------------------------------


def test_log_records_and_access_lines_are_redacted():
    import io
    import logging

    from digitorn_site.cli.asgi_worker import RedactingAccessLog
    from digitorn_site.logredact import RedactFilter, redact

    key = "dg_abcd1234_SECRETSECRET"
    assert redact(f"GET /api/apps/a/sessions/s/events?token={key}&since=3") == (
        "GET /api/apps/a/sessions/s/events?token=[redacted]&since=3"
    )
    assert redact(f"/x?since=1&TOKEN={key}") == "/x?since=1&TOKEN=[redacted]"
    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "Unauthorized: %s", (f"/p?token={key}",), None)
    assert RedactFilter().filter(record) and key not in record.getMessage()
    stream = io.StringIO()
    RedactingAccessLog(stream)("http", "complete", {
        "client": "127.0.0.1:1", "method": "GET", "path": f"/api/apps/a/sessions/s/events?token={key}",
        "status": 401, "size": 10,
    })
    assert key not in stream.getvalue() and "token=[redacted]" in stream.getvalue()


def test_background_task_params_hold_no_secret_at_rest(tmp_path):
    """A task launched with a secret in its parameters (e.g. by an agent's background_run): the row
    and its payload carry no plaintext, the worker's call does."""
    from apps_registry.selectors import app_runtime
    from tooling import background
    from tooling.models import BackgroundTask

    ws = tmp_path / "ws"
    ws.mkdir()
    _secret_app(ws, [{"steps": [{"say": "uses {{secret.API_TOKEN}}"}]}])  # a reference makes it the app's secret
    app = app_runtime(app_id="sec")
    task = background.background_task_launch(
        app=app, tool="filesystem.write", params={"path": "t.txt", "content": f"key={SECRET}"}, principal="alice",
        session_id=None,
    )
    row = BackgroundTask.objects.get(task_id=task.task_id)
    assert SECRET not in json.dumps(row.params)
    assert background.background_task_payload(row)["params"] == {"path": "t.txt", "content": "key=***"}
    assert background.background_task_run(task_id=task.task_id, worker="test:1") == "completed"
    assert (ws / "t.txt").read_text() == f"key={SECRET}"
    assert SECRET not in _dump()


def test_streamed_tokens_never_split_a_secret_across_events():
    from conversations.turns.context import split_before_secret_prefix as _split_before_secret_prefix
    from tooling.services import mask_secrets

    chunks = ["the key is Param", "Canary7f3a9c1e5b", "2d4a6c8e0f, done"]
    emitted, held = [], ""
    for chunk in chunks:
        safe, held = _split_before_secret_prefix(held + chunk, (SECRET,))
        emitted.append(mask_secrets(safe, (SECRET,)))
    emitted.append(mask_secrets(held, (SECRET,)))
    assert "".join(emitted) == "the key is ***, done"
    assert all("Param" not in e and "Canary" not in e for e in emitted), emitted
