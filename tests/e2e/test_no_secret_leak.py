"""No output of the daemon ever carries a secret's plaintext.

A recognisable secret is set on an app whose shell module gets it as an environment variable, so
the plaintext really flows into tool results (``echo $LEAK_TOKEN``), into a workspace file that
other tools read back, into a background task's result and into a direct execution's result.
Then every surface is exercised (chat, streams, history, events replay, tools, index, approvals,
tasks, sessions, the CLI, the admin pages as a superuser) and everything they produced, plus every
file in the data dir (logs, SQLite files, broker) and a full ``dumpdata`` of the database, is
searched for the plaintext: zero hits.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from digitorn_site.cli.sse import parse_sse_lines
from tests.httpkit import QuietHandler, serving

pytestmark = pytest.mark.e2e

PROJECT_ROOT = Path(__file__).resolve().parents[2]
APP = "leaky"
MASK = "***"

RULES = [
    {
        "when": "write",
        "steps": [
            {"call": "shell.run", "params": {"command": "echo token=$LEAK_TOKEN > leak.txt; cat leak.txt; echo err-$LEAK_TOKEN >&2"}},
            {"say": "shell said {result}"},
        ],
    },
    {
        "when": "copy",
        "steps": [
            {"call": "filesystem.read", "params": {"path": "leak.txt"}},
            {"call": "filesystem.write", "params": {"path": "copy.txt", "content": "{result}"}},
            {"say": "copied {result}"},
        ],
    },
    {
        "when": "read",
        "steps": [{"call": "filesystem.read", "params": {"path": "leak.txt"}}, {"say": "file says {result}"}],
    },
    {
        # The secret flows through tool *parameters*: the model's call carries it in a header.
        "when": "api",
        "steps": [
            {"call": "http.get", "params": {"url": "{api}/whoami", "headers": {"Authorization": "Bearer {{secret.LEAK_TOKEN}}"}}},
            {"call": "shell.run", "params": {"command": "echo param-{{secret.LEAK_TOKEN}} > param.txt"}},
            {"say": "api said {result}"},
        ],
    },
    {"when": "", "steps": [{"say": "nothing to do for: {message}"}]},
]


class Recorder:
    """Everything the daemon answered, labelled, to be searched at the end."""

    def __init__(self) -> None:
        self.outputs: list[tuple[str, str]] = []

    def add(self, label: str, text: str) -> str:
        self.outputs.append((label, text))
        return text

    def response(self, label: str, response: httpx.Response, *, status: int | tuple[int, ...] = 200) -> Any:
        self.add(f"{label} [{response.status_code}] headers", json.dumps(dict(response.headers)))
        self.add(f"{label} [{response.status_code}]", response.text)
        expected = (status,) if isinstance(status, int) else status
        assert response.status_code in expected, f"{label}: HTTP {response.status_code} {response.text[:500]}"
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json().get("data")
        return None

    def sse(self, client: httpx.Client, label: str, method: str, path: str, *, until: Callable[[dict], bool],
            json_body: Any = None, params: dict | None = None, on_event: Callable[[dict], None] | None = None,
            timeout: float = 60.0) -> list[dict]:
        raw: list[str] = []
        events: list[dict] = []

        def lines(response: httpx.Response):
            for line in response.iter_lines():
                raw.append(line)
                yield line

        deadline = time.monotonic() + timeout
        try:
            with client.stream(method, path, json=json_body, params=params,
                               timeout=httpx.Timeout(timeout, connect=5.0)) as response:
                assert response.status_code == 200, f"{label}: HTTP {response.status_code} {response.read()[:500]!r}"
                for event in parse_sse_lines(lines(response)):
                    events.append(event.as_dict())
                    if on_event is not None:
                        on_event(events[-1])
                    if until(events[-1]) or time.monotonic() > deadline:
                        break
        finally:
            self.add(label, "\n".join(raw))
        assert until(events[-1]) if events else False, f"{label}: stream ended before the expected event: {events}"
        return events


class _Api(QuietHandler):
    """A stand-in web API: records the Authorization header it was sent, answers without it."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen.append(self.headers.get("Authorization", ""))
        self._send(200, b'{"user": "leak-check"}', "application/json")


@pytest.fixture
def api_server():
    _Api.seen = []
    with serving(_Api) as url:
        yield url


def _manifest(workspace: Path, api: str) -> str:
    rules = json.dumps(RULES).replace("{api}", api)  # JSON is YAML flow syntax
    return (
        "schema_version: 2\n"
        f"app: {{app_id: {APP}, name: Leak Check}}\n"
        "agents:\n"
        "  - id: assistant\n"
        f"    brain: {{provider: scripted, config: {{rules: {rules}}}}}\n"
        "tools:\n"
        "  modules:\n"
        f"    filesystem: {{workspace: '{workspace}'}}\n"
        "    shell: {env: {LEAK_TOKEN: '{{secret.LEAK_TOKEN}}'}}\n"
        "    http: {allowed_hosts: ['127.0.0.1']}\n"
        "  capabilities:\n"
        "    default_policy: approve\n"
        "    grant: [{module: filesystem, actions: [read, ls, find]}, {module: http, actions: [get]}]\n"
        "    approve: [{module: shell, reason: runs commands}, {module: filesystem, actions: [write]}]\n"
    )


def _admin_session(daemon, rec: Recorder) -> httpx.Client:
    password = "leak-test-" + secrets.token_urlsafe(12)
    created = daemon.create_superuser("ops", "ops@example.com", password)
    rec.add("createsuperuser", created.stdout + created.stderr)
    assert created.returncode == 0, created.stderr
    web = httpx.Client(base_url=daemon.url, timeout=30.0)
    login = web.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    assert token, login.text[:500]
    done = web.post(
        "/admin/login/",
        data={"csrfmiddlewaretoken": token.group(1), "username": "ops", "password": password, "next": "/admin/"},
    )
    assert done.status_code == 302 and done.headers["location"] == "/admin/", done.text[:500]
    return web


def test_secret_plaintext_never_leaves(daemon, app_yaml, api_server):
    secret = "LeakCanary" + secrets.token_hex(12)
    rec = Recorder()
    client = daemon.client
    workspace = app_yaml.workspace
    daemon.deploy(app_yaml(_manifest(workspace, api_server), f"{APP}.yaml"), force=True)

    # --- the secret goes in through the API and the CLI (stdin, never argv) -------------------
    rec.response("missing secret detail", client.get(f"/api/apps/{APP}"))
    rec.response("put secret", client.put(f"/api/apps/{APP}/secrets/LEAK_TOKEN", json={"value": secret}))
    cli = daemon.cli("secret", "set", APP, "LEAK_TOKEN", input=secret + "\n")
    rec.add("cli secret set", cli.stdout + cli.stderr)
    assert cli.returncode == 0, cli.stderr
    keys = rec.response("list secrets", client.get(f"/api/apps/{APP}/secrets"))
    assert keys["keys"] == ["LEAK_TOKEN"]
    assert rec.response("secret exists", client.get(f"/api/apps/{APP}/secrets/LEAK_TOKEN"))["exists"] is True

    # --- persistent stream + async message + approval: the shell echoes the secret -----------
    accepted = rec.response(
        "message s1", client.post(f"/api/apps/{APP}/sessions/s1/messages", json={"message": "write it"}), status=202
    )
    assert accepted["correlation_id"]
    approvals_seen: list[str] = []

    def approve_when_asked(event: dict) -> None:
        if event["event"] == "approval_request":
            request_id = event["data"]["request_id"]
            approvals_seen.append(request_id)
            pending = rec.response("approvals pending", client.get(f"/api/apps/{APP}/approvals"))
            assert request_id in [p["request_id"] for p in pending["pending"]]
            rec.response(f"approval {request_id}", client.get(f"/api/apps/{APP}/approvals/{request_id}"))
            rec.response(
                "approve s1",
                client.post(f"/api/apps/{APP}/approve", json={"request_id": request_id, "approved": True}),
            )

    events = rec.sse(
        client, "events s1", "GET", f"/api/apps/{APP}/sessions/s1/events", params={"since": 0},
        until=lambda e: e["event"] == "result", on_event=approve_when_asked,
    )
    assert len(approvals_seen) == 1
    shell_results = [e["data"] for e in events if e["event"] == "tool_call" and e["data"].get("name") == "shell.run"]
    assert shell_results and shell_results[0]["success"] is True, events
    stdout = shell_results[0]["result"]["stdout"]
    assert stdout.strip() == f"token={MASK}", stdout  # the plaintext really was there, and was masked
    # The tool really saw the value: the file it wrote holds it (outside the data dir).
    assert (workspace / "leak.txt").read_text().strip() == f"token={secret}"

    # --- synchronous chat: a file tool reads the secret back ---------------------------------
    done = rec.response("chat s2", client.post(f"/api/apps/{APP}/chat", json={"session_id": "s2", "message": "read it"}))
    assert done["content"].startswith("file says") and MASK in done["content"], done

    # --- streaming chat with a second approval, the copy's params built from a masked result -
    def approve_copy(event: dict) -> None:
        if event["event"] == "approval_request":
            rec.add("approval_request params", json.dumps(event["data"]))
            rec.response(
                "approve s3",
                client.post(f"/api/apps/{APP}/approve", json={"request_id": event["data"]["request_id"], "approved": True}),
            )

    streamed = rec.sse(
        client, "chat/stream s3", "POST", f"/api/apps/{APP}/chat/stream",
        json_body={"session_id": "s3", "message": "copy it"}, until=lambda e: e["event"] == "result", on_event=approve_copy,
    )
    assert [e for e in streamed if e["event"] == "approval_request"], streamed
    assert (workspace / "copy.txt").exists()

    # --- the secret in tool parameters: an HTTP header (auto) and a gated shell command ---------
    def approve_param_call(event: dict) -> None:
        if event["event"] == "approval_request":
            assert event["data"]["tool_params"]["command"] == f"echo param-{MASK} > param.txt", event
            rec.response(
                "approve s4",
                client.post(f"/api/apps/{APP}/approve", json={"request_id": event["data"]["request_id"], "approved": True}),
            )

    accepted = rec.response(
        "message s4", client.post(f"/api/apps/{APP}/sessions/s4/messages", json={"message": "call the api"}), status=202
    )
    param_events = rec.sse(
        client, "events s4", "GET", f"/api/apps/{APP}/sessions/s4/events", params={"since": 0},
        until=lambda e: e["event"] == "result", on_event=approve_param_call,
    )
    calls = [e["data"] for e in param_events if e["event"] == "tool_call"]
    assert calls[0]["params"]["headers"]["Authorization"] == f"Bearer {MASK}", calls
    assert _Api.seen == [f"Bearer {secret}"]  # the call itself carried the plaintext
    assert (workspace / "param.txt").read_text().strip() == f"param-{secret}"
    assert accepted["correlation_id"]

    # --- direct tool execution, auto and behind an approval -----------------------------------
    direct = rec.response(
        "execute read", client.post(f"/api/apps/{APP}/tools/filesystem.read/execute", json={"params": {"path": "leak.txt"}})
    )
    # The tool's result is the envelope (the original's flattening): `direct` is the tool's data.
    assert MASK in json.dumps(direct)
    pending = rec.response(
        "execute shell",
        client.post(f"/api/apps/{APP}/tools/shell.run/execute", json={"params": {"command": "echo direct-$LEAK_TOKEN"}}),
        status=202,
    )
    rec.response(
        "approve direct", client.post(f"/api/apps/{APP}/approve", json={"request_id": pending["request_id"], "approved": True})
    )
    detail: dict = {}
    for _ in range(300):  # the approved call runs on a worker; its result lands on the request
        detail = rec.response("approval detail direct", client.get(f"/api/apps/{APP}/approvals/{pending['request_id']}"))
        if (detail.get("result") or {}).get("status") not in (None, "queued", "running"):
            break
        time.sleep(0.1)
    assert detail.get("status") == "approved", detail
    assert f"direct-{MASK}" in json.dumps(detail.get("result")), detail

    # --- background task reading the file ------------------------------------------------------
    task = rec.response(
        "launch task",
        client.post(f"/api/apps/{APP}/background-tasks", json={"tool": "filesystem.read", "params": {"path": "leak.txt"}}),
        status=202,
    )
    waited = rec.response(
        "wait task", client.post(f"/api/apps/{APP}/background-tasks/{task['task_id']}/wait", json={"timeout": 30})
    )
    assert waited["status"] == "completed", waited
    assert MASK in json.dumps(waited["result"])
    rec.response("get task", client.get(f"/api/apps/{APP}/background-tasks/{task['task_id']}"))
    rec.response("list tasks", client.get(f"/api/apps/{APP}/background-tasks"))

    # --- every read endpoint -------------------------------------------------------------------
    for label, path in [
        ("apps", "/api/apps/"),
        ("app detail", f"/api/apps/{APP}"),
        ("index", f"/api/apps/{APP}/index"),
        ("search", f"/api/apps/{APP}/tools/search?query=read+file"),
        ("categories", f"/api/apps/{APP}/tools/categories"),
        ("category shell", f"/api/apps/{APP}/tools/categories/shell"),
        ("tool shell", f"/api/apps/{APP}/tools/shell.run"),
        ("sessions", f"/api/apps/{APP}/sessions"),
        ("quota", f"/api/apps/{APP}/quota"),
        ("notifications active", f"/api/apps/{APP}/notifications/active"),
        ("approvals", f"/api/apps/{APP}/approvals"),
        ("memory s1", f"/api/apps/{APP}/sessions/s1/memory"),
        ("workspace s1", f"/api/apps/{APP}/sessions/s1/workspace"),
        ("metrics", "/api/metrics"),
        ("metrics sessions", "/api/metrics/sessions"),
    ]:
        rec.response(label, client.get(path))
    for sid in ("s1", "s2", "s3", "s4"):
        rec.response(f"session {sid}", client.get(f"/api/apps/{APP}/sessions/{sid}"))
        history = rec.response(f"history {sid}", client.get(f"/api/apps/{APP}/sessions/{sid}/history"))
        assert history["messages"], sid
        rec.sse(client, f"replay {sid}", "GET", f"/api/apps/{APP}/sessions/{sid}/events", params={"since": 0},
                until=lambda e: e["event"] == "result")

    # --- the CLI --------------------------------------------------------------------------------
    for args, stdin in [
        (("apps",), None),
        (("secret", "list", APP), None),
        (("tasks", APP), None),
        (("approvals", APP), None),
        (("chat", APP, "--session", "cli-1"), "read it\nwrite again\ny\n/quit\n"),
    ]:
        ran = daemon.cli(*args, input=stdin)
        rec.add("cli " + " ".join(args), ran.stdout + ran.stderr)
        assert ran.returncode == 0, (args, ran.stdout, ran.stderr)
    assert MASK in rec.outputs[-1][1]  # the chat printed masked tool output

    # --- the admin, as a superuser --------------------------------------------------------------
    web = _admin_session(daemon, rec)
    pages = {"/admin/"}
    for model in ("apps_registry/app", "apps_registry/appsecret", "apps_registry/apikey", "conversations/session",
                  "conversations/notification", "tooling/backgroundtask", "tooling/toolexecution",
                  "tooling/memoryentry", "approvals/approvalrequest"):
        listing = web.get(f"/admin/{model}/")
        rec.response(f"admin {model}", listing)
        pages.update(re.findall(rf'href="(/admin/{model}/[^/"]+/change/)"', listing.text))
    assert any("/conversations/session/" in p for p in pages) and any("/approvals/approvalrequest/" in p for p in pages)
    for page in sorted(pages):
        rec.response(f"admin page {page}", web.get(page))
    web.close()

    # --- the UI page (public HTML; carries no data) --------------------------------------------
    rec.response("ui", httpx.get(f"{daemon.url}/ui/", timeout=10))

    # --- the search ------------------------------------------------------------------------------
    dump = subprocess.run(
        [sys.executable, "manage.py", "dumpdata", "--indent", "0"],
        cwd=str(PROJECT_ROOT), env=daemon.env, capture_output=True, text=True, timeout=120,
    )
    assert dump.returncode == 0, dump.stderr
    assert "LEAK_TOKEN" in dump.stdout  # the dump really holds the app, its secret row and sessions
    rec.add("dumpdata", dump.stdout)

    hits = [label for label, text in rec.outputs if secret in text]
    files = sorted(p for p in daemon.data_dir.rglob("*") if p.is_file())
    assert any(p.suffix == ".log" for p in files), [str(p) for p in files]
    file_hits = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not hits, f"the secret's plaintext appears in: {hits}"
    assert not file_hits, f"the secret's plaintext appears in data-dir files: {file_hits}"
    assert len(rec.outputs) > 60
