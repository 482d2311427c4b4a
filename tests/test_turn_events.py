"""Issue 15's events: `status`, `in_token` / `out_token`, `stream_done` around every model call, and
the manifest's hooks (`hook`, `hook_notification`, injected messages). Real turns (scripted brain,
the local OpenAI-compatible server for a real model's usage), read from the event log the streams
replay verbatim; every payload is checked against the contract table of test_event_conformance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps_registry import services as registry
from conversations.models import Event, Message
from tests.helpers import scripted_manifest as manifest
from tests.llm_server import LLMServer, Reply
from tests.test_event_conformance import all_conform, conforms, logged, run, send

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "README.md").write_text("# Demo project\n")
    return root


def model_app(app_id: str, llm: LLMServer, ws: Path, **extra) -> None:
    doc = {
        "schema_version": 2,
        "app": {"app_id": app_id, "name": app_id},
        "agents": [{"id": "assistant", "brain": {"provider": "openai", "model": "m",
                                                 "config": {"base_url": llm.base_url, "api_key": "k"}}}],
        "tools": {"modules": {"filesystem": {"workspace": str(ws)}}},
        **extra,
    }
    registry.app_deploy(text=json.dumps(doc), force=True)


def phases(session_pk: int) -> list[str]:
    return [conforms("status", s)["phase"] for s in logged(session_pk, "status")]


def test_progress_events_of_a_streamed_answer(ws):
    with LLMServer() as llm:
        llm.enqueue(Reply(text="Hello there", chunks=["Hello ", "there"]))
        model_app("ev-text", llm, ws)
        enq = send("ev-text", "hi")
        run(enq.session_pk)
    types = [t for t in all_conform(enq.session_pk, progress=True) if t != "token"]
    # status first (with the claim), then the call's counts and stream_done, status done, result last.
    assert types == ["status", "in_token", "out_token", "stream_done", "status", "result"]
    assert phases(enq.session_pk) == ["thinking", "done"]
    everything = [e.type for e in Event.objects.filter(session_id=enq.session_pk).order_by("seq")]
    assert everything.index("token") < everything.index("stream_done")  # the text, then "it is complete"
    (tokens_in,), (tokens_out,) = logged(enq.session_pk, "in_token"), logged(enq.session_pk, "out_token")
    assert (tokens_in["count"], tokens_out["count"]) == (11, 7) and tokens_in["model_call"] == 1
    assert logged(enq.session_pk, "result")[0]["usage"]["input_tokens"] == tokens_in["total"] == 11


def test_progress_events_around_a_tool_call(ws):
    with LLMServer() as llm:
        llm.enqueue(Reply(tool_calls=[("filesystem.read", {"path": "README.md"})]), Reply(text="It is a demo."))
        model_app("ev-tool", llm, ws)
        enq = send("ev-tool", "read the readme")
        run(enq.session_pk)
    types = [t for t in all_conform(enq.session_pk, progress=True) if t != "token"]
    assert types == [
        "status", "in_token", "out_token", "stream_done", "status",  # first call: its text ended, tools next
        "tool_start", "tool_call",
        "status", "in_token", "out_token", "stream_done", "status", "result",  # second call, then the end
    ]
    assert phases(enq.session_pk) == ["thinking", "tool", "thinking", "done"]
    ins = logged(enq.session_pk, "in_token")
    assert [(i["count"], i["total"], i["model_call"]) for i in ins] == [(11, 11, 1), (11, 22, 2)]
    assert logged(enq.session_pk, "result")[0]["usage"]["output_tokens"] == logged(enq.session_pk, "out_token")[-1]["total"]
    seqs = list(Event.objects.filter(session_id=enq.session_pk).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))  # carried events take gapless seqs like the others


def test_scripted_brain_reports_phases_but_no_token_counts(ws):
    """The scripted brain has no usage and streams nothing: only `status` comes along."""
    registry.app_deploy(text=manifest("ev-script", ws, [
        {"steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "done"}]},
    ]), force=True)
    enq = send("ev-script", "go")
    run(enq.session_pk)
    assert all_conform(enq.session_pk, progress=True) == [
        "status", "status", "tool_start", "tool_call", "status", "status", "result"]
    assert phases(enq.session_pk) == ["thinking", "tool", "thinking", "done"]


def test_a_resumed_turn_says_thinking_after_the_results_it_records(ws):
    from approvals.services import approval_decide

    registry.app_deploy(text=manifest("ev-appr", ws, [{"steps": [
        {"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "file: {result}"},
    ]}], capabilities={"default_policy": "auto", "approve": [{"module": "filesystem", "actions": ["read"]}]}),
        force=True)
    enq = send("ev-appr", "go")
    run(enq.session_pk)
    request = logged(enq.session_pk, "approval_request")[0]
    approval_decide(app_id="ev-appr", request_id=request["request_id"], approved=True, message="", principal="alice")
    run(enq.session_pk)
    assert all_conform(enq.session_pk, progress=True) == [
        "status", "status", "tool_start", "approval_request", "approval_resolved", "tool_call", "status", "status",
        "result"]
    assert phases(enq.session_pk) == ["thinking", "tool", "thinking", "done"]


# --- hooks -----------------------------------------------------------------------------------------


HOOKS = [
    {"id": "greet", "on": "session_start", "action": {"type": "notify", "title": "Hi", "message": "welcome"}},
    {"id": "count", "on": "user_prompt", "condition": {"type": "always"},
     "action": {"type": "log", "message": "turn {turn}, {messages} messages, {0} {turn.__class__}"}},
    {"id": "checkpoint", "on": "turn_end", "condition": {"type": "turn_count", "interval": 2},
     "action": {"type": "inject_message", "role": "system", "content": "[HOOK] Turn checkpoint reached."}},
    {"id": "squash", "on": "turn_end", "condition": {"type": "all_of", "conditions": [
        {"type": "tool_calls", "threshold": 1}, {"type": "not", "condition": {"type": "never"}}]},
     "action": {"type": "compact_context", "strategy": "summarize"}},
    {"id": "off", "on": "turn_end", "enabled": False, "action": {"type": "log", "message": "never"}},
    {"id": "once", "on": "turn_start", "max_fires": 1, "action": {"type": "log", "message": "first"}},
    {"id": "odd", "on": "turn_end", "condition": {"type": "turn_count", "threshold": "many"},
     "action": {"type": "log", "message": "x"}},
]


def hook_app(ws: Path, app_id: str = "ev-hooks") -> None:
    registry.app_deploy(text=manifest(app_id, ws, [
        {"when": "read", "steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "read"}]},
        {"steps": [{"say": "ok {message}"}]},
    ], runtime={"hooks": HOOKS}), force=True)


def fired(session_pk: int, correlation_id: str) -> list[tuple[str, str, str]]:
    return [(h["hook_id"], h["event"], h["phase"]) for h in
            (conforms("hook", e.data) for e in Event.objects.filter(session_id=session_pk, type="hook",
                                                                    correlation_id=correlation_id).order_by("seq"))]


def test_hooks_fire_at_their_points_with_their_actions(ws):
    from apps_registry.selectors import app_compiled

    hook_app(ws)
    warnings = app_compiled(app_id="ev-hooks").warnings
    assert any(w.startswith("runtime.hooks[3].action") and "compact_context" in w for w in warnings)
    assert [h["id"] for h in app_compiled(app_id="ev-hooks").runtime.hooks] == [h["id"] for h in HOOKS]

    first = send("ev-hooks", "hello")
    run(first.session_pk)
    all_conform(first.session_pk)  # hook and hook_notification payloads against the contract
    assert fired(first.session_pk, first.correlation_id) == [
        ("greet", "session_start", "end"), ("count", "turn_start", "end"), ("once", "turn_start", "end")]
    note = conforms("hook_notification", logged(first.session_pk, "hook_notification")[0])
    assert (note["title"], note["message"], note["level"], note["hook_id"]) == ("Hi", "welcome", "info", "greet")
    count = [e.data for e in Event.objects.filter(session_id=first.session_pk, type="hook")][1]
    # Only the original's named placeholders are filled; any other brace text stays as written.
    assert count["details"]["message"] == "turn 1, 1 messages, {0} {turn.__class__}"
    types = [e.type for e in Event.objects.filter(session_id=first.session_pk).order_by("seq")]
    assert types[-1] == "result" and types.index("hook") < types.index("result")

    second = send("ev-hooks", "read the readme")
    run(second.session_pk)
    assert fired(second.session_pk, second.correlation_id) == [
        ("count", "turn_start", "end"), ("checkpoint", "turn_end", "end"), ("squash", "turn_end", "skipped")]
    squash = [e.data for e in Event.objects.filter(type="hook", correlation_id=second.correlation_id)][-1]
    assert "not run by this daemon" in squash["details"]["reason"]
    # inject_message at turn_end: after the turn's answer, read by the model from the next turn on.
    last = list(Message.objects.filter(session_id=second.session_pk).order_by("id"))[-2:]
    assert [(m.role, m.content) for m in last] == [("assistant", "read"), ("system", "[HOOK] Turn checkpoint reached.")]

    third = send("ev-hooks", "again")
    run(third.session_pk)
    assert fired(third.session_pk, third.correlation_id) == [("count", "turn_start", "end")]  # `once` fired once


def test_an_injected_message_reaches_the_model(ws):
    with LLMServer() as llm:
        llm.enqueue(Reply(text="one"), Reply(text="two"))
        model_app("ev-inject", llm, ws, runtime={"hooks": [
            {"id": "remind", "on": "turn_start", "action": {"type": "inject_message", "role": "user",
                                                              "content": "Remember: be brief."}},
        ]})
        enq = send("ev-inject", "hi")
        run(enq.session_pk)
        sent = llm.requests[-1].json["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"][-2:] == ["hi", "Remember: be brief."]
    assert logged(enq.session_pk, "hook")[0]["details"] == {"condition": "always", "fire_count": 1, "role": "user",
                                                            "chars": 19}


def test_an_app_without_hooks_writes_no_hook_events(ws):
    registry.app_deploy(text=manifest("ev-none", ws, [{"steps": [{"say": "ok"}]}]), force=True)
    enq = send("ev-none", "hi")
    run(enq.session_pk)
    assert logged(enq.session_pk, "hook") == [] and logged(enq.session_pk, "hook_notification") == []


def test_hostile_hooks_are_refused_or_harmless(ws):
    from digitorn_site.errors import DigitornError

    bad = manifest("ev-bad", ws, [{"steps": [{"say": "ok"}]}], runtime={"hooks": [
        {"id": "h", "on": "turn_ending", "action": {"type": "log"}}]})
    with pytest.raises(DigitornError):
        registry.app_deploy(text=bad, force=True)
    # Deep nesting, wrong types, a huge message: compiled, fired or not, never a failed turn.
    deep: dict = {"type": "always"}
    for _ in range(50):
        deep = {"type": "not", "condition": deep}
    registry.app_deploy(text=manifest("ev-odd", ws, [{"steps": [{"say": "ok"}]}], runtime={"hooks": [
        {"id": "deep", "on": "turn_end", "condition": deep, "action": {"type": "log", "message": "deep"}},
        {"id": "types", "on": "turn_end", "condition": {"type": "always", "threshold": [1]},
         "action": {"type": "notify", "title": {"x": 1}, "message": 5, "level": "shout"}},
        {"id": "big", "on": "turn_end", "action": {"type": "inject_message", "content": "x" * 100_000}},
    ]}), force=True)
    enq = send("ev-odd", "hi")
    run(enq.session_pk)
    all_conform(enq.session_pk)
    assert logged(enq.session_pk, "result")[0]["error"] is None
    assert [h["hook_id"] for h in logged(enq.session_pk, "hook")] == ["types", "big"]
    note = logged(enq.session_pk, "hook_notification")[0]
    assert (note["title"], note["message"], note["level"]) == ("types", "", "info")
    injected = Message.objects.filter(session_id=enq.session_pk, role="system").last()
    assert len(injected.content) == 20_000


def test_a_secret_named_in_a_hook_reaches_no_event_message_or_log(ws, caplog):
    registry.secret_set(app_id="ev-secret", key="TOKEN", value="sk-hook-secret-42")
    registry.app_deploy(text=manifest("ev-secret", ws, [{"steps": [{"say": "ok"}]}], runtime={"hooks": [
        {"id": "tell", "on": "turn_start", "action": {"type": "notify", "title": "t {{secret.TOKEN}}",
                                                       "message": "key {{secret.TOKEN}}"}},
        {"id": "note", "on": "turn_start", "action": {"type": "log", "message": "using {{secret.TOKEN}}"}},
        {"id": "add", "on": "turn_end", "action": {"type": "inject_message", "content": "token {{secret.TOKEN}}"}},
    ]}), force=True)
    with caplog.at_level("INFO", logger="digitorn.hooks"):
        enq = send("ev-secret", "hi")
        run(enq.session_pk)
    note = logged(enq.session_pk, "hook_notification")[0]
    assert note["message"].startswith("key ") and [h["hook_id"] for h in logged(enq.session_pk, "hook")] == [
        "tell", "note", "add"]
    stored = json.dumps([e.data for e in Event.objects.filter(session_id=enq.session_pk)])
    stored += json.dumps([m.content for m in Message.objects.filter(session_id=enq.session_pk)])
    assert "sk-hook-secret-42" not in stored + caplog.text
    assert Message.objects.filter(session_id=enq.session_pk, role="system").last().content.startswith("token ")
