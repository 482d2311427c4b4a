"""Schemathesis against the live daemon: every documented operation, hostile and valid inputs.

The daemon serves its OpenAPI schema at /api/schema/; schemathesis (the `st` CLI, in a subprocess)
generates requests from it and checks each response: no 5xx, the body matches the documented schema
(envelope included) and the content type is the documented one. Path parameters are drawn, most of
the time, from ids that exist (the deployed app, a session with a finished turn, a background task, a
pending approval, a secret, a tool and its category), so the generated requests get past the 404s
and reach validation and the services behind them.

Excluded, and why:
- ``DELETE /api/apps/{app_id}``: undeploying the one app mid-run would turn every later request into
  a 404 and make the rest of the run meaningless (undeploy has its own tests).
- ``GET /sessions/{session_id}/events``: the persistent stream never ends by design, so every
  valid request would be a client timeout; its auth and errors are covered in test_auth_isolation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

ST = str(Path(sys.executable).with_name("st"))
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"
EXCLUDED_OPERATION_IDS = {
    "DELETE /api/apps/{app_id}": "app_detail_delete",
    "GET /api/apps/{app_id}/sessions/{session_id}/events": "session_events_get",
}
MAX_EXAMPLES = 12


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _seed(daemon, app_yaml) -> dict[str, list[str]]:
    """A deployed app and one of each resource, so generated requests can hit real ids."""
    (app_yaml.workspace / "notes.txt").write_text("hello\n")
    path = app_yaml.minimal(
        "fuzzed",
        rules=[
            {"when": "write", "steps": [{"call": "filesystem.write", "params": {"path": "out.txt", "content": "x"}}]},
            {"when": "", "steps": [{"call": "filesystem.ls", "params": {"path": "."}}, {"say": "done"}]},
        ],
        capabilities={
            "default_policy": "auto",
            "approve": [{"module": "filesystem", "actions": ["write"], "reason": "writes files"}],
        },
    )
    daemon.deploy(path)
    api = daemon.client
    chat = api.post("/api/apps/fuzzed/chat", json={"session_id": "sess-1", "message": "list"})
    assert chat.status_code == 200, chat.text
    pending = api.post("/api/apps/fuzzed/tools/filesystem.write/execute",
                       json={"params": {"path": "a.txt", "content": "x"}})
    assert pending.status_code == 202, pending.text
    task = api.post("/api/apps/fuzzed/background-tasks", json={"tool": "filesystem.ls", "params": {"path": "."}})
    assert task.status_code == 202, task.text
    secret = api.put("/api/apps/fuzzed/secrets/API_KEY", json={"value": "sk-fuzz"})
    assert secret.status_code == 200, secret.text
    return {
        "app_id": ["fuzzed"],
        "session_id": ["sess-1"],
        "request_id": [pending.json()["data"]["request_id"]],
        "task_id": [task.json()["data"]["task_id"]],
        "key": ["API_KEY"],
        "tool_name": ["filesystem.read", "filesystem.ls"],
        "category": ["filesystem"],
    }


def _config(ids: dict[str, list[str]]) -> str:
    lines = []
    for name, values in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = {_toml_list(values)}", ""]
    lines.append("[parameters]")
    for name in ids:
        # Mostly real ids; the rest stay random (unknown ids, path tricks the converters refuse).
        lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = 0.8 }}')
    return "\n".join(lines) + "\n"


def test_schemathesis_finds_no_server_error_and_no_schema_violation(daemon, app_yaml, tmp_path):
    ids = _seed(daemon, app_yaml)
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(ids))
    junit = tmp_path / "junit.xml"
    command = [
        ST, "--config-file", str(config), "run", f"{daemon.url}/api/schema/",
        "--header", f"Authorization: Bearer {daemon.key}",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "2",
        "--request-timeout", "30",
        "--seed", "7",
        "--suppress-health-check", "all",
        "--report", "junit", "--report-junit-path", str(junit),
    ]
    for operation_id in EXCLUDED_OPERATION_IDS.values():
        command += ["--exclude-operation-id", operation_id]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    (tmp_path / "schemathesis-output.txt").write_text(result.stdout + result.stderr)
    # The failures section (with curl reproductions) comes before the warnings and the summary.
    output = result.stdout.split("=== WARNINGS ===")[0][-20000:] + result.stderr[-4000:]
    assert result.returncode == 0, f"schemathesis reported failures:\n{output}\n--- daemon ---\n{daemon.log_tail()}"

    # The run really exercised the API: every documented operation but the excluded ones ran cases.
    suite = ET.parse(junit).getroot()
    cases = suite.findall(".//testcase")
    tested = {case.get("name") for case in cases}
    assert len(tested) >= 40, f"only {len(tested)} operations were tested: {sorted(tested)}\n{output}"
    for operation in ("POST /api/apps/{app_id}/chat", "POST /api/apps/{app_id}/approve",
                      "POST /api/apps/{app_id}/background-tasks/{task_id}/wait",
                      "POST /api/apps/{app_id}/tools/{tool_name}/execute"):
        assert operation in tested, f"{operation} was not tested: {sorted(tested)}"
    assert not tested & set(EXCLUDED_OPERATION_IDS), "an excluded operation ran"
    # The app is still deployed at the end, so the last requests were as meaningful as the first.
    assert daemon.client.get("/api/apps/fuzzed").status_code == 200


# --- what earlier runs found, pinned as plain regressions ----------------------------------------

BOUNDARY = "c637e12e2b1a998d80d1b087531af51c"


@pytest.mark.parametrize("path", [
    "/api/apps/deploy/upload",
    "/api/apps/deploy",
    "/api/apps/nope/tools/filesystem.read/execute",
    "/api/apps/nope/sessions/s1/messages",
])
def test_multipart_body_with_no_parts_gets_the_envelope(daemon, path):
    """Twisted used to answer this itself: an empty 400 with no Content-Type."""
    response = daemon.client.post(path, content=f"--{BOUNDARY}--\r\n".encode(),
                                  headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["success"] is False and body["error"] and body["error_code"]


def test_post_to_health_is_a_json_405_not_a_csrf_page(daemon):
    response = httpx.post(f"{daemon.url}/api/health", timeout=10)
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error_code"] == "METHOD_NOT_ALLOWED"


def test_schema_documents_every_endpoint_of_the_reference(daemon):
    schema = httpx.get(f"{daemon.url}/api/schema/", params={"format": "json"}, timeout=30).json()
    # Trailing slashes are optional on every route; compare without them.
    documented = {(method.upper(), path.rstrip("/"))
                  for path, item in schema["paths"].items() for method in item if method in ("get", "post", "put", "delete")}
    from test_auth_isolation import ROUTES

    base = "/api/apps/{app_id}"
    samples = {"iso": "{app_id}", "s-1": "{session_id}", "task-123": "{task_id}", "filesystem.read": "{tool_name}",
               "API_KEY": "{key}", "categories/filesystem": "categories/{category}"}
    for method, sample in ROUTES:
        path = sample.split("?")[0].rstrip("/")
        for value, name in samples.items():
            path = path.replace(f"/{value}", f"/{name}")
        assert (method, path) in documented, f"{method} {path} is not in /api/schema/"
    # SSE responses are documented per event, with the event names clients switch on.
    events = schema["paths"][f"{base}/sessions/{{session_id}}/events"]["get"]["responses"]["200"]
    event_schema = events["content"]["text/event-stream"]["schema"]
    assert {"tool_start", "tool_call", "result", "approval_request"} <= set(event_schema["properties"]["event"]["enum"])
