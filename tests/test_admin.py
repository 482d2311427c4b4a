"""The operator admin, through Django's test client logged in as a superuser (real DB, real services)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest
from apps_registry import services as registry
from apps_registry.manifest.compiled import CompiledApp
from apps_registry.models import ApiKey, App, AppSecret
from conversations.models import Event, Message, Notification, Session, Turn
from digitorn_site import signals
from digitorn_site.api.auth import principal_for_key
from tooling.models import BackgroundTask, MemoryEntry, ToolExecution

pytestmark = pytest.mark.django_db

SECRET_PLAINTEXT = "adm1n-Pl41ntext-S3cret-value"

MANIFEST = """\
schema_version: 2
app: {app_id: opsdemo, name: Ops Demo, version: "2.0", description: "admin test app"}
runtime: {rate_limit_rpm: 30}
agents:
  - id: assistant
    name: Assistant
    brain: {provider: scripted, config: {rules: [{when: "", steps: [{say: "hello"}]}]}}
tools:
  modules:
    filesystem: {workspace: ./ws}
    shell: {env: {API_TOKEN: "{{secret.API_TOKEN}}"}}
  capabilities:
    default_policy: approve
    grant: [{module: filesystem, actions: [read, ls]}]
    approve: [{module: shell, reason: "runs commands"}]
"""


@pytest.fixture
def superuser():
    return get_user_model().objects.create_superuser("operator", "op@example.com", "correct-horse-battery")


@pytest.fixture
def web(superuser) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture
def app(tmp_path) -> App:
    manifest = tmp_path / "opsdemo.yaml"
    manifest.write_text(MANIFEST)
    (tmp_path / "ws").mkdir()
    deployed = registry.app_deploy(text=MANIFEST, source_path=str(manifest))
    registry.secret_set(app_id=deployed.app_id, key="API_TOKEN", value=SECRET_PLAINTEXT)
    return App.objects.get(pk=deployed.app_id)


@pytest.fixture
def approval(app) -> ApprovalRequest:
    from approvals.services import approval_request_create

    compiled = CompiledApp.from_dict(app.compiled)
    return approval_request_create(
        app=compiled,
        tool_name="shell.run",
        params={"command": "echo $API_TOKEN"},
        call_params={"command": "echo $API_TOKEN", "marker": "call-params-only-value"},
        risk_level="high",
        reason="runs commands",
        principal="admin",
        session_id=None,
        agent_id="assistant",
        origin="direct",
        origin_ref="",
    )


@pytest.fixture
def rows(app, approval) -> dict:
    """One row of every model the admin shows, so each change page has something to render."""
    session = Session.objects.create(app_id=app.app_id, session_id="sess-admin", principal="admin", last_seq=2)
    Message.objects.create(session=session, role="user", content="list files", correlation_id="c1")
    Message.objects.create(
        session=session,
        role="assistant",
        content="",
        tool_calls=[{"id": "call_0_0", "name": "filesystem.ls", "params": {"path": "."}}],
        correlation_id="c1",
    )
    Turn.objects.create(session=session, correlation_id="c1", content="list files", status="done")
    Event.objects.create(session=session, seq=1, type="tool_start", data={"id": "call_0_0", "name": "filesystem.ls"})
    Event.objects.create(session=session, seq=2, type="result", data={"content": "two files"})
    notification = Notification.objects.create(
        session=session, app_id=app.app_id, task_id="task-n1", status="completed", summary={"tool_name": "filesystem.ls"}
    )
    task = BackgroundTask.objects.create(
        task_id="task-admin-1", app_id=app.app_id, principal="admin", tool="filesystem.ls", params={"path": "."}
    )
    execution = ToolExecution.objects.create(app_id=app.app_id, tool="filesystem.ls", caller="api", outcome="ok")
    memory = MemoryEntry.objects.create(app_id=app.app_id, session_id="sess-admin", key="k", value="v")
    key, _raw = registry.api_key_create(name="ci", owner="ci", scopes=["apps:read"])
    return {
        App: app,
        AppSecret: AppSecret.objects.get(app=app, key="API_TOKEN"),
        ApiKey: key,
        Session: session,
        Notification: notification,
        BackgroundTask: task,
        ToolExecution: execution,
        MemoryEntry: memory,
        ApprovalRequest: approval,
    }


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def test_createsuperuser_flow_then_login(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "another-long-passphrase")
    call_command("createsuperuser", "--noinput", username="root", email="root@example.com", verbosity=0)
    client = Client()
    response = client.post(
        reverse("admin:login"),
        {"username": "root", "password": "another-long-passphrase", "next": "/admin/"},
    )
    assert response.status_code == 302 and response["Location"] == "/admin/"
    index = client.get("/admin/")
    assert index.status_code == 200
    for label in ("Apps", "API keys", "App secrets", "Sessions", "Background tasks", "Approval requests"):
        assert label.encode() in index.content


def test_every_changelist_and_change_page_renders(web, rows):
    covered = {model for model in admin.site._registry if model._meta.app_label in {
        "apps_registry", "tooling", "approvals", "conversations"}}
    assert covered == set(rows), f"admin registrations without a test row: {covered ^ set(rows)}"
    for model, obj in rows.items():
        listing = web.get(admin_url(model, "changelist"))
        assert listing.status_code == 200, (model, listing.status_code)
        change = web.get(admin_url(model, "change", obj.pk))
        assert change.status_code == 200, (model, change.status_code)


def test_app_pages_show_summary_policy_and_tool_counts(web, app):
    listing = web.get(admin_url(App, "changelist")).content.decode()
    assert "opsdemo" in listing
    # max_risk_level defaults to medium, the original's default (was high in this project's dialect).
    assert "default approve, max risk medium" in listing
    assert f">{app.total_tools}<" in listing and app.total_tools > 0
    page = web.get(admin_url(App, "change", app.pk)).content.decode()
    assert "runs commands" in page  # the approve rule's reason comes from the manifest source
    assert "shell" in page and "scripted" in page
    assert "effective rpm" in page.lower()


def test_quota_edit_goes_through_the_service_and_rejects_bad_values(web, app):
    from apps_registry.selectors import app_rate_limit

    assert app_rate_limit(app_id=app.app_id) == 30  # the manifest's value
    url = admin_url(App, "change", app.pk)
    response = web.post(url, {"rate_limit_rpm": "120", "secrets-TOTAL_FORMS": "0", "secrets-INITIAL_FORMS": "0"})
    assert response.status_code == 302, response.content[:2000]
    assert app_rate_limit(app_id=app.app_id) == 120

    bad = web.post(url, {"rate_limit_rpm": "0", "secrets-TOTAL_FORMS": "0", "secrets-INITIAL_FORMS": "0"})
    assert bad.status_code == 200
    assert b"greater than or equal to 1" in bad.content
    assert app_rate_limit(app_id=app.app_id) == 120

    reset = web.post(url, {"rate_limit_rpm": "", "secrets-TOTAL_FORMS": "0", "secrets-INITIAL_FORMS": "0"})
    assert reset.status_code == 302
    assert App.objects.get(pk=app.pk).rate_limit_rpm is None
    assert app_rate_limit(app_id=app.app_id) == 30


def test_redeploy_action_recompiles_from_the_stored_yaml(web, app):
    tools = app.total_tools
    App.objects.filter(pk=app.pk).update(total_tools=0, compiled={**app.compiled, "description": "stale"})
    response = web.post(
        admin_url(App, "changelist"), {"action": "redeploy", "_selected_action": [app.pk]}, follow=True
    )
    assert response.status_code == 200
    assert b"Redeployed: opsdemo." in response.content
    fresh = App.objects.get(pk=app.pk)
    assert fresh.total_tools == tools
    assert fresh.compiled["description"] == "admin test app"
    assert fresh.deployed_at > app.deployed_at


def test_approve_action_goes_through_approval_decide(web, approval, django_capture_on_commit_callbacks):
    decided: list[dict] = []

    def receiver(sender, **kwargs):
        decided.append(kwargs)

    signals.approval_decided.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = web.post(
                admin_url(ApprovalRequest, "changelist"),
                {"action": "approve", "_selected_action": [approval.pk]},
                follow=True,
            )
    finally:
        signals.approval_decided.disconnect(receiver)
    assert response.status_code == 200
    assert f"Approved: {approval.request_id}.".encode() in response.content
    approval.refresh_from_db()
    assert approval.status == ApprovalRequest.Status.APPROVED
    assert approval.decided_at is not None
    assert "operator" in approval.decision_message
    # Only the service sends this signal: the admin did not just flip the status column.
    assert [(d["request_id"], d["approved"]) for d in decided] == [(approval.request_id, True)]

    # Deciding twice is refused by the service and reported, not a crash.
    again = web.post(
        admin_url(ApprovalRequest, "changelist"), {"action": "deny", "_selected_action": [approval.pk]}, follow=True
    )
    assert again.status_code == 200
    assert f"Not denied: {approval.request_id}: ".encode() in again.content
    approval.refresh_from_db()
    assert approval.status == ApprovalRequest.Status.APPROVED


def test_deny_action_and_call_params_never_rendered(web, approval):
    page = web.get(admin_url(ApprovalRequest, "change", approval.pk))
    assert b"echo $API_TOKEN" in page.content  # params are shown
    assert b"call-params-only-value" not in page.content
    response = web.post(
        admin_url(ApprovalRequest, "changelist"), {"action": "deny", "_selected_action": [approval.pk]}, follow=True
    )
    assert response.status_code == 200
    approval.refresh_from_db()
    assert approval.status == ApprovalRequest.Status.DENIED


def test_cancel_action_cancels_a_queued_task(web, rows):
    task = rows[BackgroundTask]
    response = web.post(
        admin_url(BackgroundTask, "changelist"), {"action": "cancel", "_selected_action": [task.pk]}, follow=True
    )
    assert response.status_code == 200
    task.refresh_from_db()
    assert task.status == BackgroundTask.Status.CANCELLED
    assert task.finished_at is not None


def test_secret_admin_never_renders_plaintext_or_ciphertext(web, rows):
    secret = rows[AppSecret]
    assert secret.ciphertext and SECRET_PLAINTEXT not in secret.ciphertext
    pages = [
        admin_url(AppSecret, "changelist"),
        admin_url(AppSecret, "change", secret.pk),
        admin_url(AppSecret, "add"),
        admin_url(AppSecret, "delete", secret.pk),
        admin_url(App, "change", secret.app_id),
        admin_url(App, "changelist"),
    ]
    for url in pages:
        body = web.get(url).content.decode()
        assert SECRET_PLAINTEXT not in body, url
        assert secret.ciphertext not in body, url
        assert secret.ciphertext[:24] not in body, url
    listing = web.get(admin_url(AppSecret, "changelist")).content.decode()
    assert "API_TOKEN" in listing


def test_secret_set_and_delete_through_the_admin(web, app):
    from apps_registry.selectors import secret_values

    response = web.post(
        admin_url(AppSecret, "add"), {"app": app.pk, "key": "OTHER_TOKEN", "value": "second-secret-value"}
    )
    assert response.status_code == 302, response.content[:2000]
    assert secret_values(app_id=app.app_id)["OTHER_TOKEN"] == "second-secret-value"
    secret = AppSecret.objects.get(app=app, key="OTHER_TOKEN")
    page = web.get(admin_url(AppSecret, "change", secret.pk)).content.decode()
    assert "second-secret-value" not in page

    bad = web.post(admin_url(AppSecret, "add"), {"app": app.pk, "key": "bad key!", "value": "x"})
    assert bad.status_code == 200 and b"letters, digits and underscores" in bad.content
    assert not AppSecret.objects.filter(app=app, key="bad key!").exists()

    gone = web.post(admin_url(AppSecret, "delete", secret.pk), {"post": "yes"})
    assert gone.status_code == 302
    assert "OTHER_TOKEN" not in secret_values(app_id=app.app_id)


def test_api_key_create_shows_the_key_once_and_revoke_disables_it(web):
    response = web.post(
        admin_url(ApiKey, "add"), {"name": "browser", "owner": "alice", "scopes": ["apps:read", "apps:run"]}, follow=True
    )
    assert response.status_code == 200
    match = re.search(rb"(dg_[0-9a-f]{8}_[A-Za-z0-9_\-]+)", response.content)
    assert match, response.content[:3000]
    raw = match.group(1).decode()
    key = ApiKey.objects.get(name="browser")
    assert key.owner == "alice" and key.scopes == ["apps:read", "apps:run"]
    assert raw not in key.key_hash and key.key_hash != raw
    principal = principal_for_key(raw)
    assert principal is not None and principal.name == "alice"

    # Shown once: the change page and a reload of the listing never carry it again.
    assert raw.encode() not in web.get(admin_url(ApiKey, "change", key.pk)).content
    assert raw.encode() not in web.get(admin_url(ApiKey, "changelist")).content

    revoked = web.post(admin_url(ApiKey, "changelist"), {"action": "revoke", "_selected_action": [key.pk]}, follow=True)
    assert b"Revoked: browser." in revoked.content
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert principal_for_key(raw) is None


def test_session_page_shows_messages_and_events_read_only(web, rows):
    session = rows[Session]
    page = web.get(admin_url(Session, "change", session.pk)).content.decode()
    assert "list files" in page
    assert "filesystem.ls" in page
    assert "two files" in page
    assert 'name="_save"' not in page  # view-only
    add = web.get(admin_url(Session, "add"))
    assert add.status_code == 403


def test_app_delete_undeploys_through_the_service(web, app, django_capture_on_commit_callbacks):
    undeployed: list[str] = []

    def receiver(sender, **kwargs):
        undeployed.append(kwargs["app_id"])

    signals.app_undeployed.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = web.post(admin_url(App, "delete", app.pk), {"post": "yes"})
    finally:
        signals.app_undeployed.disconnect(receiver)
    assert response.status_code == 302
    assert not App.objects.filter(pk=app.pk).exists()
    assert not AppSecret.objects.filter(app_id=app.pk).exists()
    assert undeployed == ["opsdemo"]


def test_expired_approval_cannot_be_approved(web, approval):
    ApprovalRequest.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=5))
    response = web.post(
        admin_url(ApprovalRequest, "changelist"), {"action": "approve", "_selected_action": [approval.pk]}, follow=True
    )
    assert response.status_code == 200
    approval.refresh_from_db()
    assert approval.status != ApprovalRequest.Status.APPROVED
