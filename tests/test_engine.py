"""The agent loop with the scripted brain, real tools and real SQLite (no daemon)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync

from apps_registry import services as registry
from conversations import services
from conversations.models import Event, Message, Session, Turn
from conversations.turns import state as turn_state
from conversations.turns.scheduler import advance_session
from tests.helpers import deploy, make_workspace, scripted_manifest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, {"README.md": "# Demo project\n", "main.py": "print('hi')\n"})


def send(app_id: str, message: str, session_id: str = "s1", principal: str = "alice") -> services.Enqueued:
    return services.message_enqueue(app_id=app_id, session_id=session_id, principal=principal, message=message)


def run(session_pk: int) -> None:
    async_to_sync(advance_session)(session_pk=session_pk)


# Progress events every turn carries (issue 15: `status`, `in_token`/`out_token`, `stream_done`,
# `agent_event`); the sequences asserted below are those of the turn's other events
# (tests/test_turn_events.py pins where the progress events go).
PROGRESS = {"status", "in_token", "out_token", "stream_done", "agent_event"}


def events(session_pk: int, *, progress: bool = False) -> list[Event]:
    rows = list(Event.objects.filter(session_id=session_pk).order_by("seq"))
    return rows if progress else [e for e in rows if e.type not in PROGRESS]


def gapless(session_pk: int) -> bool:
    return [e.seq for e in events(session_pk, progress=True)] == list(range(1, len(events(session_pk, progress=True)) + 1))


def test_one_tool_call_then_answer(ws):
    deploy(scripted_manifest("eng", ws, [{"when": "read", "steps": [
        {"call": "filesystem.read", "params": {"path": "README.md"}},
        {"say": "It says: {result}"},
    ]}]))
    enq = send("eng", "please read the readme")
    run(enq.session_pk)
    evs = events(enq.session_pk)
    assert [e.type for e in evs] == ["tool_start", "tool_call", "result"]
    assert gapless(enq.session_pk) and [e.seq for e in evs] == sorted(e.seq for e in evs)
    start, call, done = (e.data for e in evs)
    assert start["name"] == "filesystem.read" and start["params"] == {"path": "README.md"}
    assert call["id"] == start["id"] and call["success"] is True and call["error"] == ""
    assert call["params"] == {"path": "README.md"}
    assert "Demo project" in json.dumps(call["result"])
    assert done["correlation_id"] == enq.correlation_id and done["error"] is None
    assert done["tool_calls_count"] == 1 and done["turns_used"] == 2
    assert done["truncated"] is False and done["cancelled"] is False
    assert "Demo project" in done["content"]
    roles = list(Message.objects.filter(session_id=enq.session_pk).values_list("role", flat=True))
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert Turn.objects.get(correlation_id=enq.correlation_id).status == Turn.Status.DONE
    assert Session.objects.get(pk=enq.session_pk).status == Session.Status.IDLE


def test_two_queued_messages_run_serially_in_order(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "echo: {message}"}]}]))
    first = send("eng", "one")
    second = send("eng", "two")
    assert (first.position, second.position) == (0, 1)
    assert second.queue_depth == 2
    run(first.session_pk)
    evs = events(first.session_pk)
    assert [e.type for e in evs] == ["message_queued", "result", "result"]
    assert gapless(first.session_pk) and evs[0].seq == 1
    assert [e.data["content"] for e in evs[1:]] == ["echo: one", "echo: two"]
    assert [e.correlation_id for e in evs[1:]] == [first.correlation_id, second.correlation_id]


def test_queue_depth_limit(ws, settings):
    settings.DIGITORN_QUEUE_DEPTH = 2
    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "ok"}]}]))
    send("eng", "a")
    send("eng", "b")
    from digitorn_site.errors import QueueFullError

    with pytest.raises(QueueFullError) as info:
        send("eng", "c")
    assert "limit is 2" in info.value.message


def test_approval_suspends_then_resumes_on_approve(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [
        {"call": "filesystem.read", "params": {"path": "README.md"}},
        {"say": "file says {result}"},
    ]}], capabilities={"default_policy": "auto",
                       "approve": [{"module": "filesystem", "actions": ["read"], "reason": "reads files"}]}))
    enq = send("eng", "run it")
    run(enq.session_pk)
    turn = Turn.objects.get(correlation_id=enq.correlation_id)
    assert turn.status == Turn.Status.WAITING_APPROVAL
    assert turn.lease_owner == ""
    evs = events(enq.session_pk)
    assert [e.type for e in evs] == ["tool_start", "approval_request"]
    request = evs[1].data
    assert request["call_id"] == evs[0].data["id"] and request["description"] == "reads files"
    assert request["tool_name"] == "filesystem.read" and request["tool_params"] == {"path": "README.md"}
    assert request["expires_at"] > request["created_at"]

    from approvals.services import approval_decide

    approval_decide(app_id="eng", request_id=request["request_id"], approved=True, message="", principal="alice")
    run(enq.session_pk)
    types = [e.type for e in events(enq.session_pk)]
    # The approved call runs on resume without a second tool_start.
    assert types == ["tool_start", "approval_request", "approval_resolved", "tool_call", "result"]
    done = events(enq.session_pk)[-1].data
    assert "Demo project" in done["content"]
    assert Turn.objects.get(pk=turn.pk).status == Turn.Status.DONE


def test_denied_approval_tells_the_model_why(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [
        {"call": "filesystem.read", "params": {"path": "README.md"}},
        {"say": "outcome {result}"},
    ]}], capabilities={"default_policy": "auto", "approve": [{"module": "filesystem", "actions": ["read"]}]}))
    enq = send("eng", "run it")
    run(enq.session_pk)
    request_id = events(enq.session_pk)[-1].data["request_id"]
    from approvals.services import approval_decide

    approval_decide(app_id="eng", request_id=request_id, approved=False, message="not today", principal="alice")
    run(enq.session_pk)
    evs = events(enq.session_pk)
    assert [e.type for e in evs][-3:] == ["approval_resolved", "tool_call", "result"]
    assert evs[-3].data["approved"] is False
    assert evs[-2].data["success"] is False and evs[-2].data["error"] == "denied: not today"
    assert "denied: not today" in evs[-1].data["content"]
    assert "Demo project" not in json.dumps(evs[-2].data)


def test_cancel_while_waiting_for_approval(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}]}],
                             capabilities={"default_policy": "auto", "approve": [{"module": "filesystem", "actions": ["read"]}]}))
    enq = send("eng", "go")
    run(enq.session_pk)
    result = services.session_cancel(app_id="eng", session_id="s1", principal="alice")
    assert result["status"] == "cancelled"
    evs = events(enq.session_pk)
    done = evs[-1]
    assert done.type == "result" and done.data["cancelled"] is True
    # The call held back by the approval is answered on the stream too.
    assert evs[-2].type == "tool_call" and evs[-2].data["error"] == "cancelled" and evs[-2].data["success"] is False
    from approvals.models import ApprovalRequest

    assert ApprovalRequest.objects.get(request_id=events(enq.session_pk)[1].data["request_id"]).status == "cancelled"
    # The unanswered call got a result, so the next turn's transcript is valid for any chat API.
    tool = Message.objects.get(session_id=enq.session_pk, role="tool")
    assert json.loads(tool.content)["error"] == "cancelled"


def test_cancel_flag_stops_a_turn_at_the_next_step(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"call": "filesystem.ls", "params": {"path": "."}}, {"say": "x"}]}]))
    enq = send("eng", "go")
    Turn.objects.filter(correlation_id=enq.correlation_id).update(cancel_requested=True)
    run(enq.session_pk)
    done = events(enq.session_pk)[-1]
    assert done.type == "result" and done.data["cancelled"] is True and done.data["tool_calls_count"] == 0


def test_max_turns_truncates_and_says_so(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"call": "filesystem.ls", "params": {"path": "."}}] * 5}],
                             runtime={"max_turns": 2}))
    enq = send("eng", "loop")
    run(enq.session_pk)
    done = events(enq.session_pk)[-1].data
    assert done["truncated"] is True and done["turns_used"] == 2
    assert "max_turns" in done["content"]


def test_no_matching_rule_is_an_error_event_then_done(ws):
    deploy(scripted_manifest("eng", ws, [{"when": "^never$", "steps": [{"say": "x"}]}]))
    enq = send("eng", "something else")
    run(enq.session_pk)
    evs = events(enq.session_pk)
    assert [e.type for e in evs] == ["error", "result"]
    assert evs[0].data["code"] == "provider_error" and "no_rule" in evs[0].data["detail"]
    assert evs[0].data["correlation_id"] == enq.correlation_id and evs[0].data["retry"] is False
    assert evs[1].data["content"] == evs[0].data["error"] == evs[1].data["error"]


def test_invalid_params_go_back_to_the_model(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"call": "filesystem.read", "params": {"pathh": "x"}}, {"say": "{result}"}]}]))
    enq = send("eng", "go")
    run(enq.session_pk)
    evs = events(enq.session_pk)
    assert [e.type for e in evs] == ["tool_start", "tool_call", "result"]
    assert evs[1].data["success"] is False and "path" in evs[1].data["error"]


def test_context_compaction_emits_a_hook(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "ok {message}"}]}], runtime={"context_window_messages": 4}))
    for i in range(4):
        enq = send("eng", f"m{i}")
        run(enq.session_pk)
    hooks = [e for e in events(enq.session_pk) if e.type == "hook"]
    assert hooks and hooks[0].data["hook_id"] == "_auto_compact"
    assert hooks[0].data["action_type"] == "compact_context"
    assert hooks[-1].data["details"]["kept_messages"] <= 4
    assert events(enq.session_pk)[-1].data["content"] == "ok m3"


def test_resume_after_a_crashed_worker(ws):
    """A turn whose worker died mid-step (lease expired) is picked up and finished elsewhere."""
    from datetime import timedelta

    from django.utils import timezone

    deploy(scripted_manifest("eng", ws, [{"steps": [{"call": "filesystem.ls", "params": {"path": "."}}, {"say": "finished"}]}]))
    enq = send("eng", "go")
    claim = turn_state.turn_claim(session_pk=enq.session_pk, worker="dead-worker")
    assert claim is not None
    # Another worker cannot take it while the lease is valid ...
    assert turn_state.turn_claim(session_pk=enq.session_pk, worker="other") is None
    Turn.objects.filter(pk=claim.turn_pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert enq.session_pk in turn_state.turns_recoverable()
    run(enq.session_pk)
    turn = Turn.objects.get(pk=claim.turn_pk)
    assert turn.status == Turn.Status.DONE and turn.attempts == 2
    assert [m.role for m in Message.objects.filter(session_id=enq.session_pk)].count("user") == 1
    assert events(enq.session_pk)[-1].data["content"] == "finished"


def test_the_periodic_recovery_resumes_an_expired_lease(ws):
    """The beat's `recover_leases` (every 10 s): nothing to do without an active turn; a turn whose
    worker died (lease expired) gets its session advanced (a Celery message per session)."""
    from datetime import timedelta

    from django.utils import timezone

    from conversations.tasks import recover_leases

    assert recover_leases() == 0
    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "finished"}]}]))
    enq = send("eng", "go")
    claim = turn_state.turn_claim(session_pk=enq.session_pk, worker="dead-worker")
    assert claim is not None
    assert recover_leases() == 0  # leased by a live worker
    Turn.objects.filter(pk=claim.turn_pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert recover_leases() == 1
    run(enq.session_pk)
    assert Turn.objects.get(pk=claim.turn_pk).status == Turn.Status.DONE
    assert recover_leases() == 0


def test_notification_recorded_and_injected_once(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "ok"}]}]))
    enq = send("eng", "hello")
    run(enq.session_pk)
    note = services.notification_record(task_id="task-1", app_id="eng", session_id="s1", status="completed")
    assert note is not None
    assert services.notification_record(task_id="task-1", app_id="eng", session_id="s1", status="completed") is None
    assert events(enq.session_pk)[-1].type == "notification"
    from conversations.selectors import notifications_active

    assert notifications_active(app_id="eng", principal="alice", session_id="s1") is True
    assert notifications_active(app_id="eng", principal="bob") is False
    enq2 = send("eng", "next")
    run(enq2.session_pk)
    system = Message.objects.filter(session_id=enq.session_pk, role="system")
    assert system.count() == 1 and "task-1" in system[0].content
    assert notifications_active(app_id="eng", principal="alice") is False


def test_notification_turn_ends_with_notification_result(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "noted: {message}"}]}]))
    services.session_resolve(app_id="eng", session_id="s1", principal="alice", create=True)
    services.notification_record(task_id="task-9", app_id="eng", session_id="s1", status="failed")
    enq, summaries = services.notifications_drain(app_id="eng", session_id="s1", principal="alice")
    assert [s["task_id"] for s in summaries] == ["task-9"]
    run(enq.session_pk)
    types = [e.type for e in events(enq.session_pk)]
    assert types[-2:] == ["notification_result", "result"]
    assert services.notifications_drain(app_id="eng", session_id="s1", principal="alice") == (None, [])


def test_sessions_are_private_and_expire(ws, settings):
    from digitorn_site.errors import NotFoundError

    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "ok"}]}]))
    send("eng", "hi")
    with pytest.raises(NotFoundError):
        services.session_resolve(app_id="eng", session_id="s1", principal="mallory")
    assert services.session_resolve(app_id="eng", session_id="s1", principal="admin").principal == "alice"
    settings.DIGITORN_SESSION_IDLE_SECONDS = 1
    from datetime import timedelta

    from django.utils import timezone

    Turn.objects.all().update(status=Turn.Status.DONE)
    Session.objects.update(last_active=timezone.now() - timedelta(seconds=5))
    with pytest.raises(NotFoundError) as info:
        services.session_resolve(app_id="eng", session_id="s1", principal="alice")
    assert "expired" in info.value.message
    assert not Session.objects.filter(session_id="s1").exists()


def test_undeploy_purges_sessions(ws):
    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "ok"}]}]))
    enq = send("eng", "hi")
    run(enq.session_pk)
    registry.app_undeploy(app_id="eng")
    assert not Session.objects.filter(app_id="eng").exists()


def test_task_of_another_principal_cannot_notify_a_session(ws):
    from tooling.models import BackgroundTask

    deploy(scripted_manifest("eng", ws, [{"steps": [{"say": "ok"}]}]))
    session = services.session_resolve(app_id="eng", session_id="s1", principal="alice", create=True)
    BackgroundTask.objects.create(task_id="task-bob", app_id="eng", principal="bob", session_id="s1",
                                  tool="filesystem.ls", status="completed")
    BackgroundTask.objects.create(task_id="task-alice", app_id="eng", principal="alice", session_id="s1",
                                  tool="filesystem.ls", status="completed")
    assert services.notification_record(task_id="task-bob", app_id="eng", session_id="s1", status="completed") is None
    assert services.notification_record(task_id="task-alice", app_id="eng", session_id="s1",
                                        status="completed") is not None
    assert [e.data.get("task_id") for e in events(session.pk) if e.type == "notification"] == ["task-alice"]


def test_meta_tool_execute_needing_approval_resumes_once_approved(ws):
    """An agent that reaches a tool through execute_tool meets the same gate, and its approval sticks."""
    deploy(scripted_manifest("eng", ws, [{"steps": [
        {"call": "execute_tool", "params": {"name": "filesystem.read", "params": {"path": "README.md"}}},
        {"say": "meta says {result}"},
    ]}], capabilities={"default_policy": "auto",
                       "approve": [{"module": "filesystem", "actions": ["read"], "reason": "reads files"}]}))
    enq = send("eng", "go")
    run(enq.session_pk)
    evs = events(enq.session_pk)
    assert [e.type for e in evs] == ["tool_start", "approval_request"]
    assert evs[0].data["name"] == "execute_tool"

    from approvals.models import ApprovalRequest
    from approvals.services import approval_decide

    approval_decide(app_id="eng", request_id=evs[1].data["request_id"], approved=True, message="", principal="alice")
    run(enq.session_pk)
    types = [e.type for e in events(enq.session_pk)]
    assert types == ["tool_start", "approval_request", "approval_resolved", "tool_call", "result"]
    assert "Demo project" in events(enq.session_pk)[-1].data["content"]
    # Resuming ran the approved call; it did not ask again.
    assert ApprovalRequest.objects.filter(app_id="eng").count() == 1


def test_an_original_style_app_runs_its_entry_agent_with_its_modules_and_working_memory(ws):
    """Written as for the original: execution:, top-level modules/capabilities, entry_agent, a
    deepseek brain (through the OpenAI-compatible adapter), per-agent modules, memory tools."""
    from tests.llm_server import LLMServer

    with LLMServer() as llm:
        text = f"""
app: {{app_id: orig, name: Original}}
execution: {{mode: conversation, entry_agent: planner, max_turns: 5}}
agents:
  - id: helper
    brain: {{provider: scripted, config: {{rules: [{{steps: [{{say: wrong agent}}]}}]}}}}
  - id: planner
    role: coordinator
    brain: {{provider: deepseek, model: deepseek-chat, config: {{base_url: "{llm.base_url}", api_key: sk-test}}}}
    modules: [memory]
modules:
  filesystem: {{workspace: "{ws}"}}
  memory: {{}}
capabilities:
  default_policy: approve
  grant: [{{module: filesystem, tools: [read]}}]
"""
        deploy(text)
        llm.enqueue_tool_calls(("memory.set_goal", {"goal": "Ship it"}))
        llm.enqueue_text("Goal set.")
        llm.enqueue_text("Still on it.")
        first = send("orig", "plan the release")
        run(first.session_pk)
        done = [e.data for e in events(first.session_pk) if e.type == "result"][-1]
        assert done["content"] == "Goal set." and done["tool_calls_count"] == 1
        sent_tools = [t["function"]["name"] for t in llm.requests[0].json.get("tools", [])]
        assert any(name.startswith("memory") for name in sent_tools)
        assert not any(name.startswith("filesystem") for name in sent_tools)  # planner lists only memory
        second = send("orig", "and now?")
        run(second.session_pk)
        system = [m["content"] for m in llm.requests[-1].json["messages"] if m["role"] == "system"]
        assert any("Goal: Ship it" in s for s in system)  # working memory, rendered every turn
