"""Every SSE event type against the shapes an original Digitorn client reads.

``CONTRACT`` below is the contract (no snapshot files): for each event type, the fields it must
carry with their JSON types, and the additive fields this project may add (DESIGN §4, README
"Events"). A field outside both is a failure, so a renamed or stray field is caught. The events are
produced by real turns (scripted brain; the local OpenAI-compatible server for streamed tokens and
provider errors), read from the event log the streams replay verbatim, or off the wire for the
frames that are not logged (``connected``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import NoneType
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from apps_registry import services as registry
from conversations import services
from conversations.models import Event
from conversations.turns.scheduler import advance_session
from tests.helpers import make_workspace, scripted_manifest
from tests.llm_server import LLMServer, Reply
from tests.test_sessions_api import async_post, stream_post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("admin_key")]

ANY = object()  # any JSON value

USAGE = {"input_tokens": int, "output_tokens": int, "total_tokens": int}
TURN_END = {
    "required": {
        "content": str,
        "session_id": str,
        "usage": USAGE,
        "tool_calls_count": int,
        "turns_used": int,
        "error": (str, NoneType),
    },
    "additive": {"correlation_id": str, "truncated": bool, "cancelled": bool},
}

CONTRACT: dict[str, dict[str, dict[str, Any]]] = {
    "connected": {"required": {"session_id": str}, "additive": {"correlation_id": str}},
    "message_queued": {"required": {"correlation_id": str, "position": int, "queue_depth": int}, "additive": {}},
    "tool_start": {"required": {"id": str, "name": str, "params": dict}, "additive": {}},
    "tool_call": {
        "required": {"id": str, "name": str, "params": dict, "success": bool, "error": str, "result": ANY},
        "additive": {},
    },
    "token": {"required": {"delta": str}, "additive": {"correlation_id": str}},
    "result": TURN_END,
    "notification_result": TURN_END,
    "error": {
        "required": {"error": str, "code": str, "category": str, "retry": bool, "detail": str},
        "additive": {"correlation_id": str},
    },
    "memory_update": {"required": {"action": str}, "additive": {"tool": str, "id": str, "params": dict}},
    "hook": {
        "required": {"hook_id": str, "action_type": str, "phase": str, "details": dict},
        "additive": {"correlation_id": str, "event": str},
    },
    "hook_notification": {
        "required": {"title": str, "message": str, "level": str},
        "additive": {"hook_id": str, "correlation_id": str},
    },
    "status": {"required": {"phase": str}, "additive": {"correlation_id": str}},
    "in_token": {"required": {"count": int}, "additive": {"total": int, "model_call": int, "correlation_id": str}},
    "out_token": {"required": {"count": int}, "additive": {"total": int, "model_call": int, "correlation_id": str}},
    "stream_done": {"required": {}, "additive": {"correlation_id": str}},
    "agent_event": {
        "required": {"event": str, "agent_id": str, "task_id": str},
        "additive": {"parent_agent": (str, NoneType), "depth": int, "parent_id": str},
    },
    "approval_request": {
        "required": {
            "request_id": str,
            "session_id": str,
            "agent_id": str,
            "user_id": str,
            "app_id": str,
            "tool_name": str,
            "tool_params": dict,
            "risk_level": str,
            "description": str,
            "created_at": float,
            "expires_at": float,
        },
        "additive": {"call_id": str},
    },
    "approval_resolved": {"required": {"request_id": str, "approved": bool}, "additive": {"status": str, "message": str}},
    "notification": {
        "required": {
            "task_id": str,
            "tool_name": str,
            "status": str,
            "elapsed_seconds": (float, NoneType),
            "session_id": str,
            "hint": str,
        },
        # Exactly one of the two, by status (checked in the test).
        "additive": {"result_preview": str, "error": str},
    },
}
ERROR_CODES = {
    "credential_required", "credential_auth_required", "session_busy", "insufficient_balance", "auth_error",
    "rate_limited", "context_overflow", "network_error", "provider_error", "permission_denied", "internal_error",
    "session_gone",
}


def _type_ok(value: Any, expected: Any) -> bool:
    if expected is ANY:
        return True
    if isinstance(expected, dict):
        return isinstance(value, dict) and not _problems(value, {"required": expected, "additive": {}})
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not a number here
    if float in types:
        types = (*types, int)  # JSON has one number type
    return isinstance(value, types)


def _problems(data: Any, spec: dict[str, dict[str, Any]]) -> list[str]:
    if not isinstance(data, dict):
        return [f"payload is {type(data).__name__}, not an object"]
    out = []
    for name, expected in spec["required"].items():
        if name not in data:
            out.append(f"missing {name!r}")
        elif not _type_ok(data[name], expected):
            out.append(f"{name!r} is {data[name]!r}, expected {expected}")
    for name, value in data.items():
        if name in spec["required"]:
            continue
        if name not in spec["additive"]:
            out.append(f"unexpected field {name!r}")
        elif not _type_ok(value, spec["additive"][name]):
            out.append(f"{name!r} is {value!r}, expected {spec['additive'][name]}")
    return out


def conforms(type_: str, data: Any) -> dict:
    problems = _problems(data, CONTRACT[type_])
    assert not problems, f"{type_} {data}: {problems}"
    return data


def logged(session_pk: int, type_: str) -> list[dict]:
    """Payloads of one event type from the log (the streams send these rows verbatim)."""
    return [e.data for e in Event.objects.filter(session_id=session_pk, type=type_).order_by("seq")]


# Progress events every turn carries (`status`, token counts, `stream_done`, `agent_event`): checked
# against the contract like the others, left out of the order the tests below pin
# (test_progress_events_* pin theirs).
PROGRESS = {"status", "in_token", "out_token", "stream_done", "agent_event"}


def all_conform(session_pk: int, *, progress: bool = False) -> list[str]:
    """Every logged event of the session is in the contract and conforms; returns the types in order
    (without the progress events unless ``progress``)."""
    types = []
    for event in Event.objects.filter(session_id=session_pk).order_by("seq"):
        assert event.type in CONTRACT, f"event type {event.type!r} is not in the contract"
        conforms(event.type, event.data)
        if progress or event.type not in PROGRESS:
            types.append(event.type)
    return types


def frames(text: str) -> list[tuple[str, dict]]:
    out = []
    for frame in text.split("\n\n"):
        lines = frame.splitlines()
        kind = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = next((line[6:] for line in lines if line.startswith("data: ")), None)
        if kind is not None:
            out.append((kind, json.loads(data)))
    return out


def run(session_pk: int) -> None:
    async_to_sync(advance_session)(session_pk=session_pk)


def send(app_id: str, message: str, session_id: str = "s1") -> services.Enqueued:
    return services.message_enqueue(app_id=app_id, session_id=session_id, principal="alice", message=message)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, {"README.md": "# Demo project\n"})


@pytest.fixture
def app(ws: Path) -> str:
    registry.app_deploy(text=scripted_manifest("conf", ws, [
        {"when": "read", "steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "read: {result}"}]},
        {"when": "^never$", "steps": [{"say": "x"}]},
        {"when": "echo", "steps": [{"say": "echo: {message}"}]},
    ]), force=True)
    return "conf"


def test_the_contract_check_itself_rejects_drift():
    """The table bites: a missing, mistyped or unknown field fails."""
    good = {"id": "c1", "name": "filesystem.ls", "params": {}}
    assert not _problems(good, CONTRACT["tool_start"])
    assert _problems({"id": "c1", "name": "x"}, CONTRACT["tool_start"]) == ["missing 'params'"]
    assert _problems({**good, "params": "x"}, CONTRACT["tool_start"])
    assert _problems({**good, "label": "ls"}, CONTRACT["tool_start"]) == ["unexpected field 'label'"]
    assert _problems({"error": "x", "code": "c", "category": "c", "retry": 1, "detail": ""}, CONTRACT["error"])


def session_stream(session_pk: int, session_id: str, count: int) -> list[tuple[str, dict]]:
    """The first ``count`` frames of the persistent stream's generator, pings skipped."""
    from conversations.api.sse import _session_frames, _StreamGuard

    async def go() -> list[str]:
        out: list[str] = []
        guard = _StreamGuard("", None)
        async for frame in _session_frames(session_pk, session_id, 0, True, guard, app_id="conf", principal="admin"):
            if not frame.startswith(":"):
                out.append(frame)
            if len(out) == count:
                break
        return out

    return frames("".join(async_to_sync(go)()))


def test_connected(app):
    response, text = stream_post("/api/apps/conf/chat/stream", {"session_id": "w1", "message": "echo hi"})
    kind, data = frames(text)[0]
    assert kind == "connected" and conforms("connected", data)["session_id"] == "w1"
    session = services.session_resolve(app_id="conf", session_id="w1", principal="admin")
    kind, data = session_stream(session.pk, "w1", 1)[0]
    assert kind == "connected" and conforms("connected", data) == {"session_id": "w1"}


def test_message_queued(app):
    first = send("conf", "echo one")
    send("conf", "echo two")
    run(first.session_pk)
    queued = logged(first.session_pk, "message_queued")
    assert len(queued) == 1 and conforms("message_queued", queued[0])["position"] == 1
    assert all_conform(first.session_pk) == ["message_queued", "result", "result"]


def test_tool_start(app):
    enq = send("conf", "read the readme")
    run(enq.session_pk)
    start = conforms("tool_start", logged(enq.session_pk, "tool_start")[0])
    assert start["name"] == "filesystem.read" and start["params"] == {"path": "README.md"}
    # Before the tool ran: its tool_call comes after.
    assert all_conform(enq.session_pk) == ["tool_start", "tool_call", "result"]


def test_tool_call(app):
    enq = send("conf", "read the readme")
    run(enq.session_pk)
    start, = logged(enq.session_pk, "tool_start")
    call = conforms("tool_call", logged(enq.session_pk, "tool_call")[0])
    assert call["id"] == start["id"] and call["success"] is True and call["error"] == ""
    assert "Demo project" in json.dumps(call["result"])


def test_result_on_the_log_chat_and_chat_stream(app):
    enq = send("conf", "read the readme")
    run(enq.session_pk)
    result = conforms("result", logged(enq.session_pk, "result")[0])
    assert result["session_id"] == "s1" and result["tool_calls_count"] == 1 and result["turns_used"] == 2
    assert result["error"] is None and "Demo project" in result["content"]
    # /chat answers the same object as its data.
    response = async_post("/api/apps/conf/chat", {"session_id": "w2", "message": "echo sync"})
    data = conforms("result", response.json()["data"])
    session_pk = services.session_resolve(app_id="conf", session_id="w2", principal="admin").pk
    assert data == logged(session_pk, "result")[-1]
    # /chat/stream ends with it: the last frame, then the stream closes.
    _response, text = stream_post("/api/apps/conf/chat/stream", {"session_id": "w3", "message": "read it"})
    wire = frames(text)
    for kind, payload in wire:
        conforms(kind, payload)
    assert [k for k, _ in wire if k not in PROGRESS] == ["connected", "tool_start", "tool_call", "result"]


def test_token_and_usage_from_a_streaming_model(ws):
    with LLMServer() as llm:
        llm.enqueue(Reply(text="Hello from the model", chunks=["Hello ", "from ", "the model"]))
        registry.app_deploy(text=json.dumps({
            "schema_version": 2,
            "app": {"app_id": "conf-llm", "name": "conf-llm"},
            "agents": [{"id": "assistant", "brain": {"provider": "openai", "model": "m",
                                                     "config": {"base_url": llm.base_url, "api_key": "k"}}}],
        }), force=True)
        enq = send("conf-llm", "hi")
        run(enq.session_pk)
    tokens = [conforms("token", t) for t in logged(enq.session_pk, "token")]
    assert tokens and "".join(t["delta"] for t in tokens) == "Hello from the model"
    result = conforms("result", logged(enq.session_pk, "result")[0])
    assert result["usage"] == {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}


def test_error_from_the_scripted_brain(app):
    enq = send("conf", "nothing matches this")
    run(enq.session_pk)
    error = conforms("error", logged(enq.session_pk, "error")[0])
    assert error["code"] in ERROR_CODES and error["code"] == "provider_error" and "no_rule" in error["detail"]
    result = conforms("result", logged(enq.session_pk, "result")[0])
    assert result["error"] == error["error"]


def test_error_when_the_session_is_deleted_under_a_stream(app):
    enq = send("conf", "echo hi", session_id="gone")
    services.session_delete(app_id="conf", session_id="gone", principal="alice")
    (_, _), (kind, data) = session_stream(enq.session_pk, "gone", 2)
    assert kind == "error" and conforms("error", data)["code"] == "session_gone" and data["retry"] is False


def test_error_codes_from_a_provider(ws):
    with LLMServer() as llm:
        llm.enqueue(Reply(status=401, error="invalid api key", error_code="invalid_api_key"))
        registry.app_deploy(text=json.dumps({
            "schema_version": 2,
            "app": {"app_id": "conf-auth", "name": "conf-auth"},
            "agents": [{"id": "assistant", "brain": {"provider": "openai", "model": "m",
                                                     "config": {"base_url": llm.base_url, "api_key": "k"}}}],
        }), force=True)
        enq = send("conf-auth", "hi")
        run(enq.session_pk)
    error = conforms("error", logged(enq.session_pk, "error")[0])
    assert (error["code"], error["category"], error["retry"]) == ("auth_error", "auth", False)


def test_memory_update_after_a_memory_tool(ws):
    """The original's clients refresh their memory panels on `memory_update` (its functional suite
    waits for one with an ``action`` after set_goal); other tools do not send it."""
    doc = json.loads(scripted_manifest("conf-mem", ws, [
        {"when": "goal", "steps": [{"call": "memory.set_goal", "params": {"goal": "Ship it"}}, {"say": "set"}]},
        {"when": "read", "steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "ok"}]},
    ]))
    doc["tools"]["modules"]["memory"] = {}
    registry.app_deploy(text=json.dumps(doc), force=True)
    enq = send("conf-mem", "set the goal")
    run(enq.session_pk)
    assert all_conform(enq.session_pk) == ["tool_start", "tool_call", "memory_update", "result"]
    update = conforms("memory_update", logged(enq.session_pk, "memory_update")[0])
    assert update["action"] == "set_goal" and update["params"] == {"goal": "Ship it"}
    enq = send("conf-mem", "read the readme", session_id="s2")
    run(enq.session_pk)
    assert logged(enq.session_pk, "memory_update") == []


def test_hook(ws):
    registry.app_deploy(text=scripted_manifest("conf-hook", ws, [{"steps": [{"say": "ok {message}"}]}],
                                               runtime={"context_window_messages": 4}), force=True)
    for i in range(4):
        enq = send("conf-hook", f"m{i}")
        run(enq.session_pk)
    hook = conforms("hook", logged(enq.session_pk, "hook")[0])
    assert hook["hook_id"] == "_auto_compact" and hook["details"]["kept_messages"] <= 4


def test_approval_request_and_resolved(ws):
    from approvals.services import approval_decide

    registry.app_deploy(text=scripted_manifest("conf-appr", ws, [{"steps": [
        {"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "file: {result}"},
    ]}], capabilities={"default_policy": "auto",
                       "approve": [{"module": "filesystem", "actions": ["read"], "reason": "reads files"}]}), force=True)
    enq = send("conf-appr", "go")
    run(enq.session_pk)
    request = conforms("approval_request", logged(enq.session_pk, "approval_request")[0])
    assert (request["tool_name"], request["tool_params"]) == ("filesystem.read", {"path": "README.md"})
    assert (request["app_id"], request["session_id"], request["user_id"]) == ("conf-appr", "s1", "alice")
    assert request["agent_id"] == "assistant" and request["description"] == "reads files"
    assert request["expires_at"] > request["created_at"] > 1.7e9  # epoch seconds
    approval_decide(app_id="conf-appr", request_id=request["request_id"], approved=True, message="",
                    principal="alice")
    run(enq.session_pk)
    resolved = conforms("approval_resolved", logged(enq.session_pk, "approval_resolved")[0])
    assert resolved["request_id"] == request["request_id"] and resolved["approved"] is True
    assert all_conform(enq.session_pk) == ["tool_start", "approval_request", "approval_resolved", "tool_call", "result"]


def test_notification_and_notification_result(ws):
    """A turn launches two background tasks; the worker function runs them here (one completes, one
    fails); each finish notifies the session, and a notification turn ends with notification_result
    then result."""
    from tooling.background import background_task_run
    from tooling.models import BackgroundTask

    registry.app_deploy(text=scripted_manifest("conf-bg", ws, [
        {"when": "launch", "steps": [
            {"call": "background_run", "params": {"tool": "filesystem.read", "params": {"path": "README.md"}}},
            {"call": "background_run", "params": {"tool": "filesystem.read", "params": {"path": "missing.txt"}}},
            {"say": "launched"},
        ]},
        {"steps": [{"say": "noted"}]},
    ]), force=True)
    enq = send("conf-bg", "launch them")
    run(enq.session_pk)
    tasks = list(BackgroundTask.objects.filter(app_id="conf-bg").order_by("created_at", "id"))
    assert len(tasks) == 2
    for task in tasks:
        background_task_run(task_id=task.task_id, worker="conformance-test")
    notes = [conforms("notification", n) for n in logged(enq.session_pk, "notification")]
    by_status = {n["status"]: n for n in notes}
    assert set(by_status) == {"completed", "failed"}
    done, failed = by_status["completed"], by_status["failed"]
    assert done["tool_name"] == "filesystem.read" and done["session_id"] == "s1"
    assert "Demo project" in done["result_preview"] and "error" not in done
    assert failed["error"] and "result_preview" not in failed
    assert isinstance(done["elapsed_seconds"], float)

    drained, _summaries = services.notifications_drain(app_id="conf-bg", session_id="s1", principal="alice")
    run(drained.session_pk)
    assert all_conform(enq.session_pk)[-2:] == ["notification_result", "result"]
    note_result = conforms("notification_result", logged(enq.session_pk, "notification_result")[0])
    assert note_result == logged(enq.session_pk, "result")[-1]
