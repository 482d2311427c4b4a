"""Background tasks against a REAL Celery worker process sharing the test database and broker.

The worker is ``celery -A digitorn_site worker`` started here with ``DATABASE_URL`` pointing at
pytest-django's test database, so rows written by the test client are the rows it claims. Tests use
``transaction=True`` so every write is committed and visible to the worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import pids_running, poll, unique_sleep
from django.conf import settings
from django.db import connection
from django.test import Client

from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from apps_registry import services as apps_services
from apps_registry.selectors import app_runtime
from digitorn_site import signals
from tests.helpers import SAY_HELLO, assert_envelope_error, client_for, scripted_app
from tooling import background
from tooling.models import BackgroundTask, ToolExecution

ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = "4"

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("admin_key")]


def manifest(app_id: str, workspace: Path, capabilities: dict | None = None) -> dict:
    modules = {"filesystem": {"workspace": str(workspace)}, "shell": {"workspace": str(workspace), "max_timeout": 120}}
    reader = {"id": "reader", "modules": ["filesystem"], "brain": SAY_HELLO}
    return scripted_app(app_id, modules, agents=[reader], capabilities=capabilities)


STRICT_CAPABILITIES = {
    "default_policy": "auto",
    "grant": ["filesystem"],
    "deny": ["filesystem.delete"],
    "approve": [{"module": "shell", "actions": ["run"], "reason": "commands change the machine"}],
}


# --- the worker process -------------------------------------------------------------------------


class Worker:
    def __init__(self, data_dir: Path, db_name: str, log_path: Path) -> None:
        self.hostname = ""
        self.data_dir = data_dir
        self.db_name = db_name
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # A fresh name per start: a SIGKILLed worker's heartbeat file stays behind.
        self.hostname = f"bgtest-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "digitorn_site.settings",
            "DIGITORN_DATA_DIR": str(self.data_dir),
            "DATABASE_URL": f"sqlite:///{self.db_name}",
            "DIGITORN_TASK_LEASE_SECONDS": LEASE_SECONDS,
            "DIGITORN_WORKER_HEARTBEAT_SECONDS": "1",
        }
        argv = [
            sys.executable, "-m", "celery", "-A", "digitorn_site", "worker",
            "--concurrency", "2", "--hostname", f"{self.hostname}@%h", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open for its lifetime
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 90
        workers = self.data_dir / "workers"
        while time.monotonic() < deadline:
            if any(p.name.startswith(self.hostname) for p in workers.glob("*.json")):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"the Celery worker did not start; log:\n{self.log_path.read_text()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    db_name = connection.settings_dict["NAME"]
    w = Worker(Path(settings.DATA_DIR), db_name, tmp_path_factory.mktemp("worker") / "worker.log")
    w.start()
    yield w
    w.stop()


@pytest.fixture
def admin(admin_client) -> Client:
    return admin_client


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def dev_app(workspace: Path, deployed_app) -> str:
    deployed_app(manifest("bgdev", workspace))
    return "bgdev"


@pytest.fixture
def strict_app(workspace: Path, deployed_app) -> str:
    deployed_app(manifest("bgstrict", workspace, STRICT_CAPABILITIES))
    return "bgstrict"


def post(client: Client, url: str, body) -> object:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json")


def launch(client: Client, app_id: str, tool: str, params: dict, **extra) -> dict:
    response = post(client, f"/api/apps/{app_id}/background-tasks", {"tool": tool, "params": params, **extra})
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["success"] is True and body["error"] is None
    return body["data"]


def wait(client: Client, app_id: str, task_id: str, timeout: float = 60) -> dict:
    response = post(client, f"/api/apps/{app_id}/background-tasks/{task_id}/wait", {"timeout": timeout})
    assert response.status_code == 200, response.content
    return response.json()["data"]


def get(client: Client, app_id: str, task_id: str) -> dict:
    response = client.get(f"/api/apps/{app_id}/background-tasks/{task_id}")
    assert response.status_code == 200, response.content
    return response.json()["data"]


# --- launch, wait, get, list ---------------------------------------------------------------------


def test_launch_wait_completes_with_result(worker, admin, dev_app, workspace):
    task = launch(admin, dev_app, "shell.run", {"command": "echo hello-from-task"})
    assert set(task) >= {
        "task_id", "tool_name", "params", "session_id", "status", "result", "error", "hint",
        "created_at", "started_at", "finished_at", "elapsed_seconds",
    }  # fmt: skip
    assert task["tool_name"] == "shell.run" and isinstance(task["created_at"], float)
    assert task["status"] in ("queued", "running", "completed")
    assert task["params"] == {"command": "echo hello-from-task"}

    done = wait(admin, dev_app, task["task_id"])
    assert done["status"] == "completed", done
    assert done["result"]["stdout"] == "hello-from-task\n"
    assert done["error"] is None
    assert done["started_at"] and done["finished_at"]
    assert done["elapsed_seconds"] is not None and done["elapsed_seconds"] >= 0
    assert get(admin, dev_app, task["task_id"]) == done

    # The run went through the one tool path, recorded as the task's call.
    execution = ToolExecution.objects.get(caller=f"task:{task['task_id']}")
    assert execution.tool == "shell.run" and execution.outcome == "ok"
    row = BackgroundTask.objects.get(task_id=task["task_id"])
    assert row.attempts == 1 and row.worker.startswith(worker.hostname)


def test_failed_tool_is_failed_with_its_error(worker, admin, dev_app):
    task = launch(admin, dev_app, "filesystem.read", {"path": "missing.txt"})
    done = wait(admin, dev_app, task["task_id"])
    assert done["status"] == "failed"
    assert "missing.txt" in done["error"]


def test_wait_returns_current_state_on_timeout(worker, admin, dev_app):
    sleep = unique_sleep(20)
    task = launch(admin, dev_app, "shell.run", {"command": f"sleep {sleep}"})
    early = wait(admin, dev_app, task["task_id"], timeout=0.3)
    assert early["status"] in ("queued", "running")
    assert early["finished_at"] is None
    cancelled = admin.delete(f"/api/apps/{dev_app}/background-tasks/{task['task_id']}").json()["data"]
    assert cancelled["status"] == "cancelled"
    poll(lambda: not pids_running(sleep), 10, "the sleep to end")


def test_list_filters_and_ownership(worker, admin, alice, bob, dev_app):
    mine = launch(alice, dev_app, "shell.run", {"command": "echo a"})
    theirs = launch(bob, dev_app, "shell.run", {"command": "echo b"})
    failing = launch(alice, dev_app, "filesystem.read", {"path": "nope.txt"})
    for client, task in ((alice, mine), (bob, theirs), (alice, failing)):
        wait(client, dev_app, task["task_id"])

    listing = alice.get(f"/api/apps/{dev_app}/background-tasks").json()["data"]
    assert listing["total"] == 2
    assert {t["task_id"] for t in listing["tasks"]} == {mine["task_id"], failing["task_id"]}
    assert {t["task_id"]: t["status"] for t in listing["tasks"]} == {
        mine["task_id"]: "completed",
        failing["task_id"]: "failed",
    }

    completed = alice.get(f"/api/apps/{dev_app}/background-tasks?status=completed").json()["data"]
    assert [t["task_id"] for t in completed["tasks"]] == [mine["task_id"]] and completed["total"] == 1
    both = alice.get(f"/api/apps/{dev_app}/background-tasks?status=completed,failed").json()["data"]
    assert both["total"] == 2

    # Another principal's task does not exist for you; the admin sees every task.
    assert_envelope_error(
        bob.get(f"/api/apps/{dev_app}/background-tasks/{mine['task_id']}"), 404, "RESOURCE_NOT_FOUND"
    )
    assert_envelope_error(
        bob.delete(f"/api/apps/{dev_app}/background-tasks/{mine['task_id']}"), 404, "RESOURCE_NOT_FOUND"
    )
    assert_envelope_error(
        post(bob, f"/api/apps/{dev_app}/background-tasks/{mine['task_id']}/wait", {}),
        404,
        "RESOURCE_NOT_FOUND",
    )
    everything = admin.get(f"/api/apps/{dev_app}/background-tasks").json()["data"]
    assert everything["total"] == 3
    assert get(admin, dev_app, theirs["task_id"])["status"] == "completed"


def test_bad_input_gets_the_envelope(admin, dev_app, strict_app):
    url = f"/api/apps/{dev_app}/background-tasks"
    error = assert_envelope_error(post(admin, url, {"tool": "shell.rnu", "params": {}}), 404, "RESOURCE_NOT_FOUND")["error"]
    assert "shell.run" in error  # did you mean
    assert_envelope_error(post(admin, url, {"tool": "nosuch.tool"}), 404, "RESOURCE_NOT_FOUND")
    assert "tool" in assert_envelope_error(post(admin, url, {"params": {}}), 400, "VALIDATION_ERROR")["error"]
    assert "params" in assert_envelope_error(
        post(admin, url, {"tool": "shell.run", "params": [1]}), 400, "VALIDATION_ERROR"
    )["error"]
    assert "tool" in assert_envelope_error(post(admin, url, {"tool": 5}), 400, "VALIDATION_ERROR")["error"]
    error = assert_envelope_error(post(admin, url, {"tool": "shell.run", "params": {}}), 400, "VALIDATION_ERROR")["error"]
    assert "command" in error
    error = assert_envelope_error(
        post(admin, url, {"tool": "shell.run", "params": {"command": 3}}), 400, "VALIDATION_ERROR"
    )["error"]
    assert "params.command" in error
    assert_envelope_error(post(admin, url, "{not json"), 400, "VALIDATION_ERROR")
    assert_envelope_error(post(admin, url, "[1, 2]"), 400, "VALIDATION_ERROR")
    assert_envelope_error(admin.get(f"{url}?status=bogus"), 400, "VALIDATION_ERROR")
    assert_envelope_error(admin.get(f"{url}?limit=0"), 400, "VALIDATION_ERROR")
    assert_envelope_error(admin.put(url, data="{}", content_type="application/json"), 405, "METHOD_NOT_ALLOWED")

    # A blocked tool is refused at launch and leaves no row behind.
    blocked = f"/api/apps/{strict_app}/background-tasks"
    error = assert_envelope_error(
        post(admin, blocked, {"tool": "filesystem.delete", "params": {"path": "x"}}), 403, "FORBIDDEN"
    )["error"]
    assert "blocked" in error
    assert not BackgroundTask.objects.filter(app_id=strict_app).exists()

    # Unknown app, unknown task, wrong method.
    assert_envelope_error(
        post(admin, "/api/apps/ghost/background-tasks", {"tool": "shell.run"}), 404, "RESOURCE_NOT_FOUND"
    )
    assert_envelope_error(admin.get(f"{url}/task-nope"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope_error(post(admin, f"{url}/task-nope/wait", {}), 404, "RESOURCE_NOT_FOUND")
    assert_envelope_error(admin.put(f"{url}/task-nope", data="{}"), 405, "METHOD_NOT_ALLOWED")
    assert_envelope_error(admin.get(f"{url}/task-nope/wait"), 405, "METHOD_NOT_ALLOWED")

    # /wait validates its timeout before looking anything up.
    task = BackgroundTask.objects.create(
        task_id="task-fixed", app_id=dev_app, principal="admin", tool="shell.run"
    )
    wait_url = f"{url}/{task.task_id}/wait"
    for bad in ({"timeout": "abc"}, {"timeout": True}, {"timeout": -1}, {"timeout": [1]}):
        assert "timeout" in assert_envelope_error(post(admin, wait_url, bad), 400, "VALIDATION_ERROR")["error"]
    assert_envelope_error(post(admin, wait_url, "NaN"), 400, "VALIDATION_ERROR")
    assert_envelope_error(post(admin, wait_url, "{oops"), 400, "VALIDATION_ERROR")
    assert_envelope_error(post(admin, wait_url, '{"timeout": NaN}'), 400, "VALIDATION_ERROR")


def test_auth_and_scopes(admin, dev_app):
    url = f"/api/apps/{dev_app}/background-tasks"
    anonymous = Client()
    assert_envelope_error(anonymous.get(url), 401, "UNAUTHORIZED")
    assert_envelope_error(anonymous.get(f"{url}/task-x"), 401, "UNAUTHORIZED")
    assert_envelope_error(post(anonymous, f"{url}/task-x/wait", {}), 401, "UNAUTHORIZED")
    reader = client_for("carol", ["apps:read"])
    assert reader.get(url).status_code == 200
    assert "apps:run" in assert_envelope_error(
        post(reader, url, {"tool": "shell.run", "params": {"command": "id"}}), 403, "FORBIDDEN"
    )["error"]
    assert "apps:run" in assert_envelope_error(reader.delete(f"{url}/task-x"), 403, "FORBIDDEN")["error"]
    assert "apps:run" in assert_envelope_error(post(reader, f"{url}/task-x/wait", {}), 403, "FORBIDDEN")["error"]


# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_running_shell_command_stops_it(worker, admin, dev_app, workspace):
    sleep = unique_sleep(30)
    task = launch(admin, dev_app, "shell.run", {"command": f"sleep {sleep}; echo finished > after.txt"})
    url = f"/api/apps/{dev_app}/background-tasks/{task['task_id']}"
    poll(lambda: get(admin, dev_app, task["task_id"])["status"] == "running", 30, "the task to run")
    poll(lambda: pids_running(sleep), 10, "the sleep process")

    began = time.monotonic()
    response = admin.delete(url)
    stopped_after = time.monotonic() - began
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["status"] == "cancelled", data
    assert data["finished_at"] is not None
    # The functional bound is 2 s; the margin absorbs a loaded CI machine.
    assert stopped_after < 5, stopped_after
    assert not pids_running(sleep)
    assert not (workspace / "after.txt").exists()

    # Cancelling a finished task returns it unchanged.
    again = admin.delete(url)
    assert again.status_code == 200 and again.json()["data"] == get(admin, dev_app, task["task_id"])


def test_cancel_queued_task_never_runs(worker, admin, dev_app, workspace):
    sleeps = [unique_sleep(30), unique_sleep(30)]
    # Two long tasks occupy both pool processes, so a third stays queued.
    busy = [launch(admin, dev_app, "shell.run", {"command": f"sleep {s}"}) for s in sleeps]
    poll(
        lambda: all(get(admin, dev_app, t["task_id"])["status"] == "running" for t in busy), 30, "both to run"
    )
    queued = launch(admin, dev_app, "shell.run", {"command": "echo ran >> queued.txt"})
    assert get(admin, dev_app, queued["task_id"])["status"] == "queued"

    data = admin.delete(f"/api/apps/{dev_app}/background-tasks/{queued['task_id']}").json()["data"]
    assert data["status"] == "cancelled" and data["started_at"] is None
    for t in busy:
        assert (
            admin.delete(f"/api/apps/{dev_app}/background-tasks/{t['task_id']}").json()["data"]["status"]
            == "cancelled"
        )
    # Give the freed pool a moment to pick up the (stale) queued message: it must not run it.
    follow = launch(admin, dev_app, "shell.run", {"command": "echo after"})
    assert wait(admin, dev_app, follow["task_id"])["status"] == "completed"
    assert not (workspace / "queued.txt").exists()
    assert BackgroundTask.objects.get(task_id=queued["task_id"]).attempts == 0


# --- approvals -------------------------------------------------------------------------------------


def test_approve_tool_waits_for_approval_then_runs(worker, alice, strict_app, workspace):
    task = launch(alice, strict_app, "shell.run", {"command": "echo approved-run > approved.txt"})
    assert task["status"] == "waiting_approval"
    request = ApprovalRequest.objects.get(request_id=task["approval_request_id"])
    assert request.origin == "task" and request.origin_ref == task["task_id"]
    assert request.principal == "alice" and request.reason == "commands change the machine"
    assert request.call_params == {"command": "echo approved-run > approved.txt"}
    # Nothing runs while it waits.
    assert wait(alice, strict_app, task["task_id"], timeout=0.5)["status"] == "waiting_approval"
    assert not (workspace / "approved.txt").exists()

    approval_decide(
        app_id=strict_app, request_id=request.request_id, approved=True, message="", principal="alice"
    )
    done = wait(alice, strict_app, task["task_id"])
    assert done["status"] == "completed", done
    assert (workspace / "approved.txt").read_text() == "approved-run\n"


def test_denied_or_expired_approval_fails_the_task(worker, alice, strict_app, workspace):
    task = launch(alice, strict_app, "shell.run", {"command": "echo no > denied.txt"})
    approval_decide(
        app_id=strict_app,
        request_id=task["approval_request_id"],
        approved=False,
        message="not today",
        principal="alice",
    )
    done = get(alice, strict_app, task["task_id"])
    assert done["status"] == "failed" and done["error"] == "denied: not today"
    assert done["finished_at"] is not None

    expiring = launch(alice, strict_app, "shell.run", {"command": "echo no > expired.txt"})
    ApprovalRequest.objects.filter(request_id=expiring["approval_request_id"]).update(
        expires_at="2000-01-01T00:00Z"
    )
    from approvals.services import approvals_expire_due

    assert approvals_expire_due() == 1
    expired = get(alice, strict_app, expiring["task_id"])
    assert expired["status"] == "failed" and expired["error"].startswith("denied: expired")
    assert not (workspace / "denied.txt").exists() and not (workspace / "expired.txt").exists()


def test_cancelling_a_waiting_task_withdraws_its_approval(alice, strict_app):
    task = launch(alice, strict_app, "shell.run", {"command": "echo x"})
    data = alice.delete(f"/api/apps/{strict_app}/background-tasks/{task['task_id']}").json()["data"]
    assert data["status"] == "cancelled"
    request = ApprovalRequest.objects.get(request_id=task["approval_request_id"])
    assert request.status == "denied" and "cancelled" in request.decision_message


# --- exactly once ----------------------------------------------------------------------------------


def test_duplicate_messages_run_the_tool_once(worker, admin, dev_app, workspace):
    task = launch(admin, dev_app, "shell.run", {"command": "echo line >> once.txt"})
    # Two more wake-ups for the same row, as a broker redelivery would produce.
    background._enqueue(task["task_id"])
    background._enqueue(task["task_id"])
    assert wait(admin, dev_app, task["task_id"])["status"] == "completed"
    # Another task after them proves the worker drained the duplicates.
    for _ in range(2):
        wait(admin, dev_app, launch(admin, dev_app, "shell.run", {"command": "true"})["task_id"])
    assert (workspace / "once.txt").read_text() == "line\n"
    assert BackgroundTask.objects.get(task_id=task["task_id"]).attempts == 1

    # The Celery adapter itself, run in-process, refuses a finished row.
    from tooling.tasks import run_background_task

    assert run_background_task.apply(args=[task["task_id"]]).get() == "skipped"
    assert (workspace / "once.txt").read_text() == "line\n"


def test_sweep_fails_lost_running_task_and_requeues_lost_message(worker, admin, dev_app, workspace):
    lost = BackgroundTask.objects.create(
        task_id=f"task-lost-{uuid.uuid4().hex[:6]}", app_id=dev_app, principal="admin", tool="shell.run",
        params={"command": "echo should-not-run >> lost.txt"},
    )  # fmt: skip
    claimed = background.background_task_claim(task_id=lost.task_id, worker="dead-worker:1")
    assert claimed is not None and claimed.status == "running"
    BackgroundTask.objects.filter(pk=lost.pk).update(lease_expires_at="2000-01-01T00:00Z")

    orphan = BackgroundTask.objects.create(
        task_id=f"task-orphan-{uuid.uuid4().hex[:6]}", app_id=dev_app, principal="admin", tool="shell.run",
        params={"command": "echo requeued >> orphan.txt"}, lease_expires_at="2000-01-01T00:00Z",
    )  # fmt: skip
    finished: list[dict] = []

    def receiver(sender, **kwargs):
        finished.append(kwargs)

    signals.background_task_finished.connect(receiver)
    try:
        report = background.background_tasks_sweep()
    finally:
        signals.background_task_finished.disconnect(receiver)
    assert report["lost"] == 1 and report["requeued"] == 1

    lost.refresh_from_db()
    assert lost.status == "failed" and lost.error.startswith("worker lost")
    assert "side effects" in lost.error
    assert [f["task_id"] for f in finished] == [lost.task_id]
    assert finished[0]["status"] == "failed" and finished[0]["app_id"] == dev_app

    assert wait(admin, dev_app, orphan.task_id)["status"] == "completed"
    assert (workspace / "orphan.txt").read_text() == "requeued\n"
    assert not (workspace / "lost.txt").exists()
    # A second sweep finds nothing left to repair.
    assert background.background_tasks_sweep() == {"lost": 0, "requeued": 0, "reconciled": 0}


def test_sweep_applies_a_decision_whose_signal_was_missed(strict_app):
    app = app_runtime(app_id=strict_app)
    task = background.background_task_launch(
        app=app, tool="shell.run", params={"command": "echo x"}, principal="alice", session_id=None
    )
    # Decided behind the receiver's back (as if the process died before on_commit fired).
    ApprovalRequest.objects.filter(request_id=task.approval_request_id).update(
        status="denied", decision_message="no"
    )
    assert background.background_tasks_sweep()["reconciled"] == 1
    task.refresh_from_db()
    assert task.status == "failed" and task.error == "denied: no"


def test_worker_sigkill_leaves_nothing_running_and_runs_nothing_twice(worker, admin, dev_app, workspace):
    """SIGKILL the worker mid-task, restart it: the task ends failed ("worker lost"), never re-run."""
    sleep = unique_sleep(25)
    task = launch(admin, dev_app, "shell.run", {"command": f"echo started >> side.txt; sleep {sleep}"})
    try:
        poll(lambda: (workspace / "side.txt").exists(), 60, "the tool to start")
        worker.kill(signal.SIGKILL)
        assert get(admin, dev_app, task["task_id"])["status"] == "running"
    finally:
        # The command ran in its own session and outlives the worker; its side effect is done.
        for pid in pids_running(sleep):
            os.kill(pid, signal.SIGKILL)
        worker.start()

    # The restarted worker sweeps on start; sweeping here too covers a lease that had not yet
    # run out at that moment.
    def settled():
        background.background_tasks_sweep()
        return get(admin, dev_app, task["task_id"])["status"] != "running"

    poll(settled, 30, "the lost task to be swept")
    data = get(admin, dev_app, task["task_id"])
    assert data["status"] == "failed" and data["error"].startswith("worker lost")
    # The restarted worker runs new work, and nothing re-ran the killed tool.
    follow = launch(admin, dev_app, "shell.run", {"command": "echo fine"})
    assert wait(admin, dev_app, follow["task_id"])["status"] == "completed"
    assert (workspace / "side.txt").read_text() == "started\n"
    assert not BackgroundTask.objects.filter(status="running").exists()
    assert BackgroundTask.objects.get(task_id=task["task_id"]).attempts == 1


# --- lifecycle, signals, health --------------------------------------------------------------------


def test_finished_signal_is_sent_on_commit_with_the_task(strict_app, dev_app):
    received: list[dict] = []

    def receiver(sender, **kwargs):
        received.append(kwargs)

    signals.background_task_finished.connect(receiver)
    try:
        # In-process run of the worker path on a row no worker was told about.
        row = BackgroundTask.objects.create(
            task_id=f"task-inproc-{uuid.uuid4().hex[:6]}", app_id=dev_app, principal="admin", session_id="sess-1",
            tool="shell.run", params={"command": "echo in-process"},
            lease_expires_at="2999-01-01T00:00Z",
        )  # fmt: skip
        assert background.background_task_run(task_id=row.task_id, worker="test:1") == "completed"
        row.refresh_from_db()
        assert row.result["stdout"] == "in-process\n"
        app = app_runtime(app_id=strict_app)
        waiting = background.background_task_launch(
            app=app, tool="shell.run", params={"command": "echo x"}, principal="admin", session_id="sess-2"
        )
        background.background_task_cancel(app_id=strict_app, task_id=waiting.task_id, principal="admin")
    finally:
        signals.background_task_finished.disconnect(receiver)
    assert received == [
        {"signal": signals.background_task_finished, "task_id": row.task_id, "app_id": dev_app,
         "session_id": "sess-1", "status": "completed"},
        {"signal": signals.background_task_finished, "task_id": waiting.task_id, "app_id": strict_app,
         "session_id": "sess-2", "status": "cancelled"},
    ]  # fmt: skip


def test_undeploy_cancels_the_apps_tasks(worker, admin, dev_app, strict_app):
    sleep = unique_sleep(30)
    running = launch(admin, dev_app, "shell.run", {"command": f"sleep {sleep}"})
    waiting = launch(admin, strict_app, "shell.run", {"command": "echo x"})
    poll(lambda: get(admin, dev_app, running["task_id"])["status"] == "running", 30, "the task to run")

    apps_services.app_undeploy(app_id=strict_app)
    assert BackgroundTask.objects.get(task_id=waiting["task_id"]).status == "cancelled"
    apps_services.app_undeploy(app_id=dev_app)
    poll(
        lambda: BackgroundTask.objects.get(task_id=running["task_id"]).status == "cancelled", 10, "the cancel"
    )
    poll(lambda: not pids_running(sleep), 10, "the sleep to end")


def test_health_reports_live_workers(worker, client):
    data = client.get("/api/health").json()["data"]
    assert data["workers"]["alive"] is True
    assert data["workers"]["count"] >= 1
    assert any(h.startswith(worker.hostname) for h in data["workers"]["hostnames"])
    assert data["workers"]["last_seen"] is not None
    assert set(data["scheduler"]) == {"alive", "last_tick"}


# --- meta-tools --------------------------------------------------------------------------------------


def test_meta_tools_launch_poll_and_cancel(worker, dev_app, strict_app):
    names = [t["name"] for t in background.background_meta_tools()]
    assert names == ["background_run", "background_status", "background_cancel"]
    for schema in background.background_meta_tools():
        assert schema["parameters"]["type"] == "object" and schema["description"]

    app = app_runtime(app_id=dev_app)
    call = dict(app=app, principal="alice", session_id="sess-meta", agent_id="assistant")
    run = background.background_meta_invoke(
        name="background_run", params={"tool": "shell.run", "params": {"command": "echo meta"}}, **call
    )
    assert run["success"] is True and run["data"]["session_id"] == "sess-meta"
    task_id = run["data"]["task_id"]
    poll(
        lambda: background.background_meta_invoke(name="background_status", params={"task_id": task_id}, **call)["data"]["status"] == "completed",
        30,
        "the meta-launched task",
    )  # fmt: skip
    status = background.background_meta_invoke(name="background_status", params={"task_id": task_id}, **call)
    assert status["data"]["result"]["stdout"] == "meta\n"
    listing = background.background_meta_invoke(name="background_status", params={}, **call)
    assert [t["task_id"] for t in listing["data"]["tasks"]] == [task_id]

    # The agent's module list is the gate: 'reader' may only use filesystem.
    refused = background.background_meta_invoke(
        app=app, name="background_run", params={"tool": "shell.run", "params": {"command": "id"}},
        principal="alice", session_id=None, agent_id="reader",
    )  # fmt: skip
    assert refused["success"] is False and "blocked" in refused["error"]
    missing = background.background_meta_invoke(name="background_cancel", params={}, **call)
    assert missing["success"] is False and "task_id" in missing["error"]
    unknown = background.background_meta_invoke(name="background_nope", params={}, **call)
    assert unknown["success"] is False and "background_run" in unknown["error"]
    other = background.background_meta_invoke(
        name="background_status",
        params={"task_id": task_id},
        app=app,
        principal="bob",
        session_id=None,
        agent_id=None,
    )
    assert other["success"] is False and task_id in other["error"]
