"""Discovery and direct-execution endpoints over HTTP (Django test client, real deploys, real tools)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.test import Client

from approvals.models import ApprovalRequest
from apps_registry import services as apps_services
from tests.helpers import admin_client, assert_envelope_error, client_for, make_workspace, scripted_app
from tooling.models import ToolExecution

SECRET = "tok-5ecret-value-9876"

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("admin_key")]


def manifest(app_id: str, workspace: Path, capabilities: dict | None = None) -> dict:
    return scripted_app(app_id, {
        "filesystem": {"workspace": str(workspace)},
        "shell": {"workspace": str(workspace), "env": {"TOKEN": "{{secret.API_TOKEN}}"}},
        "memory": {},
    }, capabilities=capabilities)


GATED = {
    "default_policy": "auto",
    "grant": ["filesystem", "memory"],
    "deny": ["filesystem.delete"],
    "approve": [{"module": "shell", "actions": ["run"], "reason": "commands change the machine"}],
}


@pytest.fixture
def client() -> Client:
    return admin_client()


@pytest.fixture
def ws(tmp_path) -> Path:
    return make_workspace(tmp_path, {"README.md": "# project\n", "src/main.py": "print('hi')\n"})


@pytest.fixture
def dev_app(ws, deployed_app) -> str:
    deployed_app(manifest("devapp", ws))
    apps_services.secret_set(app_id="devapp", key="API_TOKEN", value=SECRET)
    return "devapp"


@pytest.fixture
def gated_app(ws, deployed_app) -> str:
    deployed_app(manifest("gated", ws, GATED))
    apps_services.secret_set(app_id="gated", key="API_TOKEN", value=SECRET)
    return "gated"


def execute(client: Client, app_id: str, tool: str, body) -> object:
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(f"/api/apps/{app_id}/tools/{tool}/execute", data=data, content_type="application/json")


# -- search --------------------------------------------------------------------------------------


def test_search_ranks_tools_with_relevance(client, dev_app):
    response = client.get(f"/api/apps/{dev_app}/tools/search", {"query": "read file", "max_results": 3})
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["query"] == "read file" and data["mode"] in ("hybrid", "keyword")
    assert data["count"] == len(data["tools"]) <= 3
    assert data["tools"][0]["name"] == "filesystem.read"
    assert set(data["tools"][0]) == {"name", "description", "relevance", "risk_level", "tags", "params_summary", "parameters"}
    assert data["tools"][0]["params_summary"].startswith("path: str")
    scores = [t["relevance"] for t in data["tools"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


@pytest.mark.parametrize("params", [{}, {"query": ""}, {"query": "   "}])
def test_search_empty_query_is_an_empty_answer(client, dev_app, params):
    # The original's answer (clients probe with an empty search box), not a 400.
    response = client.get(f"/api/apps/{dev_app}/tools/search", params)
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["tools"] == [] and data["count"] == 0 and data["query"] == params.get("query", "")


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"query": "read", "max_results": 0}, "max_results"),
        ({"query": "read", "max_results": 51}, "max_results"),
        ({"query": "read", "max_results": "lots"}, "max_results"),
    ],
)
def test_search_bad_input_is_400(client, dev_app, params, needle):
    message = assert_envelope_error(client.get(f"/api/apps/{dev_app}/tools/search", params), 400, "VALIDATION_ERROR")["error"]
    assert needle in message


def test_search_never_shows_blocked_tools(client, gated_app):
    data = client.get(f"/api/apps/{gated_app}/tools/search", {"query": "delete remove file", "max_results": 50}).json()["data"]
    assert "filesystem.delete" not in [t["name"] for t in data["tools"]]


# -- categories, tool schema, index --------------------------------------------------------------


def test_categories_and_category_pages(client, gated_app):
    data = client.get(f"/api/apps/{gated_app}/tools/categories").json()["data"]
    assert [c["id"] for c in data["categories"]] == ["filesystem", "shell", "memory"]
    fs = data["categories"][0]
    assert set(fs) == {"id", "summary", "tool_count"}
    assert fs["tool_count"] == 10 and fs["summary"]  # 11 actions, delete denied
    assert data["total_categories"] == 3 and data["total_tools"] == 10 + 1 + 6  # memory: 6 actions

    page = client.get(f"/api/apps/{gated_app}/tools/categories/filesystem").json()["data"]
    assert page["category"] == "filesystem" and page["page"] == 1 and page["total_pages"] == 1 and page["summary"]
    assert page["total_tools"] == 10 and "filesystem.delete" not in [t["name"] for t in page["tools"]]
    assert set(page["tools"][0]) == {"name", "description", "risk_level", "tags"}

    assert "1 page" in assert_envelope_error(
        client.get(f"/api/apps/{gated_app}/tools/categories/filesystem", {"page": 2}), 404, "RESOURCE_NOT_FOUND"
    )["error"]
    assert "page" in assert_envelope_error(
        client.get(f"/api/apps/{gated_app}/tools/categories/filesystem", {"page": 0}), 400, "VALIDATION_ERROR"
    )["error"]
    assert "Did you mean 'filesystem'" in assert_envelope_error(
        client.get(f"/api/apps/{gated_app}/tools/categories/filesytem"), 404, "RESOURCE_NOT_FOUND"
    )["error"]


def test_tool_schema_with_policy(client, gated_app):
    data = client.get(f"/api/apps/{gated_app}/tools/filesystem.read").json()["data"]
    assert data["name"] == "filesystem.read" and data["module"] == "filesystem"
    assert data["parameters"]["required"] == ["path"] and data["side_effects"] == ["read_only"]
    assert "cat" in data["aliases"] and data["risk_level"] == "low" and data["policy"] == "auto"
    assert data["irreversible"] is False and data["examples"] == []
    shell = client.get(f"/api/apps/{gated_app}/tools/shell__run").json()["data"]
    assert (shell["name"], shell["policy"], shell["risk_level"]) == ("shell.run", "approve", "high")
    assert "blocked" in assert_envelope_error(client.get(f"/api/apps/{gated_app}/tools/filesystem.delete"), 404, "RESOURCE_NOT_FOUND")["error"]
    assert "Did you mean 'filesystem.read'" in assert_envelope_error(
        client.get(f"/api/apps/{gated_app}/tools/filesystem.raed"), 404, "RESOURCE_NOT_FOUND"
    )["error"]


def test_index(client, gated_app):
    data = client.get(f"/api/apps/{gated_app}/index").json()["data"]
    assert data["total_tools"] == 17 and data["total_categories"] == 3
    tools = [t for c in data["categories"] for t in c["tools"]]
    assert len(tools) == 17 and "filesystem.delete" not in [t["name"] for t in tools]
    assert {"name", "params_schema", "side_effects", "policy"} <= set(tools[0]) and "parameters" not in tools[0]
    assert tools[0]["params_schema"]["type"] == "object"
    assert data["tool_injection_mode"] == "direct"
    assert set(data["categories"][0]) == {"id", "summary", "tool_count", "tools"}
    # The deploy summary's counts come from the same index.
    summary = client.get(f"/api/apps/{gated_app}").json()["data"]
    assert (summary["total_tools"], summary["total_categories"]) == (17, 3)


def test_unknown_app_is_404_everywhere(client):
    for url in ("/tools/search?query=x", "/tools/categories", "/tools/categories/filesystem", "/tools/filesystem.read", "/index"):
        assert "not deployed" in assert_envelope_error(client.get(f"/api/apps/ghost{url}"), 404, "RESOURCE_NOT_FOUND")["error"]
    assert "not deployed" in assert_envelope_error(execute(client, "ghost", "filesystem.read", {"params": {}}), 404, "RESOURCE_NOT_FOUND")["error"]


# -- direct execution ----------------------------------------------------------------------------


def test_execute_auto_runs_and_answers_the_tool_result(client, dev_app, ws):
    response = execute(client, dev_app, "filesystem.read", {"params": {"path": "README.md"}})
    assert response.status_code == 200
    body = response.json()
    # The tool's result is the envelope: success/error at the top, data = the tool's data.
    assert body["success"] is True and body["error"] is None
    assert body["data"]["content"] == "# project\n"
    find = execute(client, dev_app, "filesystem.find", {"params": {"pattern": "*.py", "path": "."}}).json()["data"]
    assert find["files"] == ["src/main.py"]
    row = ToolExecution.objects.filter(tool="filesystem.read").get()
    assert (row.caller, row.principal, row.outcome, row.app_id) == ("api", "admin", "ok", dev_app)


def test_execute_tool_failure_is_200_with_success_false(client, dev_app):
    response = execute(client, dev_app, "filesystem.read", {"params": {"path": "missing.txt"}})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False and "does not exist" in body["error"] and body["error_code"] == "TOOL_FAILED"


def test_execute_masks_secrets(client, dev_app):
    result = execute(client, dev_app, "shell.run", {"params": {"command": "echo token=$TOKEN"}}).json()
    assert result["success"] is True and result["data"]["stdout"] == "token=***\n"
    assert SECRET not in json.dumps(result)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"params": {}}, "params.path: 'path' is a required property"),
        ({"params": {"path": 5}}, "params.path"),
        ({"params": "README.md"}, "params"),
        ("not json", "Malformed"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_execute_bad_input_is_400(client, dev_app, body, needle):
    assert needle in assert_envelope_error(execute(client, dev_app, "filesystem.read", body), 400, "VALIDATION_ERROR")["error"]


def test_execute_empty_body_means_no_params(client, dev_app):
    response = client.post(f"/api/apps/{dev_app}/tools/filesystem.ls/execute")
    assert response.status_code == 200 and response.json()["success"] is True


def test_execute_honours_deny_grant_and_approve(client, gated_app, ws):
    # grant → runs
    assert execute(client, gated_app, "filesystem.write", {"params": {"path": "w.txt", "content": "x"}}).status_code == 200
    assert (ws / "w.txt").read_text() == "x"
    # deny → 403, nothing deleted
    message = assert_envelope_error(execute(client, gated_app, "filesystem.delete", {"params": {"path": "w.txt"}}), 403, "FORBIDDEN")["error"]
    assert "blocked by policy" in message and (ws / "w.txt").exists()
    # approve → 202 with a request id, nothing ran yet
    response = execute(client, gated_app, "shell.run", {"params": {"command": "echo $TOKEN > ran.txt"}})
    assert response.status_code == 202
    data = response.json()["data"]
    assert data["status"] == "pending" and data["request_id"].startswith("req-")
    assert not (ws / "ran.txt").exists()
    request = ApprovalRequest.objects.get(request_id=data["request_id"])
    assert (request.origin, request.principal, request.tool_name) == ("direct", "admin", "shell.run")
    assert request.call_params == {"command": "echo $TOKEN > ran.txt"}


def test_execute_with_a_missing_secret_is_409(client, ws):
    apps_services.app_deploy(text=json.dumps(manifest("nosecret", ws)))
    assert "API_TOKEN" in assert_envelope_error(
        execute(client, "nosecret", "filesystem.ls", {"params": {}}), 409, "MISSING_SECRET"
    )["error"]


def test_unknown_tool_execute_is_404(client, dev_app):
    assert "Did you mean" in assert_envelope_error(execute(client, dev_app, "filesystem.reed", {"params": {}}), 404, "RESOURCE_NOT_FOUND")["error"]


def test_scopes(dev_app):
    viewer = client_for("viewer", ["apps:read"])
    assert viewer.get(f"/api/apps/{dev_app}/tools/categories").status_code == 200
    assert "apps:run" in assert_envelope_error(execute(viewer, dev_app, "filesystem.ls", {"params": {}}), 403, "FORBIDDEN")["error"]
    assert_envelope_error(Client().get(f"/api/apps/{dev_app}/index"), 401, "UNAUTHORIZED")
