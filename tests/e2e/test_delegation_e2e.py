"""Agent delegation against a real daemon (2 ASGI workers, Celery), over HTTP and SSE."""

from __future__ import annotations

import pytest

from tests.conftest import AppYaml, ReconnectingStream, poll
from tests.llm_server import LLMServer, Reply

pytestmark = pytest.mark.e2e


def test_coordinator_delegates_to_a_researcher_with_a_local_llm(daemon, tmp_path_factory):
    apps = AppYaml(tmp_path_factory.mktemp("team-apps"))
    (apps.workspace / "notes.txt").write_text("remember the milk\n")
    with LLMServer() as llm:
        brain = {"provider": "openai", "model": "test-model", "config": {"base_url": llm.base_url, "api_key": "k"}}
        # The coordinator's call, the researcher's two model calls, then the coordinator's answer.
        llm.enqueue(Reply(tool_calls=[("agent_spawn.agent", {"agent": "researcher", "task": "Read notes.txt"})]))
        llm.enqueue(Reply(tool_calls=[("filesystem.read", {"path": "notes.txt"})]))
        llm.enqueue(Reply(text="notes.txt says: remember the milk"))
        llm.enqueue(Reply(text="The researcher found that you must remember the milk."))
        manifest = {
            "schema_version": 2,
            "app": {"app_id": "team-llm", "name": "Team"},
            "agents": [
                {"id": "coordinator", "role": "coordinator", "system_prompt": "You delegate.", "brain": brain,
                 "delegate_to": ["researcher"]},
                {"id": "researcher", "role": "specialist", "specialty": "reads files",
                 "system_prompt": "You read files.", "brain": brain, "modules": ["filesystem"]},
            ],
            "tools": {"modules": {"filesystem": {"workspace": str(apps.workspace)}, "agent_spawn": {}},
                      "capabilities": {"default_policy": "auto"}},
        }
        deployed = daemon.deploy(apps(manifest, "team.yaml"), force=True)
        assert not [w for w in deployed.get("warnings", []) if "delegat" in w]
        events = daemon.sse("/api/apps/team-llm/chat/stream", method="POST",
                            json_body={"session_id": "d1", "message": "what do my notes say?"}, timeout=90)
        requests = list(llm.requests)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connected" and kinds[-1] == "result" and kinds.count("result") == 1
    assert events[-1]["data"]["content"] == "The researcher found that you must remember the milk."
    # The researcher's events are on the turn's stream, tagged with its agent id and task id.
    tagged = [e for e in events if e["data"].get("agent_id") == "researcher"]
    tagged_kinds = [e["event"] for e in tagged]
    assert tagged_kinds[0] == "agent_spawn" and tagged_kinds[-1] == "agent_result"
    assert "tool_start" in tagged_kinds and "tool_call" in tagged_kinds
    read = next(e for e in tagged if e["event"] == "tool_call")["data"]
    assert read["name"] == "filesystem.read" and "remember the milk" in str(read["result"])
    task_id = tagged[0]["data"]["task_id"]
    assert all(e["data"]["task_id"] == task_id for e in tagged)
    # The coordinator's tool result (its `tool_call`, untagged) is the researcher's answer.
    delegated = next(e for e in events if e["event"] == "tool_call" and "agent_id" not in e["data"])["data"]
    assert delegated["name"] == "agent_spawn.agent" and delegated["success"] is True
    assert delegated["result"]["content"] == "notes.txt says: remember the milk"
    # The researcher's model saw its own prompt, its task and only its own tools.
    child_request = requests[1].json
    assert child_request["messages"][0]["content"].startswith("You read files.")
    assert any(m.get("content") == "Read notes.txt" for m in child_request["messages"])
    modules = {t["function"]["name"].split("__")[0] for t in child_request["tools"]} - {
        "background_run", "background_status", "background_cancel"}
    assert modules == {"filesystem"}
    assert any(t["function"]["name"] == "agent_spawn__agent" for t in requests[0].json["tools"])
    # The run's session is not a session of the user's.
    listed = daemon.client.get("/api/apps/team-llm/sessions").json()["data"]["sessions"]
    assert [s["session_id"] for s in listed] == ["d1"]


CYCLE_APP = """
app: {app_id: cycle-team, name: Cycle}
agents:
  - id: lead
    brain: {provider: scripted, config: {rules: [
      {when: stop, steps: [{call: agent_spawn.agent, params: {agent: gate, task: needs a human}}, {say: "gate: {result}"}]},
      {steps: [{call: agent_spawn.agent, params: {agent: helper, task: go round}}, {say: "lead got: {result}"}]}]}}
  - id: helper
    delegate_to: [lead]
    brain: {provider: scripted, config: {rules: [{steps: [
      {call: agent_spawn.agent, params: {agent: lead, task: back to you}}, {say: "helper got: {result}"}]}]}}
  - id: gate
    brain: {provider: scripted, config: {rules: [{steps: [
      {call: shell.run, params: {command: "touch gated"}}, {say: "ran"}]}]}}
tools:
  modules: {agent_spawn: {}, shell: {config: {workspace: WS}}}
  capabilities: {default_policy: auto, approve: [{module: shell}]}
"""


def test_cycle_at_run_time_and_cancel_through_the_daemon(daemon, tmp_path_factory):
    apps = AppYaml(tmp_path_factory.mktemp("cycle-apps"))
    daemon.deploy(apps(CYCLE_APP.replace("WS", str(apps.workspace)), "cycle.yaml"), force=True)
    response = daemon.client.post("/api/apps/cycle-team/chat", json={"session_id": "c1", "message": "hello"},
                                  timeout=60)
    assert response.status_code == 200, response.text
    content = response.json()["data"]["content"]
    assert content.startswith("lead got:") and "delegation cycle: lead -> helper -> lead" in content
    # A run waiting for a human: cancelling the session stops the parent and the run, nothing runs.
    daemon.client.post("/api/apps/cycle-team/sessions/c2/messages", json={"message": "stop here"})
    poll(lambda: daemon.client.get("/api/apps/cycle-team/approvals").json()["data"]["pending"],
         timeout=30, what="the run's approval request")
    assert daemon.client.post("/api/apps/cycle-team/sessions/c2/cancel").status_code == 200
    events = daemon.sse("/api/apps/cycle-team/sessions/c2/events", until="result", timeout=30, params={"since": 0})
    kinds = [e["event"] for e in events]
    assert "agent_spawn" in kinds and "approval_request" in kinds
    assert events[-1]["data"]["cancelled"] is True
    done = daemon.sse("/api/apps/cycle-team/sessions/c2/events",
                      until=lambda e: e["event"] == "agent_result", timeout=30, params={"since": 0})
    assert done[-1]["data"]["status"] == "cancelled" and done[-1]["data"]["agent_id"] == "gate"
    assert not (apps.workspace / "gated").exists()
    # The workers are fine: the next message is answered.
    again = daemon.client.post("/api/apps/cycle-team/chat", json={"session_id": "c3", "message": "hello"},
                               timeout=60)
    assert again.status_code == 200 and again.json()["data"]["content"].startswith("lead got:")


def test_killed_workers_mid_delegation_recover_the_run_and_its_parent(daemon_factory, app_yaml):
    """SIGKILL of every ASGI worker while a delegated run executes a shell step: the run is a turn
    like any other (leased, recovered, its cut call answered "interrupted", not run twice) and the
    parent waiting for it resumes and ends with exactly one `result`."""
    import time

    d = daemon_factory(workers=2, env={"DIGITORN_LEASE_SECONDS": "3"})
    workspace = app_yaml.workspace
    app = {
        "schema_version": 2,
        "app": {"app_id": "deleg-crash", "name": "Crash"},
        "agents": [
            {"id": "lead", "delegate_to": ["worker"], "brain": {"provider": "scripted", "config": {"rules": [
                {"steps": [{"call": "agent_spawn.agent", "params": {"agent": "worker", "task": "run it"}},
                           {"say": "lead: {result}"}]}]}}},
            {"id": "worker", "brain": {"provider": "scripted", "config": {"rules": [{"steps": [
                {"call": "shell.run", "params": {"command": "echo started >> runs.txt; sleep 2"}},
                {"say": "worker: {result}"}]}]}}},
        ],
        "tools": {"modules": {"shell": {"workspace": str(workspace)}, "agent_spawn": {}},
                  "capabilities": {"default_policy": "auto", "grant": [{"module": "shell"}]}},
    }
    d.deploy(app_yaml(app))
    stream = ReconnectingStream(d.url, d.key, "/api/apps/deleg-crash/sessions/k1/events")
    stream.start()
    try:
        assert stream.opened.wait(30), "the event stream never opened"
        response = d.client.post("/api/apps/deleg-crash/sessions/k1/messages", json={"message": "go"})
        assert response.status_code == 202, response.text
        poll(lambda: (workspace / "runs.txt").exists(), 30, "the run's shell step to start")
        d.kill_children("asgi")
        poll(lambda: len(stream.dones()) == 1, 90,
             f"the parent to finish after recovery (events so far: {[e['event'] for e in stream.events]})")
        time.sleep(1.0)  # a re-run would have appended by now
    finally:
        stream.stop.set()
    assert (workspace / "runs.txt").read_text().count("started") == 1
    ends = [e["data"] for e in stream.events if e["event"] == "agent_result"]
    assert len(ends) == 1 and ends[0]["agent_id"] == "worker" and "interrupted" in ends[0]["content"]
    done = stream.dones()[0]
    assert done["content"].startswith("lead:") and "interrupted" in done["content"]
    # The whole log (the live stream may have attached after the first events): one delegation only.
    log = d.sse("/api/apps/deleg-crash/sessions/k1/events", params={"since": 0}, until="result", timeout=30)
    assert [e["event"] for e in log].count("agent_spawn") == 1, [e["event"] for e in log]
    assert [e["event"] for e in log].count("result") == 1
