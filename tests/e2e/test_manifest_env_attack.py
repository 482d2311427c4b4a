"""Issue #10 item 1, against a real daemon: an ``apps:deploy`` key must not become admin.

Before the fix, ``app: {name: "{{env.DIGITORN_API_KEY}}"}`` stored the daemon's admin key in the app
summary (readable by any ``apps:read`` key), and ``say: "{{secret.DIGITORN_API_KEY}}"`` replied with
it through the ``{{secret.X}}`` environment fallback. Now the daemon's own credentials are never
interpolated, only ``admin`` keys may deploy a manifest that reads the environment, and the secret
fallback follows the same rule; an admin app reading ``{{env.OPENAI_API_KEY}}`` keeps working.
"""

from __future__ import annotations

import json

import pytest
from conftest import bearer

pytestmark = pytest.mark.e2e

OPENAI_VALUE = "sk-daemon-openai-0123456789abcdef"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import start_daemon

    daemon = start_daemon(
        tmp_path_factory.mktemp("envattack"), workers=1, env={"OPENAI_API_KEY": OPENAI_VALUE}
    )
    result = daemon.cli(
        "apikey", "create", "--name", "mallory", "--scopes", "apps:read,apps:deploy,apps:run", "--json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    deployer = json.loads(result.stdout)["key"]
    try:
        yield daemon, deployer
    finally:
        daemon.stop()


def _manifest(tmp_path, app_id: str, name: str, say: str) -> str:
    path = tmp_path / f"{app_id}.yaml"
    path.write_text(
        f"app: {{app_id: {app_id}, name: \"{name}\"}}\n"
        "agents:\n  - id: bot\n    brain:\n      provider: scripted\n"
        f"      config: {{rules: [{{steps: [{{say: \"{say}\"}}]}}]}}\n"
    )
    return str(path)


def _leaks(daemon, text: str) -> bool:
    return daemon.key in text or OPENAI_VALUE in text


def test_env_in_the_app_name_is_refused_and_never_stored(setup, tmp_path):
    daemon, deployer = setup
    path = _manifest(tmp_path, "steal-name", "{{env.DIGITORN_API_KEY}}", "hi")
    response = daemon.client.post("/api/apps/deploy", json={"yaml_path": path}, headers=bearer(deployer))
    assert response.status_code == 403, response.text
    assert not _leaks(daemon, response.text)
    # Not even an admin may read the daemon's own credentials.
    response = daemon.client.post("/api/apps/deploy", json={"yaml_path": path})
    assert response.status_code == 400, response.text
    assert "daemon's own credentials" in response.text and not _leaks(daemon, response.text)
    listed = daemon.client.get("/api/apps/", headers=bearer(deployer))
    assert listed.status_code == 200 and not _leaks(daemon, listed.text)


@pytest.mark.parametrize("admin", [False, True])
def test_secret_fallback_never_reaches_the_daemon_key(setup, tmp_path, admin):
    daemon, deployer = setup
    app_id = f"steal-secret-{int(admin)}"
    path = _manifest(tmp_path, app_id, "x", "{{secret.DIGITORN_API_KEY}} {{secret.OPENAI_API_KEY}}")
    headers = {} if admin else bearer(deployer)
    response = daemon.client.post("/api/apps/deploy", json={"yaml_path": path}, headers=headers)
    assert response.status_code == 200, response.text
    chat = daemon.client.post(
        f"/api/apps/{app_id}/chat", json={"session_id": "s1", "message": "hi"}, headers=headers, timeout=60
    )
    assert not _leaks(daemon, chat.text), chat.text
    if not admin:
        # The environment is not the fallback of an app a non-admin key deployed: the turn ends
        # naming the secret to set.
        assert "needs the secret" in chat.text


def test_an_admin_app_reads_the_environment_and_the_value_stays_out_of_outputs(setup, tmp_path):
    daemon, _deployer = setup
    path = _manifest(tmp_path, "admin-env", "{{env.OPENAI_API_KEY}}", "key ends {{env.OPENAI_API_KEY ?? 'none'}}")
    response = daemon.client.post("/api/apps/deploy", json={"yaml_path": path})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["name"] == "{{env.OPENAI_API_KEY}}"
    assert not _leaks(daemon, daemon.client.get("/api/apps/admin-env").text)
    chat = daemon.client.post("/api/apps/admin-env/chat", json={"session_id": "s1", "message": "hi"}, timeout=60)
    assert chat.status_code == 200, chat.text
    # Resolved in memory for the admin's app (masking the final reply is the engine's output masking).
    assert "key ends" in chat.json()["data"]["content"]
    stored = daemon.client.get("/api/apps/admin-env").text
    assert OPENAI_VALUE not in stored
