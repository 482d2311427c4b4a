"""Who may call what, against the running daemon.

- Every endpoint of the reference (the 36 under /api/apps) refuses a missing key and a wrong key
  with 401 in the envelope; only /api/health is public.
- ``?token=`` authenticates the SSE stream GET .../sessions/{sid}/events and nothing else.
- One principal cannot read, stream, message, cancel or approve another principal's session,
  approvals or background tasks: 404, the same answer as for an id that does not exist. Session ids
  are scoped to their owner: the same id used by another principal is that principal's own session,
  and watching an id (GET .../events) never creates a session, so it cannot squat one.
- A Host header outside ALLOWED_HOSTS (DNS rebinding) gets a 400 JSON envelope, not an HTML page.

The second and third principals are API keys made with `digitorn apikey create`, as an operator would.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from conftest import bearer

from tests.helpers import assert_envelope_error

pytestmark = pytest.mark.e2e

APP = "iso"
# (method, path) for each of the 36 endpoints of the API reference, with sample ids.
ROUTES: list[tuple[str, str]] = [
    ("POST", "/api/apps/deploy"),
    ("POST", "/api/apps/deploy/upload"),
    ("GET", "/api/apps/"),
    ("GET", f"/api/apps/{APP}"),
    ("POST", f"/api/apps/{APP}/run"),
    ("DELETE", f"/api/apps/{APP}"),
    ("POST", f"/api/apps/{APP}/chat"),
    ("POST", f"/api/apps/{APP}/chat/stream"),
    ("GET", f"/api/apps/{APP}/sessions"),
    ("GET", f"/api/apps/{APP}/sessions/s-1"),
    ("GET", f"/api/apps/{APP}/sessions/s-1/history"),
    ("DELETE", f"/api/apps/{APP}/sessions/s-1"),
    ("GET", f"/api/apps/{APP}/sessions/s-1/events"),
    ("POST", f"/api/apps/{APP}/sessions/s-1/messages"),
    ("POST", f"/api/apps/{APP}/background-tasks"),
    ("GET", f"/api/apps/{APP}/background-tasks"),
    ("GET", f"/api/apps/{APP}/background-tasks/task-123"),
    ("DELETE", f"/api/apps/{APP}/background-tasks/task-123"),
    ("POST", f"/api/apps/{APP}/background-tasks/task-123/wait"),
    ("GET", f"/api/apps/{APP}/tools/search?query=read+file"),
    ("GET", f"/api/apps/{APP}/tools/categories"),
    ("GET", f"/api/apps/{APP}/tools/categories/filesystem"),
    ("GET", f"/api/apps/{APP}/tools/filesystem.read"),
    ("POST", f"/api/apps/{APP}/tools/filesystem.read/execute"),
    ("GET", f"/api/apps/{APP}/index"),
    ("GET", f"/api/apps/{APP}/notifications/active"),
    ("POST", f"/api/apps/{APP}/notifications"),
    ("GET", f"/api/apps/{APP}/approvals"),
    ("POST", f"/api/apps/{APP}/approve"),
    ("GET", f"/api/apps/{APP}/quota"),
    ("PUT", f"/api/apps/{APP}/quota"),
    ("DELETE", f"/api/apps/{APP}/quota"),
    ("GET", f"/api/apps/{APP}/secrets"),
    ("GET", f"/api/apps/{APP}/secrets/API_KEY"),
    ("PUT", f"/api/apps/{APP}/secrets/API_KEY"),
    ("DELETE", f"/api/apps/{APP}/secrets/API_KEY"),
]
# A plausible body per endpoint, so that a missing key is the only thing wrong with the request.
BODIES: dict[tuple[str, str], dict] = {
    ("POST", "/api/apps/deploy"): {"yaml_path": "/nonexistent/app.yaml"},
    ("POST", f"/api/apps/{APP}/run"): {"input": "hi"},
    ("POST", f"/api/apps/{APP}/chat"): {"session_id": "s-1", "message": "hi"},
    ("POST", f"/api/apps/{APP}/chat/stream"): {"session_id": "s-1", "message": "hi"},
    ("POST", f"/api/apps/{APP}/sessions/s-1/messages"): {"message": "hi"},
    ("POST", f"/api/apps/{APP}/background-tasks"): {"tool": "filesystem.ls", "params": {"path": "."}},
    ("POST", f"/api/apps/{APP}/background-tasks/task-123/wait"): {"timeout": 1},
    ("POST", f"/api/apps/{APP}/tools/filesystem.read/execute"): {"params": {"path": "a.txt"}},
    ("POST", f"/api/apps/{APP}/notifications"): {"session_id": "s-1"},
    ("POST", f"/api/apps/{APP}/approve"): {"request_id": "req-1", "approved": True},
    ("PUT", f"/api/apps/{APP}/quota"): {"rpm": 10},
    ("PUT", f"/api/apps/{APP}/secrets/API_KEY"): {"value": "v"},
}
EVENTS = ("GET", f"/api/apps/{APP}/sessions/s-1/events")


def _route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1].split('?')[0]}"


def _request(daemon, method: str, path: str, *, headers: dict | None = None, params: dict | None = None,
             timeout: float = 15.0) -> httpx.Response:
    """A request with no credentials unless ``headers`` brings them (the fixture's client has the admin key)."""
    body = BODIES.get((method, path))
    headers = dict(headers or {})
    kwargs: dict = {}
    if path.endswith("/deploy/upload"):
        kwargs["files"] = {"file": ("app.yaml", b"schema_version: 2\n", "application/x-yaml")}
    elif body is not None:
        kwargs["content"] = json.dumps(body)
        headers["Content-Type"] = "application/json"
    with httpx.Client(base_url=daemon.url, timeout=timeout) as client:
        return client.request(method, path, headers=headers, params=params, **kwargs)


@pytest.fixture(scope="module")
def deployed(daemon, tmp_path_factory):
    """The app the routes point at: a scripted agent that lists, or writes (which needs approval)."""
    root = tmp_path_factory.mktemp("iso-app")
    workspace = root / "ws"
    workspace.mkdir()
    (workspace / "a.txt").write_text("alpha\n")
    manifest = {
        "schema_version": 2,
        "app": {"app_id": APP, "name": "Isolation"},
        "agents": [{"id": "assistant", "brain": {"provider": "scripted", "config": {"rules": [
            {"when": "write", "steps": [{"call": "filesystem.write", "params": {"path": "w.txt", "content": "x"}},
                                        {"say": "written"}]},
            {"when": "", "steps": [{"call": "filesystem.ls", "params": {"path": "."}}, {"say": "listed"}]},
        ]}}}],
        "tools": {
            "modules": {"filesystem": {"workspace": str(workspace)}},
            "capabilities": {"default_policy": "auto",
                             "approve": [{"module": "filesystem", "actions": ["write"], "reason": "writes"}]},
        },
    }
    path = root / "iso.yaml"
    path.write_text(json.dumps(manifest))  # JSON is YAML
    daemon.deploy(path)
    return daemon


@pytest.fixture(scope="module")
def keys(deployed) -> dict[str, str]:
    """Two ordinary principals, alice and bob, made with `digitorn apikey create`."""
    made = {}
    for name in ("alice", "bob"):
        result = deployed.cli("apikey", "create", "--name", name, "--scopes", "apps:read,apps:run", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        info = json.loads(result.stdout)
        assert info["owner"] == name
        made[name] = info["key"]
    return made


# --- 401 on every endpoint ---------------------------------------------------------------------


def test_the_reference_lists_36_endpoints():
    assert len(ROUTES) == 36
    assert len({_route_id(r) for r in ROUTES}) == 36


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
def test_missing_key_is_refused_with_401(deployed, route):
    method, path = route
    body = assert_envelope_error(_request(deployed, method, path), 401, "UNAUTHORIZED")
    assert "key" in body["error"].lower()


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
def test_wrong_key_is_refused_with_401(deployed, route):
    method, path = route
    for headers in ({"Authorization": "Bearer dg_00000000_not-a-real-key"}, {"X-API-Key": "wrong"},
                    {"Authorization": f"Bearer {deployed.key}x"}):
        assert_envelope_error(_request(deployed, method, path, headers=headers), 401, "UNAUTHORIZED")


def test_health_is_the_only_public_endpoint(deployed):
    response = httpx.get(f"{deployed.url}/api/health", timeout=10)
    assert response.status_code == 200 and response.json()["success"] is True


@pytest.mark.parametrize("route", [r for r in ROUTES if r != EVENTS], ids=_route_id)
def test_query_token_is_refused_off_the_sse_stream(deployed, route):
    """A valid key in ?token= does not authenticate a non-SSE endpoint (it would leak into logs)."""
    method, path = route
    assert_envelope_error(_request(deployed, method, path, params={"token": deployed.key}), 401, "UNAUTHORIZED")


def test_query_token_opens_the_sse_stream(deployed, keys):
    with httpx.Client(base_url=deployed.url, timeout=httpx.Timeout(15.0, connect=5.0)) as client, \
            client.stream("GET", f"/api/apps/{APP}/sessions/tok-1/events", params={"token": keys["alice"]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        from digitorn_site.cli.sse import parse_sse_lines

        first = next(iter(parse_sse_lines(response.iter_lines()))).as_dict()
    assert first["event"] == "connected"
    assert first["data"] == {"session_id": "tok-1"}
    # Watching created nothing; the first message does, and the session belongs to its sender.
    ghost = httpx.get(f"{deployed.url}/api/apps/{APP}/sessions/tok-1", headers=bearer(keys["alice"]), timeout=10)
    assert_envelope_error(ghost, 404, "RESOURCE_NOT_FOUND")
    sent = deployed.client.post(f"/api/apps/{APP}/sessions/tok-1/messages", json={"message": "list"},
                                headers=bearer(keys["alice"]))
    assert sent.status_code == 202, sent.text
    mine = httpx.get(f"{deployed.url}/api/apps/{APP}/sessions/tok-1", headers=bearer(keys["alice"]), timeout=10)
    assert mine.status_code == 200, mine.text
    theirs = httpx.get(f"{deployed.url}/api/apps/{APP}/sessions/tok-1", headers=bearer(keys["bob"]), timeout=10)
    assert_envelope_error(theirs, 404, "RESOURCE_NOT_FOUND")


def test_wrong_query_token_on_the_sse_stream_is_401(deployed):
    assert_envelope_error(
        _request(deployed, "GET", f"/api/apps/{APP}/sessions/s-1/events", params={"token": "dg_bad"}),
        401, "UNAUTHORIZED",
    )


# --- DNS rebinding ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/health", "/api/apps/", f"/api/apps/{APP}/sessions/s-1/events", "/admin/", "/ui/"])
def test_foreign_host_header_gets_a_json_400(deployed, path):
    response = httpx.get(f"{deployed.url}{path}", headers={"Host": "evil.example", **bearer(deployed.key)}, timeout=10)
    body = assert_envelope_error(response, 400, "VALIDATION_ERROR")
    assert "evil.example" in body["error"] and "ALLOWED_HOSTS" in body["error"], body


def test_loopback_host_names_are_accepted(deployed):
    for host in ("localhost", f"127.0.0.1:{deployed.port}", f"localhost:{deployed.port}"):
        response = httpx.get(f"{deployed.url}/api/health", headers={"Host": host}, timeout=10)
        assert response.status_code == 200, (host, response.text)


# --- one principal cannot touch another's things -------------------------------------------


@pytest.fixture(scope="module")
def alices(deployed, keys) -> dict[str, str]:
    """Alice's session with a finished turn, a session whose turn waits for approval, and a task."""
    alice = bearer(keys["alice"])
    api = deployed.client
    done = api.post(f"/api/apps/{APP}/chat", json={"session_id": "alice-s", "message": "list"}, headers=alice)
    assert done.status_code == 200 and done.json()["data"]["content"] == "listed", done.text
    queued = api.post(f"/api/apps/{APP}/sessions/alice-w/messages", json={"message": "write"}, headers=alice)
    assert queued.status_code == 202, queued.text
    pending: list = []
    deadline = time.monotonic() + 30
    while not pending and time.monotonic() < deadline:
        pending = api.get(f"/api/apps/{APP}/approvals", headers=alice).json()["data"]["pending"]
        time.sleep(0.2)
    assert len(pending) == 1 and pending[0]["session_id"] == "alice-w", pending
    task = api.post(f"/api/apps/{APP}/background-tasks", headers=alice,
                    json={"tool": "filesystem.ls", "params": {"path": "."}, "session_id": "alice-s"})
    assert task.status_code == 202, task.text
    return {"session": "alice-s", "waiting": "alice-w", "request_id": pending[0]["request_id"],
            "task_id": task.json()["data"]["task_id"]}


def _same_as_missing(deployed, bob: dict, method: str, path: str, real_id: str, body: dict | None = None) -> None:
    """Bob's answer for Alice's id is a 404 worded exactly like the one for an id that never existed."""
    theirs = deployed.client.request(method, path, headers=bob, json=body)
    assert_envelope_error(theirs, 404, "RESOURCE_NOT_FOUND")
    ghost = "ghost-000000"
    missing = deployed.client.request(method, path.replace(real_id, ghost), headers=bob,
                                      json=json.loads(json.dumps(body).replace(real_id, ghost)) if body else None)
    assert_envelope_error(missing, 404, "RESOURCE_NOT_FOUND")
    assert theirs.json()["error"].replace(real_id, "<id>") == missing.json()["error"].replace(ghost, "<id>")


def test_another_principal_cannot_read_or_touch_a_session(deployed, keys, alices):
    bob = bearer(keys["bob"])
    sid = alices["session"]
    base = f"/api/apps/{APP}/sessions/{sid}"
    _same_as_missing(deployed, bob, "GET", base, sid)
    _same_as_missing(deployed, bob, "GET", f"{base}/history", sid)
    _same_as_missing(deployed, bob, "POST", f"{base}/cancel", sid)
    # The original's session operations guard the same way.
    for op in ("abort", "compact", "fork", "undo"):
        _same_as_missing(deployed, bob, "POST", f"{base}/{op}", sid)
    for op in ("memory", "workspace"):
        _same_as_missing(deployed, bob, "GET", f"{base}/{op}", sid)
    _same_as_missing(deployed, bob, "DELETE", base, sid)
    # Draining another's notifications answers what an unknown session answers (the original's
    # `{notifications: 0}`, which CLIs poll), and drains nothing.
    drained = deployed.client.post(f"/api/apps/{APP}/notifications", headers=bob, json={"session_id": sid})
    assert drained.status_code == 200 and drained.json()["data"] == {"notifications": 0}, drained.text
    # Writing with that id reaches a session of Bob's own (ids are per owner), never Alice's.
    mine: set[str] = set()
    queued = deployed.client.post(f"{base}/messages", headers=bob, json={"message": "hijack"})
    assert queued.status_code == 202, queued.text
    mine.add(queued.json()["data"]["correlation_id"])
    chat = deployed.client.post(f"/api/apps/{APP}/chat", headers=bob, json={"session_id": sid, "message": "hijack"})
    assert chat.status_code == 200, chat.text
    mine.add(chat.json()["data"]["correlation_id"])
    # Streaming that id, with a header or with ?token=, shows only Bob's own turns.
    for params, headers in (({"since": 0}, bob), ({"since": 0, "token": keys["bob"]}, {})):
        seen: list[dict] = []
        with httpx.stream("GET", f"{deployed.url}{base}/events", params=params, headers=headers, timeout=15) as response:
            assert response.status_code == 200
            from digitorn_site.cli.sse import parse_sse_lines

            for event in parse_sse_lines(response.iter_lines()):
                seen.append(event.as_dict())
                if len([e for e in seen if e["event"] == "result"]) == 2:
                    break
        assert {e["data"]["correlation_id"] for e in seen if e["event"] == "result"} == mine, seen
    # Bob's history of that id is his; Alice's session is intact, with its one exchange.
    bobs = deployed.client.get(f"{base}/history", headers=bob).json()["data"]["messages"]
    assert "list" not in [m["content"] for m in bobs] and "hijack" in [m["content"] for m in bobs]
    history = deployed.client.get(f"{base}/history", headers=bearer(keys["alice"]))
    assert history.status_code == 200
    contents = [m["content"] for m in history.json()["data"]["messages"]]
    assert "hijack" not in contents and "list" in contents
    assert deployed.client.delete(base, headers=bob).status_code == 200  # deletes Bob's, not Alice's
    assert deployed.client.get(f"{base}/history", headers=bearer(keys["alice"])).status_code == 200
    # The admin sees every principal's sessions.
    assert deployed.client.get(base).status_code == 200


def test_another_principal_cannot_see_or_decide_an_approval(deployed, keys, alices):
    bob = bearer(keys["bob"])
    rid = alices["request_id"]
    assert deployed.client.get(f"/api/apps/{APP}/approvals", headers=bob).json()["data"]["pending"] == []
    _same_as_missing(deployed, bob, "GET", f"/api/apps/{APP}/approvals/{rid}", rid)
    _same_as_missing(deployed, bob, "POST", f"/api/apps/{APP}/approve", rid,
                     body={"request_id": rid, "approved": True, "message": "sure"})
    _same_as_missing(deployed, bob, "POST", f"/api/apps/{APP}/sessions/{alices['waiting']}/cancel", alices["waiting"])
    # Still pending for Alice: Bob's attempts changed nothing.
    pending = deployed.client.get(f"/api/apps/{APP}/approvals", headers=bearer(keys["alice"])).json()["data"]["pending"]
    assert [p["request_id"] for p in pending] == [rid]


def test_another_principal_cannot_see_wait_or_cancel_a_task(deployed, keys, alices):
    bob = bearer(keys["bob"])
    tid = alices["task_id"]
    base = f"/api/apps/{APP}/background-tasks/{tid}"
    _same_as_missing(deployed, bob, "GET", base, tid)
    _same_as_missing(deployed, bob, "POST", f"{base}/wait", tid, body={"timeout": 0})
    _same_as_missing(deployed, bob, "DELETE", base, tid)
    listed = deployed.client.get(f"/api/apps/{APP}/background-tasks", headers=bob).json()["data"]
    assert tid not in {t["task_id"] for t in listed["tasks"]}
    # Alice's task ran to completion; Bob's DELETE did not cancel it.
    waited = deployed.client.post(f"{base}/wait", json={"timeout": 30}, headers=bearer(keys["alice"]))
    assert waited.status_code == 200, waited.text
    assert waited.json()["data"]["status"] == "completed", waited.json()


def test_owner_can_approve_and_the_turn_finishes(deployed, keys, alices):
    """The positive control: the same calls Bob was refused work for Alice."""
    alice = bearer(keys["alice"])
    decided = deployed.client.post(f"/api/apps/{APP}/approve", headers=alice,
                                   json={"request_id": alices["request_id"], "approved": True})
    assert decided.status_code == 200, decided.text
    assert decided.json()["data"]["approved"] is True
    events = deployed.sse(f"/api/apps/{APP}/sessions/{alices['waiting']}/events", params={"since": 0},
                          headers=alice, until="result", timeout=30)
    assert events[-1]["data"]["content"] == "written"
    assert "approval_resolved" in [e["event"] for e in events]


# --- keys never reach the log ------------------------------------------------------------------


def test_query_tokens_never_reach_the_log_and_logs_are_private(deployed, keys):
    """?token= on 4xx answers (wrong token, non-SSE endpoint, unknown path, bad cursor) and on a
    stream: daemon.log never holds the key, and the log files are readable by the owner only."""
    import stat

    leaked = keys["alice"]
    for method, path, params in (
        ("GET", f"/api/apps/{APP}/sessions/s-1/events", {"token": leaked, "since": "-5"}),
        ("GET", f"/api/apps/{APP}/sessions/s-1/events", {"token": leaked + "x"}),
        ("GET", f"/api/apps/{APP}/sessions", {"token": leaked}),
        ("GET", "/api/apps/nope/missing/path", {"token": leaked}),
        ("POST", f"/api/apps/{APP}/chat", {"token": leaked}),
    ):
        response = httpx.request(method, f"{deployed.url}{path}", params=params, timeout=10)
        assert 400 <= response.status_code < 500, (path, response.status_code)
    with httpx.stream("GET", f"{deployed.url}/api/apps/{APP}/sessions/log-1/events", params={"token": leaked},
                      timeout=10) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    time.sleep(1.0)  # let the workers flush their log lines
    logs = sorted((deployed.data_dir / "logs").iterdir())
    assert logs, "no log files"
    for path in logs:
        assert leaked not in path.read_text(errors="replace"), f"{path.name} holds a key passed as ?token="
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path.name} is readable by others"
    assert stat.S_IMODE((deployed.data_dir / "logs").stat().st_mode) & 0o077 == 0


def test_watching_a_session_id_does_not_squat_it(deployed, keys):
    """An apps:read key watching an id first neither creates the session nor blocks its owner."""
    made = deployed.cli("apikey", "create", "--name", "watcher", "--scopes", "apps:read", "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    watcher = json.loads(made.stdout)["key"]
    from digitorn_site.cli.sse import parse_sse_lines

    with httpx.stream("GET", f"{deployed.url}/api/apps/{APP}/sessions/squat-1/events", params={"token": watcher},
                      timeout=15) as response:
        assert response.status_code == 200
        assert next(iter(parse_sse_lines(response.iter_lines()))).as_dict()["event"] == "connected"
        # While the squatter still watches, the owner's chat on that id works.
        chat = deployed.client.post(f"/api/apps/{APP}/chat", json={"session_id": "squat-1", "message": "list"},
                                    headers=bearer(keys["alice"]))
        assert chat.status_code == 200 and chat.json()["data"]["content"] == "listed", chat.text
    assert_envelope_error(deployed.client.get(f"/api/apps/{APP}/sessions/squat-1/history", headers=bearer(watcher)),
                     404, "RESOURCE_NOT_FOUND")
    again = deployed.client.post(f"/api/apps/{APP}/sessions/squat-1/messages", json={"message": "list"},
                                 headers=bearer(keys["alice"]))
    assert again.status_code == 202, again.text
