"""The agent loop with the scripted brain, real tools and real SQLite (no daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync

from apps_registry import services as registry
from conversations import services
from conversations.engine import advance_session
from conversations.models import Event, Message, Session, Turn

pytestmark = pytest.mark.django_db(transaction=True)


def manifest(app_id: str, ws: Path, rules: list, *, runtime: dict | None = None, capabilities: dict | None = None,
             mode: str = "conversation") -> str:
    doc = {
        "schema_version": 2,
        "app": {"app_id": app_id, "name": app_id, "mode": mode},
        "agents": [{"id": "assistant", "system_prompt": "You help.",
                    "brain": {"provider": "scripted", "config": {"rules": rules}}}],
        "tools": {"modules": {"filesystem": {"workspace": str(ws)}, "shell": {}}},
    }
    if runtime:
        doc["runtime"] = runtime
    if capabilities:
        doc["capabilities"] = capabilities
    return json.dumps(doc)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "README.md").write_text("# Demo project\n")
    (root / "main.py").write_text("print('hi')\n")
    return root


def deploy(text: str):
    return registry.app_deploy(text=text, force=True)


def send(app_id: str, message: str, session_id: str = "s1", principal: str = "alice") -> services.Enqueued:
    return services.message_enqueue(app_id=app_id, session_id=session_id, principal=principal, message=message)


def run(session_pk: int) -> None:
    async_to_sync(advance_session)(session_pk=session_pk)


def events(session_pk: int) -> list[Event]:
    return list(Event.objects.filter(session_id=session_pk).order_by("seq"))


def test_one_tool_call_then_answer(ws):
    deploy(manifest("eng", ws, [{"when": "read", "steps": [
        {"call": "filesystem.read", "params": {"path": "README.md"}},
        {"say": "It says: {result}"},
    ]}]))
    enq = send("eng", "please read the readme")
    run(enq.session_pk)
    evs = events(enq.session_pk)
    assert [e.type for e in evs] == ["tool_call", "result", "done"]
    assert [e.seq for e in evs] == [1, 2, 3]
    call, result, done = (e.data for e in evs)
    assert call["name"] == "filesystem.read" and call["params"] == {"path": "README.md"}
    assert result["id"] == call["id"] and result["success"] is True
    assert "Demo project" in json.dumps(result["data"])
    assert done["correlation_id"] == enq.correlation_id
    assert done["tool_calls_count"] == 1 and done["turns_used"] == 2
    assert done["truncated"] is False and done["cancelled"] is False
    assert "Demo project" in done["content"]
    roles = list(Message.objects.filter(session_id=enq.session_pk).values_list("role", flat=True))
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert Turn.objects.get(correlation_id=enq.correlation_id).status == Turn.Status.DONE
    assert Session.objects.get(pk=enq.session_pk).status == Session.Status.IDLE
