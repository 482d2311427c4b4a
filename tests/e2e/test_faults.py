"""Faults: ASGI workers killed mid-turn with a message queued behind it, and (on the scale-out leg)
the database server restarted during a stream. Every accepted message must end with exactly one
`result`, and a client that reconnects with Last-Event-ID must see no gap and no duplicate."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import httpx
import pytest
from conftest import ReconnectingStream, poll

pytestmark = pytest.mark.e2e

SLOW_APP = {
    "schema_version": 2,
    "app": {"app_id": "faulty", "name": "Faulty"},
    "agents": [{
        "id": "assistant",
        "brain": {"provider": "scripted", "config": {"rules": [{"steps": [
            {"call": "shell.run", "params": {"command": "sleep 1.5; echo slept"}},
            {"say": "finished {message}"},
        ]}]}},
    }],
    "tools": {"modules": {"shell": {}}},
}


def assert_clean_log(events: list[dict]) -> None:
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), f"duplicate or out-of-order ids: {ids}"
    assert ids == list(range(ids[0], ids[0] + len(ids))), f"gap in ids: {ids}"


def test_asgi_workers_killed_mid_turn_with_a_queued_message(daemon_factory, app_yaml):
    d = daemon_factory(workers=2, env={"DIGITORN_LEASE_SECONDS": "3"})
    d.deploy(app_yaml(SLOW_APP))
    stream = ReconnectingStream(d.url, d.key, "/api/apps/faulty/sessions/f1/events")
    stream.start()
    try:
        assert stream.opened.wait(30), "the event stream never opened"
        accepted = []
        for text in ("first", "second"):
            response = d.client.post("/api/apps/faulty/sessions/f1/messages", json={"message": text})
            assert response.status_code == 202, response.text
            accepted.append(response.json()["data"]["correlation_id"])

        # The first turn is inside its tool call (the second waits behind it): kill every ASGI worker.
        poll(lambda: any(e["event"] == "tool_start" for e in stream.events), 30, "the first tool call")
        killed = d.kill_children("asgi")
        poll(lambda: (now := set(d.child_pids("asgi"))) and not now & killed, 60, "the ASGI workers' restart")

        # The expired lease is recovered and both messages finish, each exactly once.
        poll(lambda: len({x["correlation_id"] for x in stream.dones()}) == 2, 90,
             f"both turns to finish (events so far: {[e['event'] for e in stream.events]})")
        time.sleep(1.0)  # a duplicate `result` would arrive now
    finally:
        stream.stop.set()
    assert stream.connects >= 2, "the client never had to reconnect: the kill did not hit its stream"
    dones = stream.dones()
    assert sorted(x["correlation_id"] for x in dones) == sorted(accepted)
    assert [x["content"] for x in dones] == ["finished first", "finished second"]
    assert_clean_log(stream.events)

    # The stored log agrees with what the client saw: a fresh replay from 0 is the same sequence.
    replay = d.sse("/api/apps/faulty/sessions/f1/events", params={"since": 0},
                   until=lambda e: e["event"] == "result" and e["data"]["correlation_id"] == accepted[1])
    assert [int(e["id"]) for e in replay if e["id"]] == [e["id"] for e in stream.events]


def test_a_killed_worker_does_not_run_a_side_effect_tool_twice(daemon_factory, app_yaml):
    """SIGKILL of every ASGI worker while a shell step runs: the recovered turn answers that call
    "interrupted" (the model reads it) instead of running the command a second time."""
    d = daemon_factory(workers=2, env={"DIGITORN_LEASE_SECONDS": "3"})
    workspace = app_yaml.workspace
    app = {
        "schema_version": 2,
        "app": {"app_id": "once", "name": "Once"},
        "agents": [{"id": "assistant", "brain": {"provider": "scripted", "config": {"rules": [{"steps": [
            {"call": "shell.run", "params": {"command": "echo started >> runs.txt; sleep 2"}},
            {"say": "after: {result}"},
        ]}]}}}],
        "tools": {"modules": {"shell": {"workspace": str(workspace)}}},
    }
    d.deploy(app_yaml(app))
    stream = ReconnectingStream(d.url, d.key, "/api/apps/once/sessions/k1/events")
    stream.start()
    try:
        assert stream.opened.wait(30), "the event stream never opened"
        response = d.client.post("/api/apps/once/sessions/k1/messages", json={"message": "go"})
        assert response.status_code == 202, response.text
        poll(lambda: (workspace / "runs.txt").exists(), 30, "the shell step to start")
        d.kill_children("asgi")
        poll(lambda: len(stream.dones()) == 1, 90,
             f"the turn to finish after recovery (events so far: {[e['event'] for e in stream.events]})")
        time.sleep(1.0)  # a re-run would have appended by now
    finally:
        stream.stop.set()
    assert (workspace / "runs.txt").read_text().count("started") == 1
    results = [e["data"] for e in stream.events if e["event"] == "tool_call"]
    assert len(results) == 1 and results[0]["success"] is False, results
    assert results[0]["error"].startswith("interrupted"), results
    assert "interrupted" in stream.dones()[0]["content"]


@pytest.mark.scaleout
def test_database_restart_during_a_stream(daemon_factory, app_yaml):
    restart = os.environ.get("DIGITORN_TEST_DB_RESTART", "")
    assert os.environ.get("DATABASE_URL") and restart, (
        "the scale-out leg sets DATABASE_URL and DIGITORN_TEST_DB_RESTART (see .ci/run)"
    )
    d = daemon_factory(workers=2)
    d.deploy(app_yaml(SLOW_APP))
    stream = ReconnectingStream(d.url, d.key, "/api/apps/faulty/sessions/db1/events")
    stream.start()
    try:
        assert stream.opened.wait(30)
        first = d.client.post("/api/apps/faulty/sessions/db1/messages", json={"message": "before"})
        assert first.status_code == 202
        poll(lambda: len(stream.dones()) == 1, 60, "the first turn")

        subprocess.run(shlex.split(restart), check=True, timeout=120)

        # No manual action: the next message is accepted (after at most a few refused attempts
        # while connections are re-established) and its turn streams to the same client.
        def send():
            try:
                r = d.client.post("/api/apps/faulty/sessions/db1/messages", json={"message": "after"})
            except httpx.HTTPError:
                return None
            return r if r.status_code == 202 else None

        poll(send, 60, "a message to be accepted after the restart")
        poll(lambda: len(stream.dones()) == 2, 90, "the turn after the restart")
    finally:
        stream.stop.set()
    assert [x["content"] for x in stream.dones()] == ["finished before", "finished after"]
    assert_clean_log(stream.events)
