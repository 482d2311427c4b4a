"""App lifecycle endpoints, auth and bad input, through Django's test client (real DB, real compiler)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.test import Client

from apps_registry import services
from apps_registry.models import App, AppSecret
from tests.helpers import ADMIN_KEY, admin_client, assert_envelope_error, client_for, post_json

MANIFEST = """\
schema_version: 2
app: {app_id: demo, name: Demo App, version: "1.2"}
agents:
  - id: assistant
    brain: {provider: scripted, config: {rules: [{when: "", steps: [{say: "hello"}]}]}}
tools:
  modules:
    filesystem: {workspace: ./ws}
    shell: {}
"""

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("admin_key")]


@pytest.fixture
def client() -> Client:
    return admin_client()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "demo.yaml"
    path.write_text(MANIFEST)
    return path


def test_deploy_list_get_undeploy(client, manifest):
    response = post_json(client, "/api/apps/deploy", {"yaml_path": str(manifest)})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True and body["error"] is None
    summary = body["data"]
    assert set(summary) == {
        "app_id", "name", "version", "mode", "agents", "modules", "total_tools", "total_categories", "deployed_at",
        "workspace_mode", "greeting", "warnings",
    }
    assert summary["app_id"] == "demo"
    assert summary["name"] == "Demo App"
    assert summary["version"] == "1.2"
    assert summary["mode"] == "conversation"
    assert summary["agents"] == ["assistant"]
    assert summary["modules"] == ["filesystem", "shell"]
    assert summary["total_categories"] == 2
    assert summary["total_tools"] >= 12
    assert isinstance(summary["deployed_at"], float)

    listed = client.get("/api/apps/").json()["data"]
    assert [app["app_id"] for app in listed] == ["demo"]
    assert listed[0] == summary

    detail = client.get("/api/apps/demo").json()["data"]
    assert detail["app_id"] == "demo"
    # Relative workspaces are anchored at the manifest's folder.
    stored = App.objects.get(pk="demo").compiled
    assert stored["modules"]["filesystem"]["workspace"] == str((manifest.parent / "ws").resolve())

    response = client.delete("/api/apps/demo")
    assert response.status_code == 200
    undeployed = response.json()["data"]
    assert (undeployed["app_id"], undeployed["undeployed"], undeployed["deleted"]) == ("demo", True, True)
    assert undeployed["message"]
    assert not App.objects.filter(pk="demo").exists()
    assert_envelope_error(client.get("/api/apps/demo"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope_error(client.delete("/api/apps/demo"), 404, "RESOURCE_NOT_FOUND")


def test_redeploy_needs_force_and_keeps_secrets(client, manifest):
    assert post_json(client, "/api/apps/deploy", {"yaml_path": str(manifest)}).status_code == 200
    services.secret_set(app_id="demo", key="TOKEN", value="s3cr3t-value")
    body = assert_envelope_error(post_json(client, "/api/apps/deploy", {"yaml_path": str(manifest)}), 409, "CONFLICT")
    assert "force" in body["error"]
    manifest.write_text(MANIFEST.replace('"1.2"', '"1.3"'))
    response = post_json(client, "/api/apps/deploy", {"yaml_path": str(manifest), "force": True})
    assert response.status_code == 200
    assert response.json()["data"]["version"] == "1.3"
    assert AppSecret.objects.filter(app_id="demo", key="TOKEN").exists()


def test_upload_deploy_and_limits(client, tmp_path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("demo.yaml", MANIFEST.encode(), content_type="application/x-yaml")
    response = client.post("/api/apps/deploy/upload", {"file": upload})
    assert response.status_code == 200, response.content
    assert response.json()["data"]["app_id"] == "demo"

    big = SimpleUploadedFile("big.yaml", b"a: " + b"x" * (5 * 1024 * 1024), content_type="application/x-yaml")
    assert_envelope_error(client.post("/api/apps/deploy/upload", {"file": big}), 413, "PAYLOAD_TOO_LARGE")
    assert_envelope_error(client.post("/api/apps/deploy/upload", {}), 400, "VALIDATION_ERROR")
    assert_envelope_error(post_json(client, "/api/apps/deploy/upload", {"file": "x"}), 415, "UNSUPPORTED_MEDIA_TYPE")
    # The failed uploads changed nothing.
    assert list(App.objects.values_list("app_id", flat=True)) == ["demo"]


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        ("{not json", 400, "VALIDATION_ERROR", "Malformed"),
        ("[1, 2]", 400, "VALIDATION_ERROR", "JSON object"),
        ('"just a string"', 400, "VALIDATION_ERROR", "JSON object"),
        ({}, 400, "VALIDATION_ERROR", "yaml_path"),
        ({"yaml_path": None}, 400, "VALIDATION_ERROR", "yaml_path"),
        ({"yaml_path": 42}, 400, "VALIDATION_ERROR", "yaml_path"),
        ({"yaml_path": ["a"]}, 400, "VALIDATION_ERROR", "yaml_path"),
        ({"yaml_path": "relative/app.yaml"}, 400, "VALIDATION_ERROR", "absolute"),
        ({"yaml_path": "/nonexistent/app.yaml"}, 404, "RESOURCE_NOT_FOUND", "no file"),
        ({"yaml_path": "/etc/passwd"}, 400, "VALIDATION_ERROR", ".yaml"),
        ({"yaml_path": "/tmp/x.yaml", "force": "yes"}, 400, "VALIDATION_ERROR", "force"),
    ],
)
def test_deploy_bad_input(client, body, status, code, needle):
    body = assert_envelope_error(post_json(client, "/api/apps/deploy", body), status, code)
    assert needle in body["error"]
    assert App.objects.count() == 0


def test_deploy_directory_symlink_and_data_dir(client, tmp_path, manifest, settings):
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    assert "directory" in assert_envelope_error(
        post_json(client, "/api/apps/deploy", {"yaml_path": str(folder)}), 400, "VALIDATION_ERROR"
    )["error"]
    link = tmp_path / "link.yaml"
    link.symlink_to(manifest)
    assert "symbolic link" in assert_envelope_error(
        post_json(client, "/api/apps/deploy", {"yaml_path": str(link)}), 400, "VALIDATION_ERROR"
    )["error"]
    inside = Path(settings.DATA_DIR) / "sneaky.yaml"
    inside.write_text(MANIFEST)
    try:
        assert_envelope_error(post_json(client, "/api/apps/deploy", {"yaml_path": str(inside)}), 400, "VALIDATION_ERROR")
    finally:
        inside.unlink()
    assert App.objects.count() == 0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- a\n- b\n", "mapping"),
        ("app: [unclosed\n", "line"),
        ("a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
         "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
         ""),
        (MANIFEST.replace("temperature", "x").replace("app: {", "app: {colour: red, "), "colour"),
    ],
)
def test_deploy_bad_yaml(client, tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    body = assert_envelope_error(post_json(client, "/api/apps/deploy", {"yaml_path": str(path)}), 400, "INVALID_MANIFEST")
    assert needle in body["error"]
    assert body["details"]["errors"]
    assert App.objects.count() == 0


def test_oversized_json_body_is_413(client):
    body = json.dumps({"yaml_path": "/x.yaml", "pad": "x" * (2 * 1024 * 1024)})
    assert_envelope_error(post_json(client, "/api/apps/deploy", body), 413, "PAYLOAD_TOO_LARGE")


def test_json_404_and_405(client):
    assert_envelope_error(client.get("/api/nope"), 404, "RESOURCE_NOT_FOUND")
    assert_envelope_error(client.get("/api/apps/deploy"), 405, "METHOD_NOT_ALLOWED")
    assert_envelope_error(client.put("/api/apps/"), 405, "METHOD_NOT_ALLOWED")


def test_auth_missing_wrong_and_scopes(manifest):
    anonymous = Client()
    assert_envelope_error(anonymous.get("/api/apps/"), 401, "UNAUTHORIZED")
    assert_envelope_error(Client(HTTP_AUTHORIZATION="Bearer wrong").get("/api/apps/"), 401, "UNAUTHORIZED")
    assert_envelope_error(Client(HTTP_X_API_KEY="wrong").get("/api/apps/"), 401, "UNAUTHORIZED")
    # ?token= is for SSE streams only.
    assert_envelope_error(anonymous.get(f"/api/apps/?token={ADMIN_KEY}"), 401, "UNAUTHORIZED")
    assert Client(HTTP_X_API_KEY=ADMIN_KEY).get("/api/apps/").status_code == 200

    reader_client = client_for("reader", ["apps:read"])
    assert reader_client.get("/api/apps/").status_code == 200
    body = assert_envelope_error(post_json(reader_client, "/api/apps/deploy", {"yaml_path": str(manifest)}), 403, "FORBIDDEN")
    assert "apps:deploy" in body["error"]
    assert App.objects.count() == 0

    key, deployer = services.api_key_create(name="ci", scopes=["apps:read", "apps:deploy"])
    deployer_client = Client(HTTP_AUTHORIZATION=f"Bearer {deployer}")
    assert post_json(deployer_client, "/api/apps/deploy", {"yaml_path": str(manifest)}).status_code == 200
    assert_envelope_error(deployer_client.put("/api/apps/demo/secrets/K", data='{"value": "v"}',
                                     content_type="application/json"), 403, "FORBIDDEN")
    services.api_key_revoke(prefix=key.prefix)
    assert_envelope_error(deployer_client.get("/api/apps/"), 401, "UNAUTHORIZED")


def test_health_is_public(client):
    response = Client().get("/api/health")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["database"]["ok"] is True
    assert data["version"]


def test_secrets_endpoints(client, manifest):
    assert post_json(client, "/api/apps/deploy", {"yaml_path": str(manifest)}).status_code == 200
    put = client.put("/api/apps/demo/secrets/API_KEY", data='{"value": "sk-live-abc123"}', content_type="application/json")
    assert put.status_code == 200, put.content
    assert "sk-live-abc123" not in put.content.decode()
    assert put.json()["data"]["status"] == "set" and put.json()["data"]["reloaded"] is True
    assert client.get("/api/apps/demo/secrets").json()["data"] == {"app_id": "demo", "keys": ["API_KEY"]}
    assert client.get("/api/apps/demo/secrets/API_KEY").json()["data"] == {
        "app_id": "demo", "key": "API_KEY", "exists": True,
    }
    assert client.get("/api/apps/demo/secrets/OTHER").json()["data"]["exists"] is False
    row = AppSecret.objects.get(app_id="demo", key="API_KEY")
    assert "sk-live-abc123" not in row.ciphertext
    assert_envelope_error(client.put("/api/apps/demo/secrets/bad-name", data='{"value": "v"}',
                            content_type="application/json"), 400, "VALIDATION_ERROR")
    assert_envelope_error(client.put("/api/apps/demo/secrets/K", data='{"value": 5}',
                            content_type="application/json"), 400, "VALIDATION_ERROR")
    deleted = client.delete("/api/apps/demo/secrets/API_KEY")
    assert deleted.status_code == 200 and deleted.json()["data"]["status"] == "deleted"
    assert_envelope_error(client.delete("/api/apps/demo/secrets/API_KEY"), 404, "RESOURCE_NOT_FOUND")


def test_secrets_before_deploy_are_used_by_the_deploy(client, tmp_path):
    # The original's order: set the keys, then deploy.
    put = client.put("/api/apps/demo/secrets/UPSTREAM_TOKEN", data='{"value": "tok-early"}',
                     content_type="application/json")
    assert put.status_code == 200, put.content
    assert put.json()["data"]["status"] == "set" and put.json()["data"]["reloaded"] is False
    assert client.get("/api/apps/demo/secrets").json()["data"] == {"app_id": "demo", "keys": ["UPSTREAM_TOKEN"]}
    path = tmp_path / "s.yaml"
    path.write_text(MANIFEST.replace("name: Demo App", 'name: Demo App, description: "{{secret.UPSTREAM_TOKEN}}"'))
    os.environ.pop("UPSTREAM_TOKEN", None)
    assert post_json(client, "/api/apps/deploy", {"yaml_path": str(path)}).status_code == 200
    assert client.get("/api/apps/demo").json()["data"]["missing_secrets"] == []
    from apps_registry.selectors import app_runtime

    assert app_runtime(app_id="demo").description == "tok-early"
    assert client.get("/api/apps/ghost/secrets").json()["data"] == {"app_id": "ghost", "keys": []}
    assert_envelope_error(client.delete("/api/apps/ghost/secrets/K"), 404, "RESOURCE_NOT_FOUND")


def test_missing_secret_listed_then_resolved(client, tmp_path):
    from apps_registry.selectors import app_runtime
    from digitorn_site.errors import MissingSecretError

    path = tmp_path / "s.yaml"
    path.write_text(MANIFEST.replace("name: Demo App", 'name: Demo App, description: "{{secret.UPSTREAM_TOKEN}}"'))
    os.environ.pop("UPSTREAM_TOKEN", None)
    response = post_json(client, "/api/apps/deploy", {"yaml_path": str(path)})
    assert response.status_code == 200, response.content
    assert client.get("/api/apps/demo").json()["data"]["missing_secrets"] == ["UPSTREAM_TOKEN"]
    with pytest.raises(MissingSecretError, match="UPSTREAM_TOKEN"):
        app_runtime(app_id="demo")
    services.secret_set(app_id="demo", key="UPSTREAM_TOKEN", value="tok-123")
    assert client.get("/api/apps/demo").json()["data"]["missing_secrets"] == []
    runtime = app_runtime(app_id="demo")
    assert runtime.description == "tok-123"
    assert "tok-123" in runtime.secret_values
    assert "tok-123" not in json.dumps(App.objects.get(pk="demo").compiled)
