"""Agent delegation (agent_spawn) through real agent turns: scripted brains, real tools, real SQLite."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync

from conversations import services
from conversations.models import Event, Message, Session, Turn
from conversations.turns import scheduler as engine
from conversations.turns import state as turn_state
from tests.helpers import ADMIN_KEY, admin_client, deploy, make_workspace

pytestmark = pytest.mark.django_db(transaction=True)

COORDINATOR_RULES = [
    {"when": "research", "steps": [
        {"call": "agent_spawn.agent", "params": {"agent": "researcher", "task": "read the README and report"}},
        {"say": "Summary: {result}"},
    ]},
    {"when": "background", "steps": [
        {"call": "agent_spawn.spawn", "params": {"agent": "researcher", "task": "read the README and report"}},
        {"say": "started: {result}"},
    ]},
    {"when": "parallel", "steps": [
        {"call": "agent_spawn.run_parallel", "params": {"jobs": [
            {"agent": "researcher", "task": "read the README and report"},
            {"agent": "nobody", "task": "x"},
            {"agent": "writer", "task": "write something"},
        ]}},
        {"say": "All: {result}"},
    ]},
    {"when": "self", "steps": [
        {"call": "agent_spawn.agent", "params": {"agent": "coordinator", "task": "do it yourself"}},
        {"say": "after: {result}"},
    ]},
    {"when": "loop", "steps": [
        {"call": "agent_spawn.agent", "params": {"agent": "writer", "task": "loop back to the coordinator"}},
        {"say": "loop answer: {result}"},
    ]},
    {"when": "slow", "steps": [
        {"call": "agent_spawn.agent", "params": {"agent": "waiter", "task": "needs approval"}},
        {"say": "slow answer: {result}"},
    ]},
]


def manifest(app_id: str, ws: Path, *, coordinator_extra: dict | None = None, config: dict | None = None) -> str:
    doc = {
        "schema_version": 2,
        "app": {"app_id": app_id, "name": app_id},
        "agents": [
            {"id": "coordinator", "role": "coordinator", "system_prompt": "Delegate.",
             "brain": {"provider": "scripted", "config": {"rules": COORDINATOR_RULES}},
             **(coordinator_extra or {})},
            {"id": "researcher", "role": "specialist", "specialty": "reads files",
             "brain": {"provider": "scripted", "config": {"rules": [
                 {"when": "README", "steps": [
                     {"call": "filesystem.read", "params": {"path": "README.md"}},
                     {"say": "The README says: {result}"},
                 ]}]}},
             "modules": ["filesystem"]},
            {"id": "writer", "role": "specialist",
             "brain": {"provider": "scripted", "config": {"rules": [
                 {"when": "loop", "steps": [
                     {"call": "agent_spawn.agent", "params": {"agent": "coordinator", "task": "research again"}},
                     {"say": "writer got: {result}"},
                 ]},
                 {"steps": [{"say": "written"}]}]}}},
            {"id": "waiter", "role": "specialist",
             "brain": {"provider": "scripted", "config": {"rules": [
                 {"steps": [{"call": "shell.run", "params": {"command": "echo approved-run"}},
                            {"say": "waiter ran: {result}"}]}]}}},
        ],
        "tools": {
            "modules": {"filesystem": {"workspace": str(ws)}, "shell": {"workspace": str(ws)},
                        "agent_spawn": config or {}},
            "capabilities": {"default_policy": "auto", "approve": [{"module": "shell"}]},
        },
    }
    return json.dumps(doc)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, {"README.md": "# Demo project about otters\n"})


def send(app_id: str, message: str, session_id: str = "s1") -> services.Enqueued:
    return services.message_enqueue(app_id=app_id, session_id=session_id, principal="alice", message=message)


async def _drive(session_pk: int) -> None:
    await engine.advance_session(session_pk=session_pk)
    # Delegated runs and the resumed parents run as tasks of this loop: play them all out.
    while engine._tasks:
        await asyncio.gather(*list(engine._tasks))


def run(session_pk: int) -> None:
    async_to_sync(_drive)(session_pk)


# Progress events (issue 15) ride along every turn; the assertions below are about the others.
PROGRESS = {"status", "in_token", "out_token", "stream_done", "agent_event"}


def stream(session_pk: int, *, progress: bool = False) -> list[Event]:
    rows = list(Event.objects.filter(session_id=session_pk).order_by("seq"))
    return rows if progress else [e for e in rows if e.type not in PROGRESS]


def result_of(enq: services.Enqueued) -> dict:
    return Turn.objects.get(correlation_id=enq.correlation_id).result


def test_blocking_delegation_returns_the_child_answer(ws):
    deploy(manifest("team", ws))
    enq = send("team", "please research the project")
    run(enq.session_pk)
    result = result_of(enq)
    assert result["error"] is None
    assert "otters" in result["content"] and result["content"].startswith("Summary:")
    # The child ran as a turn of the researcher, in a session of its own under the root session.
    child = Turn.objects.get(parent_turn__correlation_id=enq.correlation_id)
    assert child.agent_id == "researcher" and child.depth == 1 and child.status == Turn.Status.DONE
    assert child.session.parent_id == enq.session_pk
    assert list(Message.objects.filter(session=child.session).values_list("role", flat=True)) == [
        "user", "assistant", "tool", "assistant"]
    # The parent's tool result is the child's final content.
    tool = Message.objects.get(session_id=enq.session_pk, role="tool")
    answer = json.loads(tool.content)
    assert answer["success"] is True and answer["data"]["status"] == "completed"
    assert "otters" in answer["data"]["content"] and answer["data"]["agent_id"] == "researcher"
    # Its events are on the root's stream, tagged with the agent, under the root turn's correlation id.
    evs = stream(enq.session_pk)
    types = [e.type for e in evs]
    assert types[0] == "tool_start" and types[-1] == "result" and types.count("result") == 1
    tagged = [e for e in evs if e.data.get("agent_id") == "researcher"]
    assert [e.type for e in tagged] == ["agent_spawn", "tool_start", "tool_call", "agent_result"]
    assert all(e.correlation_id == enq.correlation_id for e in evs)
    assert all(e.data["task_id"] == child.correlation_id and e.data["parent_id"] == enq.correlation_id for e in tagged)
    assert tagged[-1].data["status"] == "completed" and "otters" in tagged[-1].data["content"]
    every = stream(enq.session_pk, progress=True)
    assert [e.seq for e in every] == list(range(1, len(every) + 1))
    # agent_event: the run spawned, then completed (the original's clients follow agents by it).
    agent_events = [e.data for e in every if e.type == "agent_event"]
    assert [(a["event"], a["agent_id"], a["task_id"]) for a in agent_events] == [
        ("spawned", "researcher", child.correlation_id), ("completed", "researcher", child.correlation_id)]
    # The child's session has no stream of its own and is not listed among the user's sessions.
    assert not Event.objects.filter(session=child.session).exists()
    from conversations.selectors import session_list

    assert [s["session_id"] for s in session_list(app_id="team", principal="alice")["sessions"]] == ["s1"]
    assert Session.objects.get(pk=enq.session_pk).status == Session.Status.IDLE


def test_spawn_then_status_wait_list_through_later_calls(ws):
    deploy(manifest("team2", ws))
    enq = send("team2", "start it in the background")
    run(enq.session_pk)
    started = json.loads(Message.objects.get(session_id=enq.session_pk, role="tool").content)["data"]
    assert started["status"] == "running" and started["agent_id"] == "researcher"
    task_id = started["task_id"]
    child = Turn.objects.get(correlation_id=task_id)
    assert child.status == Turn.Status.DONE  # it went on after the parent's turn ended
    # A later turn of the same session waits for it and reads it.
    rules = [{"steps": [{"call": "agent_spawn.wait", "params": {"task_id": task_id}},
                        {"call": "agent_spawn.status", "params": {"task_id": task_id}},
                        {"call": "agent_spawn.list", "params": {}},
                        {"say": "list: {result}"}]}]
    doc = json.loads(manifest("team2", ws))
    doc["agents"][0]["brain"]["config"]["rules"] = rules
    deploy(json.dumps(doc))
    enq2 = send("team2", "what happened")
    run(enq2.session_pk)
    tools = [json.loads(m.content) for m in Message.objects.filter(session_id=enq.session_pk, role="tool").order_by("id")]
    waited, status, listed = tools[1:]
    assert waited["success"] and "otters" in waited["data"]["content"]
    assert status["data"]["status"] == "completed" and status["data"]["task_id"] == task_id
    assert listed["data"]["total"] == 1 and listed["data"]["agents"][0]["task_id"] == task_id


def test_run_parallel_keeps_order_and_isolates_failures(ws):
    deploy(manifest("team3", ws))
    enq = send("team3", "go parallel")
    run(enq.session_pk)
    answer = json.loads(Message.objects.get(session_id=enq.session_pk, role="tool").content)
    assert answer["success"] is True
    results = answer["data"]["results"]
    assert [r["status"] for r in results] == ["completed", "failed", "completed"]
    assert "otters" in results[0]["content"] and results[2]["content"] == "written"
    assert "unknown agent 'nobody'" in results[1]["error"]
    assert answer["data"]["completed"] == 2 and answer["data"]["failed"] == 1


def test_delegating_to_itself_or_outside_delegate_to_is_a_tool_error(ws):
    deploy(manifest("team4", ws, coordinator_extra={"delegate_to": ["researcher", "writer"]}))
    enq = send("team4", "do it self")
    run(enq.session_pk)
    answer = json.loads(Message.objects.get(session_id=enq.session_pk, role="tool").content)
    assert answer["success"] is False
    assert "delegation cycle: coordinator -> coordinator" in answer["error"]
    assert result_of(enq)["error"] is None  # the model read the error and answered
    enq = send("team4", "go slow", session_id="s2")
    run(enq.session_pk)
    answer = json.loads(Message.objects.get(session_id=enq.session_pk, role="tool").content)
    assert answer["success"] is False and "delegate_to list (researcher, writer)" in answer["error"]
    assert not Turn.objects.filter(depth__gt=0).exists()


def test_cycle_at_run_time_is_a_clear_tool_error(ws):
    # The writer may delegate back to the coordinator (no cycle in the lists: the coordinator has none),
    # but at run time the coordinator is already up the chain.
    doc = json.loads(manifest("team5", ws))
    doc["agents"][2]["delegate_to"] = ["coordinator"]
    deploy(json.dumps(doc))
    enq = send("team5", "loop please")
    run(enq.session_pk)
    result = result_of(enq)
    assert result["error"] is None
    writer = Turn.objects.get(agent_id="writer")
    inner = json.loads(Message.objects.get(session=writer.session, role="tool").content)
    assert inner["success"] is False
    assert "delegation cycle: coordinator -> writer -> coordinator" in inner["error"]
    assert "writer got:" in writer.result["content"]
    assert not Turn.objects.filter(status__in=turn_state.ACTIVE).exists()


def test_depth_and_fan_out_limits(ws):
    doc = json.loads(manifest("team6", ws, config={"max_children": 1}))
    deploy(json.dumps(doc))
    enq = send("team6", "go parallel")
    run(enq.session_pk)
    answer = json.loads(Message.objects.get(session_id=enq.session_pk, role="tool").content)
    results = answer["data"]["results"]
    # Job 2 failed on its agent (no run); job 3 would be the turn's second run: above max_children.
    assert results[0]["status"] == "completed"
    assert "fan-out limit" in results[2]["error"]
    doc = json.loads(manifest("team7", ws, config={"max_depth": 1}))
    doc["agents"][2]["delegate_to"] = ["researcher"]
    doc["agents"][2]["brain"]["config"]["rules"][0]["steps"][0]["params"]["agent"] = "researcher"
    deploy(json.dumps(doc))
    enq = send("team7", "loop please")
    run(enq.session_pk)
    writer = Turn.objects.get(agent_id="writer", session__app_id="team7")
    inner = json.loads(Message.objects.get(session=writer.session, role="tool").content)
    assert "delegation depth limit reached" in inner["error"]


def test_child_waiting_for_approval_and_cancelling_the_parent_cancels_it(ws):
    deploy(manifest("team8", ws))
    enq = send("team8", "slow please")
    run(enq.session_pk)
    parent = Turn.objects.get(correlation_id=enq.correlation_id)
    child = Turn.objects.get(parent_turn=parent)
    assert parent.status == Turn.Status.WAITING_APPROVAL and set(parent.state["waits"]) == {"call_0_0"}
    assert child.status == Turn.Status.WAITING_APPROVAL and child.state["pending"]
    # The parent waits for a run, not for a human; the run's approval request is on the root stream.
    assert Session.objects.get(pk=enq.session_pk).status == Session.Status.RUNNING
    request = [e for e in stream(enq.session_pk) if e.type == "approval_request"][0]
    assert request.data["agent_id"] == "waiter" and request.data["task_id"] == child.correlation_id
    out = services.session_cancel(app_id="team8", session_id="s1", principal="alice")
    assert out["cancelled"] is True
    run(child.session_id)
    parent.refresh_from_db()
    child.refresh_from_db()
    assert parent.status == Turn.Status.CANCELLED and child.status == Turn.Status.CANCELLED
    ends = [e for e in stream(enq.session_pk) if e.type in ("result", "agent_result")]
    assert {e.type for e in ends} == {"result", "agent_result"}
    assert not (ws / "approved-run").exists()


def test_approved_child_finishes_and_resumes_the_parent(ws):
    from approvals.services import approval_decide

    deploy(manifest("team9", ws))
    enq = send("team9", "slow please")
    run(enq.session_pk)
    child = Turn.objects.get(parent_turn__correlation_id=enq.correlation_id)
    request_id = next(iter(child.state["pending"].values()))
    approval_decide(app_id="team9", request_id=request_id, approved=True, message="", principal="alice")
    run(child.session_id)
    result = result_of(enq)
    assert result is not None and "approved-run" in result["content"], result


def test_a_parent_turn_ending_cancelled_cancels_its_runs(ws):
    deploy(manifest("team10", ws))
    enq = send("team10", "slow please")
    run(enq.session_pk)
    parent = Turn.objects.get(correlation_id=enq.correlation_id)
    child = Turn.objects.get(parent_turn=parent)
    # What the engine does when the parent's runner stops on a cancel (or fails).
    turn_state.turn_finish_and_peek(turn_pk=parent.pk, content="Cancelled by the user.", cancelled=True)
    child.refresh_from_db()
    assert child.cancel_requested is True
    run(child.session_id)
    child.refresh_from_db()
    assert child.status == Turn.Status.CANCELLED
    end = [e for e in stream(enq.session_pk) if e.type == "agent_result"][-1]
    assert end.data["status"] == "cancelled" and end.data["agent_id"] == "waiter"


def test_run_parallel_meta_tool_keeps_order_isolates_failures_and_gates_each_action(ws):
    (ws / "b.txt").write_text("bravo")
    doc = json.loads(manifest("par", ws))
    doc["agents"][0]["brain"]["config"]["rules"] = [{"steps": [
        {"call": "run_parallel", "params": {"actions": [
            {"name": "filesystem.read", "params": {"path": "README.md"}},
            {"name": "filesystem.read", "params": {"path": "missing.txt"}},
            {"name": "shell.run", "params": {"command": "touch ran"}},
            {"name": "agent_spawn.agent", "params": {"agent": "researcher", "task": "x"}},
            {"name": "no_such.tool"},
            {"name": "filesystem.read", "params": {"path": "b.txt"}},
        ]}},
        {"say": "done: {result}"},
    ]}]
    deploy(json.dumps(doc))
    enq = send("par", "go")
    run(enq.session_pk)
    answer = json.loads(Message.objects.get(session_id=enq.session_pk, role="tool").content)
    assert answer["success"] is True
    results = answer["data"]["results"]
    assert [r["success"] for r in results] == [True, False, False, False, False, True]
    assert "otters" in json.dumps(results[0]["data"]) and "bravo" in json.dumps(results[5]["data"])
    assert "needs a human's approval" in results[2]["error"]
    assert "waits for delegated agents" in results[3]["error"]
    assert "no_such" in results[4]["error"]
    assert answer["data"]["succeeded"] == 2 and answer["data"]["failed"] == 4
    assert not (ws / "ran").exists()
    assert not Turn.objects.filter(depth__gt=0).exists()
    bad = send("par", "go", session_id="s2")
    doc["agents"][0]["brain"]["config"]["rules"] = [{"steps": [
        {"call": "run_parallel", "params": {"actions": []}}, {"say": "{result}"}]}]
    deploy(json.dumps(doc))
    run(bad.session_pk)
    answer = json.loads(Message.objects.get(session_id=bad.session_pk, role="tool").content)
    assert answer["success"] is False and "1 to 50" in answer["error"]


# -- manifests in the original's style --------------------------------------------------------

RESEARCH_TEAM = """
schema_version: 2
app: {app_id: research-team, name: Research Team}
agents:
  - id: coordinator
    role: coordinator
    brain: {provider: scripted, config: {rules: [{steps: [
      {call: agent_spawn.agent, params: {agent: researcher, task: "read README.md", wait: true}},
      {say: "Findings: {result}"}]}]}}
    system_prompt: Delegate research to the researcher, then summarise.
    delegate_to: [researcher]
  - id: researcher
    role: specialist
    specialty: reads workspace files and summarises them
    brain: {provider: scripted, config: {rules: [{steps: [
      {call: filesystem.read, params: {path: README.md}}, {say: "read: {result}"}]}]}}
    modules: [filesystem]
tools:
  modules:
    filesystem: {config: {workspace: WS}}
    agent_spawn: {}
  capabilities:
    default_policy: auto
    grant: [{module: filesystem, actions: [ls, glob, grep, read]}]
"""


def test_research_team_manifest_deploys_and_delegates(ws):
    from apps_registry.manifest import compile_manifest

    text = RESEARCH_TEAM.replace("WS", str(ws))
    compiled = compile_manifest(text, environ={})
    assert not [w for w in compiled.warnings if "delegat" in w or "agent_spawn" in w], compiled.warnings
    deploy(text)
    enq = send("research-team", "what is in the project?")
    run(enq.session_pk)
    result = result_of(enq)
    assert result["error"] is None and "otters" in result["content"] and result["content"].startswith("Findings:")
    researcher = Turn.objects.get(agent_id="researcher")
    assert researcher.session.parent_id == enq.session_pk


def test_delegate_to_without_agent_spawn_is_a_warning(ws):
    from apps_registry.manifest import compile_manifest

    text = RESEARCH_TEAM.replace("WS", str(ws)).replace("    agent_spawn: {}\n", "")
    text = text.replace("{call: agent_spawn.agent, params: {agent: researcher, task: \"read README.md\", wait: true}}",
                        "{say: none}")
    warnings = compile_manifest(text, environ={}).warnings
    assert any("agents[0].delegate_to" in w and "add 'agent_spawn: {}'" in w for w in warnings), warnings
    assert not any("not yet acted on" in w and "delegat" in w for w in warnings)


def test_the_specialist_cannot_see_agent_spawn(ws):
    from apps_registry.selectors import app_runtime
    from tooling.selectors import tools_for_agent

    deploy(RESEARCH_TEAM.replace("WS", str(ws)))
    app = app_runtime(app_id="research-team")
    assert "agent_spawn.agent" in {t["name"] for t in tools_for_agent(app, "coordinator")}
    assert not [t for t in tools_for_agent(app, "researcher") if t["name"].startswith("agent_spawn.")]


# -- restart safety ---------------------------------------------------------------------------


def test_a_parent_whose_wake_up_was_lost_is_recovered(ws):
    deploy(manifest("rec", ws))
    enq = send("rec", "slow please")
    run(enq.session_pk)
    parent = Turn.objects.get(correlation_id=enq.correlation_id)
    child = Turn.objects.get(parent_turn=parent)
    assert enq.session_pk not in turn_state.turns_recoverable()
    # The run ends while no event loop runs here (as if its worker died before waking the parent).
    turn_state.turn_finish_and_peek(turn_pk=child.pk, content="the waiter's answer")
    assert enq.session_pk in turn_state.turns_recoverable()
    run(enq.session_pk)
    result = result_of(enq)
    assert result is not None and "the waiter's answer" in result["content"]


def test_a_spawn_cut_by_a_crash_finds_its_run_again(ws):
    """The engine re-runs an agent_spawn call left "started" by a crash: it finds the run it had
    started for that call instead of starting a second one."""
    deploy(manifest("crash", ws))
    enq = send("crash", "slow please")
    run(enq.session_pk)
    parent = Turn.objects.get(correlation_id=enq.correlation_id)
    first = Turn.objects.get(parent_turn=parent)
    # Forget the wait as if the worker died between starting the run and recording the wait.
    state = dict(parent.state)
    state.pop("waits")
    Turn.objects.filter(pk=parent.pk).update(state=state, status=Turn.Status.RUNNING, lease_expires_at=None)
    assert "call_0_0" in state["started_calls"]
    run(enq.session_pk)
    assert Turn.objects.filter(parent_turn=parent).count() == 1
    parent.refresh_from_db()
    assert set(parent.state["waits"]) == {"call_0_0"} and parent.state["waits"]["call_0_0"]["tasks"] == [
        first.correlation_id]


# -- POST /api/apps/{app}/tools/agent_spawn.*/execute -------------------------------------------


def test_agent_spawn_through_the_execute_endpoint(ws):
    from django.test import override_settings

    deploy(manifest("api", ws))
    with override_settings(DIGITORN_API_KEY=ADMIN_KEY):
        client = admin_client()

        def execute(tool: str, params: dict) -> dict:
            response = client.post(f"/api/apps/api/tools/{tool}/execute", data=json.dumps({"params": params}),
                                   content_type="application/json")
            assert response.status_code == 200, response.content
            return response.json()

        started = execute("agent_spawn.spawn", {"agent": "researcher", "task": "read the README"})
        assert started["success"] is True and started["data"]["status"] == "running"
        task_id, session_id = started["data"]["task_id"], started["data"]["session_id"]
        waiting = execute("agent_spawn.wait", {"task_id": task_id})
        assert waiting["success"] is True and waiting["data"]["status"] == "running"
        run(Session.objects.get(session_id=session_id).pk)
        status = execute("agent_spawn.status", {"task_id": task_id})
        assert status["data"]["status"] == "completed" and "otters" in status["data"]["content"]
        done = execute("agent_spawn.agent", {"agent": "writer", "task": "write", "wait": False})
        assert done["data"]["agent_id"] == "writer"
        listed = execute("agent_spawn.list", {})
        assert {a["task_id"] for a in listed["data"]["agents"]} >= {task_id, done["data"]["task_id"]}
        # Its session is a session of its own, followed like any other.
        events = client.get(f"/api/apps/api/sessions/{session_id}/history").json()
        assert events["success"] is True
        # Bad input: a clear tool error, nothing stored.
        for tool, params, needle in [
            ("agent_spawn.spawn", {"agent": "ghost", "task": "x"}, "unknown agent 'ghost'"),
            ("agent_spawn.status", {"task_id": "agent_nope"}, "no delegated run"),
            ("agent_spawn.wait", {"task_id": task_id, "task_ids": [task_id]}, "not both"),
        ]:
            body = execute(tool, params)
            assert body["success"] is False and needle in body["error"], body
        response = client.post("/api/apps/api/tools/agent_spawn.spawn/execute",
                               data=json.dumps({"params": {"task": 5}}), content_type="application/json")
        assert response.status_code == 400 and response.json()["success"] is False
    assert Turn.objects.filter(depth__gt=0).count() == 2


def test_a_wait_with_a_timeout_answers_still_running(ws):
    import time

    doc = json.loads(manifest("tmo", ws))
    doc["agents"][0]["brain"]["config"]["rules"] = [{"steps": [
        {"call": "agent_spawn.agent", "params": {"agent": "waiter", "task": "needs approval", "timeout": 1}},
        {"say": "after the wait: {result}"},
    ]}]
    deploy(json.dumps(doc))
    enq = send("tmo", "go")
    run(enq.session_pk)
    parent = Turn.objects.get(correlation_id=enq.correlation_id)
    assert parent.status == Turn.Status.WAITING_APPROVAL and parent.state["waits"]["call_0_0"]["deadline"]
    assert enq.session_pk not in turn_state.turns_recoverable()
    time.sleep(1.2)
    assert enq.session_pk in turn_state.turns_recoverable()
    run(enq.session_pk)
    result = result_of(enq)
    assert result is not None and '"status":"waiting_approval"' in result["content"] and "wait again" in result["content"]
    child = Turn.objects.get(parent_turn=parent)
    assert child.status == Turn.Status.WAITING_APPROVAL  # the run itself goes on


def test_with_a_local_llm_the_models_are_told_whom_they_delegate_to(ws):
    from tests.llm_server import LLMServer, Reply

    with LLMServer() as llm:
        brain = {"provider": "openai", "model": "m", "config": {"base_url": llm.base_url, "api_key": "k"}}
        llm.enqueue(Reply(tool_calls=[("agent_spawn.agent", {"agent": "researcher", "task": "Read README.md"})]))
        llm.enqueue(Reply(tool_calls=[("filesystem.read", {"path": "README.md"})]))
        llm.enqueue(Reply(text="It is about otters."))
        llm.enqueue(Reply(text="The project is about otters."))
        doc = json.loads(manifest("llm", ws))
        doc["agents"] = [
            {"id": "coordinator", "system_prompt": "You delegate.", "brain": brain, "delegate_to": ["researcher"]},
            {"id": "researcher", "specialty": "reads workspace files", "system_prompt": "You read.",
             "brain": brain, "modules": ["filesystem"]},
        ]
        deploy(json.dumps(doc))
        enq = send("llm", "what is the project about?")
        run(enq.session_pk)
        requests = [r.json for r in llm.requests]
    assert result_of(enq)["content"] == "The project is about otters."
    parent_system = "\n".join(m["content"] for m in requests[0]["messages"] if m["role"] == "system")
    assert "- researcher: reads workspace files" in parent_system
    child_system = "\n".join(m["content"] for m in requests[1]["messages"] if m["role"] == "system")
    assert child_system.startswith("You read.") and "delegated by another agent" in child_system
    assert "agent_spawn.agent" not in child_system
    # The coordinator's second call sees the researcher's answer as the tool result.
    tool_message = next(m for m in requests[3]["messages"] if m["role"] == "tool")
    assert "It is about otters." in tool_message["content"]


def test_spawns_inside_run_parallel_are_distinct_runs(ws):
    doc = json.loads(manifest("par2", ws))
    doc["agents"][0]["brain"]["config"]["rules"] = [{"steps": [
        {"call": "run_parallel", "params": {"actions": [
            {"name": "agent_spawn.spawn", "params": {"agent": "researcher", "task": "read the README"}},
            {"name": "agent_spawn.spawn", "params": {"agent": "writer", "task": "write"}},
        ]}},
        {"say": "started: {result}"},
    ]}]
    deploy(json.dumps(doc))
    enq = send("par2", "go")
    run(enq.session_pk)
    answer = json.loads(Message.objects.get(session_id=enq.session_pk, role="tool").content)
    ids = [r["data"]["task_id"] for r in answer["data"]["results"]]
    assert len(set(ids)) == 2
    runs = Turn.objects.filter(parent_turn__correlation_id=enq.correlation_id)
    assert sorted(runs.values_list("agent_id", flat=True)) == ["researcher", "writer"]
    assert all(t.status == Turn.Status.DONE for t in runs)


def test_a_run_whose_parents_cancel_was_lost_is_cancelled_when_claimed(ws):
    deploy(manifest("lost", ws))
    enq = send("lost", "slow please")
    run(enq.session_pk)
    parent = Turn.objects.get(correlation_id=enq.correlation_id)
    child = Turn.objects.get(parent_turn=parent)
    # The parent ended cancelled but the process died before flagging its run (after the commit).
    Turn.objects.filter(pk=parent.pk).update(status=Turn.Status.CANCELLED)
    assert Turn.objects.get(pk=child.pk).cancel_requested is False
    run(child.session_id)
    child.refresh_from_db()
    assert child.status == Turn.Status.CANCELLED
