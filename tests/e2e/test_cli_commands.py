"""The `digitorn` client commands, run as subprocesses against a started daemon."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

import httpx
import pytest
from conftest import CLI, PROJECT_ROOT

pytestmark = pytest.mark.e2e

SECRET = "sk-cli-e2e-Zq81vX"


def test_http_lifecycle_deploy_list_get_undeploy(daemon, app_yaml):
    """start --workers 2 (fixture) → deploy over HTTP → list → get → undeploy; stop at teardown."""
    path = app_yaml.minimal("demo", name="Demo")
    deployed = daemon.client.post("/api/apps/deploy", json={"yaml_path": str(path)})
    assert deployed.status_code == 200, deployed.text
    summary = deployed.json()["data"]
    assert summary["app_id"] == "demo"
    assert summary["name"] == "Demo"
    assert summary["agents"] == ["assistant"]
    assert summary["modules"] == ["filesystem"]
    assert summary["total_tools"] > 0

    listed = daemon.client.get("/api/apps/").json()["data"]
    listed = listed if isinstance(listed, list) else listed["apps"]
    assert [a["app_id"] for a in listed] == ["demo"]

    got = daemon.client.get("/api/apps/demo")
    assert got.status_code == 200
    assert got.json()["data"]["app_id"] == "demo"

    again = daemon.client.post("/api/apps/deploy", json={"yaml_path": str(path)})
    assert again.status_code == 409
    assert again.json()["success"] is False

    gone = daemon.client.delete("/api/apps/demo")
    assert gone.status_code == 200, gone.text
    missing = daemon.client.get("/api/apps/demo")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_NOT_FOUND"


def test_cli_deploy_apps_undeploy(daemon, app_yaml, tmp_path, monkeypatch):
    path = app_yaml.minimal("cli-app", name="CLI App")
    result = daemon.cli("deploy", str(path))
    assert result.returncode == 0, result.stderr
    assert "deployed cli-app (CLI App" in result.stdout

    conflict = daemon.cli("deploy", str(path))
    assert conflict.returncode == 1
    assert conflict.stderr.startswith("error: ")
    assert "(CONFLICT)" in conflict.stderr or "already deployed" in conflict.stderr

    forced = daemon.cli("deploy", str(path), "--force")
    assert forced.returncode == 0, forced.stderr

    apps = daemon.cli("apps")
    assert apps.returncode == 0
    assert "cli-app" in apps.stdout and "CLI App" in apps.stdout and "filesystem" in apps.stdout
    as_json = json.loads(daemon.cli("apps", "--json").stdout)
    assert "cli-app" in [a["app_id"] for a in as_json]

    undeployed = daemon.cli("undeploy", "cli-app")
    assert undeployed.returncode == 0, undeployed.stderr
    assert "undeployed cli-app" in undeployed.stdout
    twice = daemon.cli("undeploy", "cli-app")
    assert twice.returncode == 1
    assert "cli-app" in twice.stderr and "RESOURCE_NOT_FOUND" in twice.stderr


def test_cli_deploy_relative_path_is_sent_absolute(daemon, app_yaml):
    path = app_yaml.minimal("relative-app")
    # Run from the manifest's folder with a bare file name: the CLI must resolve it.
    result = daemon.cli("deploy", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    got = daemon.client.get("/api/apps/relative-app").json()["data"]
    assert got["app_id"] == "relative-app"
    daemon.client.delete("/api/apps/relative-app")


def test_cli_deploy_errors_are_one_line_with_exit_1(daemon, app_yaml, tmp_path):
    missing = daemon.cli("deploy", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    assert "no such file" in missing.stderr

    broken = app_yaml("schema_version: 2\napp: {app_id: broken}\nagents: []\nbogus_key: 1\n", "broken.yaml")
    result = daemon.cli("deploy", str(broken))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_cli_secrets_set_list_delete_never_print_values(daemon, app_yaml):
    daemon.cli("deploy", str(app_yaml.minimal("vault")))
    set_arg = daemon.cli("secret", "set", "vault", "API_TOKEN", SECRET)
    assert set_arg.returncode == 0, set_arg.stderr
    assert "API_TOKEN set for vault" in set_arg.stdout

    # Value omitted and stdin not a terminal: read from the pipe.
    piped = daemon.cli("secret", "set", "vault", "OTHER", input=SECRET + "-2\n")
    assert piped.returncode == 0, piped.stderr
    assert daemon.client.get("/api/apps/vault/secrets/OTHER").json()["data"]["exists"] is True

    empty = daemon.cli("secret", "set", "vault", "EMPTY", input="")
    assert empty.returncode == 1
    assert "no value given" in empty.stderr

    listed = daemon.cli("secret", "list", "vault")
    assert listed.returncode == 0
    assert "API_TOKEN" in listed.stdout and "OTHER" in listed.stdout
    for output in (set_arg, piped, listed):
        assert SECRET not in output.stdout + output.stderr

    deleted = daemon.cli("secret", "delete", "vault", "OTHER")
    assert deleted.returncode == 0
    again = daemon.cli("secret", "delete", "vault", "OTHER")
    assert again.returncode == 1
    assert "OTHER" in again.stderr
    assert "OTHER" not in daemon.cli("secret", "list", "vault").stdout

    # Secrets may be set before the app is deployed (the original's order), so an app with none lists
    # as empty rather than failing.
    unknown_app = daemon.cli("secret", "list", "no-such-app")
    assert unknown_app.returncode == 0, unknown_app.stderr
    assert "no-such-app has no secrets" in unknown_app.stdout
    early = daemon.cli("secret", "set", "not-yet", "EARLY", SECRET)
    assert early.returncode == 0, early.stderr
    assert "not deployed yet" in early.stdout and SECRET not in early.stdout + early.stderr
    daemon.cli("secret", "delete", "not-yet", "EARLY")
    daemon.client.delete("/api/apps/vault")


def test_cli_tasks_and_approvals_listing(daemon, app_yaml):
    daemon.cli("deploy", str(app_yaml.minimal("ops")))
    tasks = daemon.cli("tasks", "ops")
    assert tasks.returncode == 0, tasks.stderr
    assert "no background tasks" in tasks.stdout
    approvals = daemon.cli("approvals", "ops")
    assert approvals.returncode == 0, approvals.stderr
    assert "no pending approval requests" in approvals.stdout

    (app_yaml.workspace / "notes.txt").write_text("hi")
    launched = daemon.client.post("/api/apps/ops/background-tasks",
                                  json={"tool": "filesystem.ls", "params": {"path": "."}})
    assert launched.status_code in (200, 201, 202), launched.text
    task_id = launched.json()["data"]["task_id"]
    waited = daemon.client.post(f"/api/apps/ops/background-tasks/{task_id}/wait", json={"timeout": 30})
    assert waited.json()["data"]["status"] == "completed", waited.text
    tasks = daemon.cli("tasks", "ops")
    assert task_id in tasks.stdout and "filesystem.ls" in tasks.stdout and "completed" in tasks.stdout
    filtered = daemon.cli("tasks", "ops", "--status", "failed")
    assert task_id not in filtered.stdout
    daemon.client.delete("/api/apps/ops")


def _chat_app(app_yaml, app_id: str):
    return app_yaml.minimal(
        app_id,
        rules=[
            {"when": "^list", "steps": [{"call": "filesystem.ls", "params": {"path": "."}},
                                        {"say": "listed: {result}"}]},
            {"when": "^save", "steps": [{"call": "filesystem.write",
                                         "params": {"path": "saved.txt", "content": "from chat"}},
                                        {"say": "write finished: {result}"}]},
            {"when": "", "steps": [{"say": "echo: {message}"}]},
        ],
        capabilities={"default_policy": "auto",
                      "approve": [{"module": "filesystem", "actions": ["write"], "reason": "writes files"}]},
        runtime={"hooks": [{"id": "hello", "on": "session_start",
                            "action": {"type": "notify", "title": "welcome", "message": "hooks run"}}]},
    )


def test_cli_chat_over_a_pipe_shows_tools_and_answers(daemon, app_yaml):
    daemon.cli("deploy", str(_chat_app(app_yaml, "chatty")))
    (app_yaml.workspace / "readme.md").write_text("# hi")
    result = daemon.cli("chat", "chatty", "--session", "pipe-1", input="hello there\nlist files\n/quit\n",
                        timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "chatting with chatty in session pipe-1" in out
    assert "echo: hello there" in out
    assert "→ filesystem.ls" in out
    assert "← filesystem.ls ok" in out and "readme.md" in out
    assert "listed:" in out
    # The order of the transcript is the order of the turn; a `notify` hook's notice is printed.
    assert out.index("· welcome: hooks run") < out.index("echo: hello there") < out.index("→ filesystem.ls")
    assert out.index("→ filesystem.ls") < out.index("listed:") and out.count("· welcome") == 1

    history = daemon.client.get("/api/apps/chatty/sessions/pipe-1/history").json()["data"]
    contents = [m["content"] for m in history["messages"] if m["role"] == "user"]
    assert contents == ["hello there", "list files"]


def test_cli_chat_asks_for_approval_and_posts_the_answer(daemon, app_yaml):
    daemon.cli("deploy", str(_chat_app(app_yaml, "guarded")))
    approved = daemon.cli("chat", "guarded", "--session", "appr-1", input="save it\ny\n", timeout=120)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "? approval needed: filesystem.write" in approved.stdout
    assert "approve? [y/N] y" in approved.stdout
    assert "write finished:" in approved.stdout
    assert (app_yaml.workspace / "saved.txt").read_text() == "from chat"

    (app_yaml.workspace / "saved.txt").unlink()
    denied = daemon.cli("chat", "guarded", "--session", "appr-2", input="save again\nn\n", timeout=120)
    assert denied.returncode == 0, denied.stdout + denied.stderr
    assert "? approval needed: filesystem.write" in denied.stdout
    assert "denied" in denied.stdout
    assert not (app_yaml.workspace / "saved.txt").exists()
    assert daemon.cli("approvals", "guarded").stdout.count("filesystem.write") == 0


def test_cli_chat_unknown_app_and_down_daemon(daemon):
    unknown = daemon.cli("chat", "no-such-app", input="hi\n")
    assert unknown.returncode == 1
    assert "no-such-app" in unknown.stderr

    down = daemon.cli("chat", "x", "--url", "http://127.0.0.1:9", input="hi\n")
    assert down.returncode == 2
    assert "digitorn is not running at http://127.0.0.1:9" in down.stderr


def test_apikey_create_authenticates_and_revoke_makes_it_401(daemon):
    created = daemon.cli("apikey", "create", "--name", "ci-bot", "--scopes", "apps:read")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("dg_")
    assert "cannot be shown again" in created.stderr

    ok = httpx.get(f"{daemon.url}/api/apps/", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert ok.status_code == 200, ok.text
    # The key has apps:read only.
    forbidden = httpx.post(f"{daemon.url}/api/apps/deploy", json={"yaml_path": "/nowhere.yaml"},
                           headers={"X-API-Key": key}, timeout=10)
    assert forbidden.status_code == 403

    listed = daemon.cli("apikey", "list", "--json")
    rows = json.loads(listed.stdout)
    row = next(r for r in rows if r["name"] == "ci-bot")
    assert row["scopes"] == ["apps:read"]
    assert key not in listed.stdout
    assert key.split("_")[1] == row["prefix"]

    revoked = daemon.cli("apikey", "revoke", row["prefix"])
    assert revoked.returncode == 0, revoked.stderr
    assert "no longer authenticates" in revoked.stdout
    after = httpx.get(f"{daemon.url}/api/apps/", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert after.status_code == 401
    assert after.json()["error_code"] == "UNAUTHORIZED"

    bad = daemon.cli("apikey", "create", "--name", "x", "--scopes", "root")
    assert bad.returncode == 1
    assert "unknown scope" in bad.stderr


def test_cli_uses_an_explicit_api_key(daemon):
    wrong = daemon.cli("apps", "--api-key", "dg_wrong")
    assert wrong.returncode == 1
    assert "UNAUTHORIZED" in wrong.stderr


class Pty:
    """Runs the CLI with a pseudo-terminal as stdin/stdout, like a person at a terminal."""

    def __init__(self, daemon, *args: str):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen([*CLI, *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=daemon.env, cwd=str(PROJECT_ROOT), close_fds=True)
        os.close(slave)
        self.buffer = b""

    def expect(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not seen; got {self.buffer.decode(errors='replace')!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    assert text.encode() in self.buffer, f"{text!r} not seen before EOF: {self.buffer!r}"
                self.buffer += chunk
        return self.buffer.decode(errors="replace")

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=60)
        os.close(self.master)
        return code


def test_secret_set_prompts_hidden_on_a_terminal(daemon, app_yaml):
    daemon.cli("deploy", str(app_yaml.minimal("tty-vault")))
    term = Pty(daemon, "secret", "set", "tty-vault", "TTY_KEY")
    term.expect("value for tty-vault/TTY_KEY (hidden): ")
    term.send(SECRET)
    out = term.expect("TTY_KEY set for tty-vault")
    assert term.close() == 0
    assert SECRET not in out  # getpass turned echo off
    assert daemon.client.get("/api/apps/tty-vault/secrets/TTY_KEY").json()["data"]["exists"] is True
    daemon.client.delete("/api/apps/tty-vault")


def test_chat_on_a_terminal_prompts_and_approves(daemon, app_yaml):
    daemon.cli("deploy", str(_chat_app(app_yaml, "tty-chat")))
    term = Pty(daemon, "chat", "tty-chat", "--session", "tty-1")
    term.expect("you> ")
    term.send("hello")
    term.expect("echo: hello")
    term.send("save now")
    term.expect("approve? [y/N] ")
    term.send("y")
    term.expect("write finished:")
    term.expect("you> ")
    term.send("/quit")
    assert term.close() == 0
    assert (app_yaml.workspace / "saved.txt").read_text() == "from chat"
    daemon.client.delete("/api/apps/tty-chat")


def test_secret_rotate_reencrypts_with_the_newest_key(daemon, app_yaml):
    daemon.cli("deploy", str(app_yaml.minimal("rotating")))
    assert daemon.cli("secret", "set", "rotating", "TOKEN", SECRET).returncode == 0
    old_keys = (daemon.data_dir / "encryption.keys").read_text().split()
    new_key = daemon.cli("secret", "genkey").stdout.strip()

    rotated = daemon.cli("secret", "rotate", env={"DIGITORN_ENCRYPTION_KEYS": ",".join([new_key, *old_keys])})
    assert rotated.returncode == 0, rotated.stderr
    assert "Re-encrypted" in rotated.stdout
    # Only the new key can read the rows now: rotating with the old one alone fails clearly.
    stale = daemon.cli("secret", "rotate", env={"DIGITORN_ENCRYPTION_KEYS": ",".join(old_keys)})
    assert stale.returncode == 1
    assert "cannot be decrypted" in stale.stderr
    assert "Traceback" not in stale.stderr
    assert daemon.cli("secret", "rotate", env={"DIGITORN_ENCRYPTION_KEYS": new_key}).returncode == 0
    # Put the daemon's own key back first so the rest of the module keeps working.
    back = daemon.cli("secret", "rotate", env={"DIGITORN_ENCRYPTION_KEYS": ",".join([*old_keys, new_key])})
    assert back.returncode == 0, back.stderr
    daemon.client.delete("/api/apps/rotating")


def test_harness_sse_helper_follows_a_turn_to_done(daemon, app_yaml):
    """The fixture's `sse()` helper other e2e tests rely on: attach, send, read until the turn's `result`."""
    daemon.deploy(_chat_app(app_yaml, "sse-helper"))

    def send():
        sent = daemon.client.post("/api/apps/sse-helper/sessions/h-1/messages", json={"message": "list it"})
        assert sent.status_code == 202, sent.text

    events = daemon.sse("/api/apps/sse-helper/sessions/h-1/events", until="result", on_open=send, timeout=60)
    types = [e["event"] for e in events]
    assert types[0] == "connected"
    assert types.index("tool_start") < types.index("tool_call") < types.index("result")
    assert events[-1]["data"]["content"].startswith("listed:")
    ids = [int(e["id"]) for e in events if e["id"] is not None and e["event"] != "connected"]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    daemon.client.delete("/api/apps/sse-helper")


def test_chat_reconnects_when_the_asgi_workers_die_between_turns(daemon, app_yaml):

    daemon.deploy(_chat_app(app_yaml, "resilient"))
    term = Pty(daemon, "chat", "resilient", "--session", "res-1")
    term.expect("you> ")
    term.send("first")
    term.expect("echo: first")
    term.expect("you> ")
    old = daemon.kill_children("asgi")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = daemon.child_pids("asgi")
        if len(current) == 2 and not set(current) & set(old):
            break
        time.sleep(0.2)
    term.send("second")
    term.expect("echo: second", timeout=90)
    term.send("/quit")
    assert term.close() == 0
    # Reconnecting with Last-Event-ID replayed nothing twice: one answer per message.
    assert term.buffer.decode(errors="replace").count("echo: first") == 1
    daemon.client.delete("/api/apps/resilient")
