"""Background tasks end to end: `digitorn start` (ASGI workers, a Celery worker, beat), HTTP only.

The daemon runs with a 4 s task lease so a SIGKILLed worker's task is swept within seconds.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import DEFAULT_CELERY_WORKERS, pids_running, poll, start_daemon, unique_sleep

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bg(tmp_path_factory):
    running = start_daemon(
        tmp_path_factory.mktemp("bg-daemon"),
        workers=1,
        env={"DIGITORN_TASK_LEASE_SECONDS": "4", "DIGITORN_WORKER_HEARTBEAT_SECONDS": "1"},
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def apps(bg, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bg-apps")
    workspace = root / "ws"
    workspace.mkdir()
    agents = """\
agents:
  - id: assistant
    brain: {provider: scripted, config: {rules: [{when: "", steps: [{say: "hello"}]}]}}
"""
    dev = root / "bgdev.yaml"
    dev.write_text(
        f"""schema_version: 2
app: {{app_id: bgdev, name: bgdev}}
{agents}tools:
  modules:
    filesystem: {{workspace: "{workspace}"}}
    shell: {{workspace: "{workspace}", max_timeout: 120}}
"""
    )
    strict = root / "bgstrict.yaml"
    strict.write_text(
        f"""schema_version: 2
app: {{app_id: bgstrict, name: bgstrict}}
{agents}tools:
  modules:
    filesystem: {{workspace: "{workspace}"}}
    shell: {{workspace: "{workspace}"}}
  capabilities:
    default_policy: auto
    deny: [filesystem.delete]
    approve: [shell]
"""
    )
    bg.deploy(dev)
    bg.deploy(strict)
    return {"dev": "bgdev", "strict": "bgstrict", "workspace": workspace}


def launch(bg, app_id: str, tool: str, params: dict) -> dict:
    response = bg.client.post(f"/api/apps/{app_id}/background-tasks", json={"tool": tool, "params": params})
    assert response.status_code == 202, response.text
    return response.json()["data"]


def get(bg, app_id: str, task_id: str) -> dict:
    response = bg.client.get(f"/api/apps/{app_id}/background-tasks/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def wait(bg, app_id: str, task_id: str, timeout: float = 60) -> dict:
    response = bg.client.post(
        f"/api/apps/{app_id}/background-tasks/{task_id}/wait", json={"timeout": timeout}, timeout=timeout + 30
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_health_reports_the_celery_worker_and_scheduler(bg):
    def healthy():
        data = bg.client.get("/api/health").json()["data"]
        # Every Celery worker of the daemon (2 in the scale-out leg) reports: each stamps its own
        # heartbeat, so "alive" can come while the second has not stamped yet.
        everyone = data["workers"]["count"] == DEFAULT_CELERY_WORKERS
        return data if data["workers"]["alive"] and everyone and data["scheduler"]["alive"] else None

    # The scheduler stamp appears at the first sweep (a worker start or a beat tick).
    data = poll(healthy, 60, f"{DEFAULT_CELERY_WORKERS} worker(s) and the scheduler to report alive")
    assert len(data["workers"]["hostnames"]) == DEFAULT_CELERY_WORKERS
    assert data["workers"]["last_seen"] and data["scheduler"]["last_tick"]


def test_launch_wait_list_and_cancel_over_http(bg, apps):
    app = apps["dev"]
    ok = launch(bg, app, "filesystem.write", {"path": "hello.txt", "content": "hi"})
    assert ok["status"] in ("queued", "running", "completed")
    done = wait(bg, app, ok["task_id"])
    assert done["status"] == "completed", done
    assert (apps["workspace"] / "hello.txt").read_text() == "hi"

    bad = launch(bg, app, "filesystem.read", {"path": "does-not-exist.txt"})
    assert wait(bg, app, bad["task_id"])["status"] == "failed"

    sleep = unique_sleep(30)
    long = launch(bg, app, "shell.run", {"command": f"sleep {sleep}"})
    poll(
        lambda: get(bg, app, long["task_id"])["status"] == "running" and pids_running(sleep), 30, "the sleep"
    )
    began = time.monotonic()
    response = bg.client.delete(f"/api/apps/{app}/background-tasks/{long['task_id']}")
    assert response.status_code == 200, response.text
    cancelled = response.json()["data"]
    took = time.monotonic() - began
    assert cancelled["status"] == "cancelled", cancelled
    # Functional bound 2 s; generous margin for a loaded machine.
    assert took < 5, took
    assert not pids_running(sleep)

    listing = bg.client.get(f"/api/apps/{app}/background-tasks").json()["data"]
    statuses = {t["task_id"]: t["status"] for t in listing["tasks"]}
    assert statuses[ok["task_id"]] == "completed"
    assert statuses[bad["task_id"]] == "failed"
    assert statuses[long["task_id"]] == "cancelled"
    only_failed = bg.client.get(f"/api/apps/{app}/background-tasks", params={"status": "failed"}).json()[
        "data"
    ]
    assert [t["task_id"] for t in only_failed["tasks"]] == [bad["task_id"]]


def test_blocked_and_approval_gated_tasks_over_http(bg, apps):
    app = apps["strict"]
    blocked = bg.client.post(
        f"/api/apps/{app}/background-tasks", json={"tool": "filesystem.delete", "params": {"path": "x"}}
    )
    assert blocked.status_code == 403 and blocked.json()["error_code"] == "FORBIDDEN"

    task = launch(bg, app, "shell.run", {"command": "echo approved > approved.txt"})
    assert task["status"] == "waiting_approval"
    pending = bg.client.get(f"/api/apps/{app}/approvals").json()["data"]["pending"]
    assert [p["request_id"] for p in pending] == [task["approval_request_id"]]
    decided = bg.client.post(
        f"/api/apps/{app}/approve", json={"request_id": task["approval_request_id"], "approved": True}
    )
    assert decided.status_code == 200, decided.text
    done = wait(bg, app, task["task_id"])
    assert done["status"] == "completed", done
    assert (apps["workspace"] / "approved.txt").read_text() == "approved\n"

    denied = launch(bg, app, "shell.run", {"command": "echo no > denied.txt"})
    bg.client.post(
        f"/api/apps/{app}/approve",
        json={"request_id": denied["approval_request_id"], "approved": False, "message": "nope"},
    )
    result = wait(bg, app, denied["task_id"], timeout=10)
    assert result["status"] == "failed" and result["error"] == "denied: nope"
    assert not (apps["workspace"] / "denied.txt").exists()


def test_sigkill_of_the_worker_leaves_no_task_running_and_runs_nothing_twice(bg, apps):
    app = apps["dev"]
    side = apps["workspace"] / "side-effect.txt"
    sleep = unique_sleep(20)
    task = launch(bg, app, "shell.run", {"command": f"echo ran >> side-effect.txt; sleep {sleep}"})
    poll(
        lambda: side.exists() and get(bg, app, task["task_id"])["status"] == "running",
        60,
        "the task to start",
    )

    # Every Celery worker process dies (one or, on the scale-out leg, two): whichever ran the task.
    killed = bg.kill_children("celery")
    assert killed
    try:
        # The supervisor restarts the workers; they (and beat) sweep the expired lease.
        poll(
            lambda: len(now := set(bg.child_pids("celery"))) == len(killed) and not now & killed,
            60,
            "the worker restart",
        )
        settled = poll(
            lambda: (t := get(bg, app, task["task_id"]))["status"] != "running" and t,
            60,
            "the lost task to settle",
        )
    finally:
        for pid in pids_running(sleep):
            os.kill(pid, signal.SIGKILL)
    assert settled["status"] == "failed"
    assert settled["error"].startswith("worker lost") and "side effects" in settled["error"]

    # The restarted worker takes new work; the killed tool never ran a second time.
    follow = launch(bg, app, "shell.run", {"command": "echo after-restart"})
    assert wait(bg, app, follow["task_id"])["status"] == "completed"
    time.sleep(1)
    assert side.read_text() == "ran\n"
    running = bg.client.get(f"/api/apps/{app}/background-tasks", params={"status": "running"}).json()["data"]
    assert running["total"] == 0
