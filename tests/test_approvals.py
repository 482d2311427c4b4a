"""Approval requests: the state machine, expiry, cancellation, the HTTP endpoints, and a direct
``/execute`` call that runs on a real Celery worker once approved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from approvals import selectors, services
from approvals.models import ApprovalRequest
from apps_registry import services as apps_services
from apps_registry.manifest.compiled import CompiledApp, Runtime
from digitorn_site import signals
from digitorn_site.errors import ConflictError, NotFoundError
from tests.helpers import admin_client, client_for, scripted_app

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("admin_key")


def manifest(ws: Path) -> dict:
    """App ``appr``: the shell needs an approval, which expires after 300 s."""
    return scripted_app(
        "appr", {"filesystem": {"workspace": str(ws)}, "shell": {"workspace": str(ws)}},
        runtime={"approval_timeout": 300},
        capabilities={"default_policy": "auto", "grant": ["filesystem"],
                      "approve": [{"module": "shell", "reason": "commands change the machine"}]},
    )


@pytest.fixture
def decided():
    """Every approval_decided signal sent (they are sent on commit)."""
    seen: list[dict] = []

    def receiver(sender, **kwargs):
        seen.append({k: kwargs[k] for k in ("request_id", "app_id", "session_id", "approved", "message")})

    signals.approval_decided.connect(receiver, dispatch_uid="test_approvals.decided")
    yield seen
    signals.approval_decided.disconnect(dispatch_uid="test_approvals.decided")


def app(app_id: str = "appr", timeout: int = 300) -> CompiledApp:
    return CompiledApp(app_id=app_id, name=app_id, runtime=Runtime(approval_timeout=timeout))


def create(principal: str = "alice", session_id: str | None = "s1", app_id: str = "appr", timeout: int = 300):
    return services.approval_request_create(
        app=app(app_id, timeout),
        tool_name="shell.run",
        params={"command": "rm ***"},
        call_params={"command": "rm secret"},
        risk_level="high",
        reason="commands change the machine",
        principal=principal,
        session_id=session_id,
        agent_id="assistant",
        origin="agent",
        origin_ref="call-1",
    )


def overdue(request: ApprovalRequest) -> None:
    ApprovalRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))


# -- services and selectors ------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_sets_id_and_deadline():
    request = create(timeout=42)
    assert request.request_id.startswith("req-") and len(request.request_id) == 20
    assert request.status == "pending"
    assert timedelta(seconds=41) < request.expires_at - request.created_at < timedelta(seconds=43)


@pytest.mark.django_db
def test_decide_once_then_conflict(decided, django_capture_on_commit_callbacks):
    request = create()
    with django_capture_on_commit_callbacks(execute=True):
        result = services.approval_decide(
            app_id="appr", request_id=request.request_id, approved=True, message="go", principal="alice"
        )
    assert (result.status, result.decided_by, result.decision_message) == ("approved", "alice", "go")
    assert decided == [
        {"request_id": request.request_id, "app_id": "appr", "session_id": "s1", "approved": True, "message": "go"}
    ]
    with pytest.raises(ConflictError, match="already approved"):
        services.approval_decide(app_id="appr", request_id=request.request_id, approved=False, message="", principal="alice")


@pytest.mark.django_db
def test_other_principals_and_apps_get_not_found_but_admin_may_decide():
    request = create(principal="alice")
    for app_id, principal in (("appr", "bob"), ("other", "alice")):
        with pytest.raises(NotFoundError):
            services.approval_decide(app_id=app_id, request_id=request.request_id, approved=True, message="", principal=principal)
    with pytest.raises(NotFoundError):
        services.approval_decide(app_id="appr", request_id="req-missing", approved=True, message="", principal="alice")
    denied = services.approval_decide(app_id="appr", request_id=request.request_id, approved=False, message="no", principal="admin")
    assert denied.status == "denied" and denied.decided_by == "admin"


@pytest.mark.django_db
def test_expiry_on_access_and_by_sweep(decided, django_capture_on_commit_callbacks):
    late = create()
    overdue(late)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ConflictError, match="already expired"):
        services.approval_decide(app_id="appr", request_id=late.request_id, approved=True, message="", principal="alice")
    late.refresh_from_db()
    assert late.status == "expired" and late.decision_message.startswith("expired after")
    assert decided[-1]["approved"] is False and decided[-1]["message"].startswith("expired")

    fresh, stale_a, stale_b = create(), create(), create(session_id=None)
    overdue(stale_a)
    overdue(stale_b)
    # Listing expires overdue rows before answering.
    with django_capture_on_commit_callbacks(execute=True):
        listed = services.approvals_pending(app_id="appr", principal="alice")
    assert [r.request_id for r in listed] == [fresh.request_id]
    stale_a.refresh_from_db()
    assert stale_a.status == "expired"
    overdue(fresh)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.approvals_expire_due() == 1
    assert services.approvals_expire_due() == 0
    assert selectors.approval_get(request_id=fresh.request_id).status == "expired"
    assert [d["approved"] for d in decided] == [False, False, False, False]


@pytest.mark.django_db
def test_pending_list_is_per_principal_and_admin_sees_all():
    mine, theirs = create(principal="alice"), create(principal="bob")
    create(principal="alice", app_id="elsewhere")
    assert [r.request_id for r in selectors.approval_list_pending(app_id="appr", principal="alice")] == [mine.request_id]
    assert {r.request_id for r in selectors.approval_list_pending(app_id="appr", principal="admin")} == {
        mine.request_id,
        theirs.request_id,
    }


@pytest.mark.django_db
def test_cancel_by_session_and_app():
    keep, by_session, other_session = create(session_id="s1"), create(session_id="s2"), create(session_id="s3")
    assert services.approvals_cancel(app_id="appr", session_id="s2") == 1
    by_session.refresh_from_db()
    assert by_session.status == "cancelled" and "session" in by_session.decision_message
    assert services.approvals_cancel(app_id="appr") == 2
    keep.refresh_from_db()
    other_session.refresh_from_db()
    assert keep.status == other_session.status == "cancelled"
    with pytest.raises(ConflictError, match="already cancelled"):
        services.approval_decide(app_id="appr", request_id=keep.request_id, approved=True, message="", principal="alice")


@pytest.mark.django_db
def test_undeploy_cancels_pending_requests(tmp_path, django_capture_on_commit_callbacks):
    apps_services.app_deploy(text=json.dumps(manifest(tmp_path)))
    request = create()
    with django_capture_on_commit_callbacks(execute=True):
        apps_services.app_undeploy(app_id="appr")
    request.refresh_from_db()
    assert request.status == "cancelled"


@pytest.mark.django_db
def test_expire_due_celery_task_calls_the_service():
    from approvals.tasks import expire_due

    overdue(create())
    assert expire_due.apply().get() == 1


# -- HTTP ----------------------------------------------------------------------------------------


def post(client: Client, url: str, body) -> object:
    return client.post(url, data=body if isinstance(body, str) else json.dumps(body), content_type="application/json")


@pytest.fixture
def deployed(tmp_path, deployed_app) -> str:
    deployed_app(manifest(tmp_path))
    return "appr"


@pytest.mark.django_db
def test_http_list_decide_conflict_and_ownership(deployed, alice, bob):
    response = post(alice, f"/api/apps/{deployed}/tools/shell.run/execute", {"params": {"command": "true"}})
    assert response.status_code == 202
    request_id = response.json()["data"]["request_id"]

    pending = alice.get(f"/api/apps/{deployed}/approvals").json()["data"]["pending"]
    assert [p["request_id"] for p in pending] == [request_id]
    assert set(pending[0]) >= {
        "request_id", "session_id", "agent_id", "user_id", "app_id", "tool_name", "tool_params", "risk_level",
        "description", "created_at", "expires_at",
    }  # fmt: skip
    assert (pending[0]["tool_name"], pending[0]["description"]) == ("shell.run", "commands change the machine")
    assert pending[0]["tool_params"] == {"command": "true"} and pending[0]["user_id"] == "alice"
    assert isinstance(pending[0]["created_at"], float) and pending[0]["expires_at"] > pending[0]["created_at"]
    assert bob.get(f"/api/apps/{deployed}/approvals").json()["data"]["pending"] == []
    admin = admin_client()
    assert len(admin.get(f"/api/apps/{deployed}/approvals").json()["data"]["pending"]) == 1

    other = post(bob, f"/api/apps/{deployed}/approve", {"request_id": request_id, "approved": True})
    assert other.status_code == 404 and other.json()["error_code"] == "RESOURCE_NOT_FOUND"
    assert bob.get(f"/api/apps/{deployed}/approvals/{request_id}").status_code == 404

    first = post(alice, f"/api/apps/{deployed}/approve", {"request_id": request_id, "approved": False, "message": "no"})
    assert first.status_code == 200
    assert first.json()["data"] == {
        "request_id": request_id, "approved": False, "payload_received": True, "status": "denied",
    }  # fmt: skip
    second = post(alice, f"/api/apps/{deployed}/approve", {"request_id": request_id, "approved": True})
    assert second.status_code == 409 and second.json()["error_code"] == "CONFLICT"
    assert "already denied" in second.json()["error"]
    assert alice.get(f"/api/apps/{deployed}/approvals").json()["data"]["pending"] == []

    detail = alice.get(f"/api/apps/{deployed}/approvals/{request_id}").json()["data"]
    assert (detail["status"], detail["approved"], detail["decision_message"]) == ("denied", False, "no")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"approved": True}, "request_id"),
        ({"request_id": "req-x"}, "approved"),
        ({"request_id": "req-x", "approved": "yes"}, "approved"),
        ({"request_id": "req-x", "approved": 1}, "approved"),
        ({"request_id": 5, "approved": True}, "request_id"),
        ("[]", "JSON object"),
        ("{bad json", "Malformed"),
    ],
)
def test_http_approve_bad_input_is_400(deployed, alice, body, needle):
    response = post(alice, f"/api/apps/{deployed}/approve", body)
    assert response.status_code == 400 and response.json()["error_code"] == "VALIDATION_ERROR"
    assert needle in response.json()["error"]


@pytest.mark.django_db
def test_http_unknown_app_and_scopes(deployed, alice):
    assert alice.get("/api/apps/ghost/approvals").status_code == 404
    assert post(alice, "/api/apps/ghost/approve", {"request_id": "req-x", "approved": True}).status_code == 404
    viewer = client_for("alice", ["apps:read"])
    assert viewer.get(f"/api/apps/{deployed}/approvals").status_code == 200
    response = post(viewer, f"/api/apps/{deployed}/approve", {"request_id": "req-x", "approved": True})
    assert response.status_code == 403 and "apps:run" in response.json()["error"]


@pytest.mark.django_db
def test_denied_direct_call_records_why(deployed, alice, django_capture_on_commit_callbacks):
    request_id = post(alice, f"/api/apps/{deployed}/tools/shell.run/execute", {"params": {"command": "true"}}).json()[
        "data"
    ]["request_id"]
    with django_capture_on_commit_callbacks(execute=True):
        post(alice, f"/api/apps/{deployed}/approve", {"request_id": request_id, "approved": False, "message": "nope"})
    result = alice.get(f"/api/apps/{deployed}/approvals/{request_id}").json()["data"]["result"]
    assert result == {"status": "denied", "success": False, "data": None, "error": "denied: nope"}


# -- a real worker runs the approved direct call ---------------------------------------------------


@pytest.fixture
def worker(tmp_path):
    hostname = f"apprtest-{os.getpid()}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "digitorn_site.settings",
        "DIGITORN_DATA_DIR": str(settings.DATA_DIR),
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
    }
    log_path = tmp_path / "worker.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it for its lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "digitorn_site", "worker", "--pool", "solo", "--hostname",
         f"{hostname}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    yield proc, log_path
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    log.close()


@pytest.mark.django_db(transaction=True)
def test_approved_direct_call_runs_on_a_worker_exactly_once(tmp_path, worker):
    ws = tmp_path / "ws"
    ws.mkdir()
    apps_services.app_deploy(text=json.dumps(manifest(ws)))
    admin = admin_client()
    response = post(admin, "/api/apps/appr/tools/shell.run/execute", {"params": {"command": "echo run >> log.txt; echo done"}})
    assert response.status_code == 202
    request_id = response.json()["data"]["request_id"]
    assert not (ws / "log.txt").exists()

    assert post(admin, "/api/apps/appr/approve", {"request_id": request_id, "approved": True}).status_code == 200
    proc, log_path = worker
    result = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        result = admin.get(f"/api/apps/appr/approvals/{request_id}").json()["data"]["result"]
        if result and result.get("status") != "running":
            break
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.2)
    assert result is not None and result["status"] == "ok", (result, log_path.read_text()[-3000:])
    assert result["success"] is True and result["data"]["stdout"] == "done\n"
    assert (ws / "log.txt").read_text() == "run\n"

    # A redelivered message finds the call claimed and runs nothing.
    from tooling.services import direct_call_run

    assert direct_call_run(request_id=request_id) is None
    assert (ws / "log.txt").read_text() == "run\n"
