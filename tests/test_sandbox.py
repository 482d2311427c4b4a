"""Sandbox escapes: path tricks, the daemon's data dir, shell limits and SSRF, all refused."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from apps_registry.manifest.compiled import CompiledApp
from tests.httpkit import QuietHandler, serving
from tooling.services import tool_invoke

pytestmark = pytest.mark.django_db

SECRET = "outside-secret-content"


@pytest.fixture
def layout(tmp_path):
    """A workspace beside an outside folder holding a secret, with links pointing out."""
    ws = tmp_path / "ws"
    outside = tmp_path / "outside"
    evil = tmp_path / "ws-evil"  # shares the workspace's name as a prefix
    for folder in (ws, outside, evil, ws / "sub"):
        folder.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (evil / "secret.txt").write_text(SECRET)
    (tmp_path / "outside.txt").write_text(SECRET)
    (ws / "inside.txt").write_text("inside")
    os.symlink(outside, ws / "link_out")
    os.symlink("/etc/passwd", ws / "passwd_link")
    os.symlink("..", ws / "up")
    os.symlink(outside / "secret.txt", ws / "chain_b")
    os.symlink("chain_b", ws / "chain_a")
    os.symlink(ws / "inside.txt", ws / "good_link")
    return ws, outside, tmp_path


def make_app(ws: Path, **modules) -> CompiledApp:
    config = {"filesystem": {"workspace": str(ws)}, "shell": {}, "database": {}, "http": {}}
    config.update(modules)
    return CompiledApp(app_id="sandbox", name="Sandbox", modules=config)


def call(app, tool, cancel_check=None, **params):
    return tool_invoke(
        app=app, tool_name=tool, params=params, caller="test", principal="tester", cancel_check=cancel_check
    )


def refused(outcome) -> bool:
    return outcome.status == "error" and SECRET not in str(outcome.data) and SECRET not in (outcome.error or "")


PATH_TRICKS = [
    ("filesystem.read", {"path": "../outside.txt"}),
    ("filesystem.read", {"path": "../../etc/passwd"}),
    ("filesystem.read", {"path": "/etc/passwd"}),
    ("filesystem.read", {"path": "sub/../../outside.txt"}),
    ("filesystem.read", {"path": "./../outside.txt"}),
    ("filesystem.read", {"path": "sub/../sub/../../outside/secret.txt"}),
    ("filesystem.read", {"path": "link_out/secret.txt"}),
    ("filesystem.read", {"path": "passwd_link"}),
    ("filesystem.read", {"path": "up/outside.txt"}),
    ("filesystem.read", {"path": "chain_a"}),
    ("filesystem.read", {"path": "inside.txt\x00../../outside.txt"}),
    ("filesystem.read", {"path": "{evil}/secret.txt"}),
    ("filesystem.ls", {"path": ".."}),
    ("filesystem.ls", {"path": "/"}),
    ("filesystem.ls", {"path": "link_out"}),
    ("filesystem.stat", {"path": "../outside.txt"}),
    ("filesystem.write", {"path": "../planted.txt", "content": "x"}),
    ("filesystem.write", {"path": "link_out/planted.txt", "content": "x"}),
    ("filesystem.edit", {"path": "chain_a", "old_string": "outside", "new_string": "x"}),
    ("filesystem.mkdir", {"path": "../newdir"}),
    ("filesystem.move", {"source": "inside.txt", "destination": "../moved.txt"}),
    ("filesystem.move", {"source": "../outside.txt", "destination": "stolen.txt"}),
    ("filesystem.copy", {"source": "/etc/hostname", "destination": "host.txt"}),
    ("filesystem.copy", {"source": "link_out", "destination": "copied"}),
    ("filesystem.delete", {"path": "..", "recursive": True}),
    ("filesystem.delete", {"path": ".", "recursive": True}),
    ("filesystem.delete", {"path": "up/outside.txt"}),
    ("filesystem.find", {"pattern": "*.txt", "path": ".."}),
    ("filesystem.find", {"pattern": "../*"}),
    ("filesystem.grep", {"pattern": "secret", "path": "/etc"}),
    ("filesystem.grep", {"pattern": "outside", "path": "../outside"}),
    ("shell.run", {"command": "pwd", "cwd": ".."}),
    ("shell.run", {"command": "pwd", "cwd": "link_out"}),
    ("database.query", {"sql": "SELECT 1"}),  # with url outside the workspace, below
]


@pytest.mark.parametrize(("tool", "params"), PATH_TRICKS, ids=[f"{i}-{t}" for i, (t, _) in enumerate(PATH_TRICKS)])
def test_path_tricks_are_refused(layout, tool, params):
    ws, outside, tmp = layout
    params = {k: v.replace("{evil}", str(tmp / "ws-evil")) if isinstance(v, str) else v for k, v in params.items()}
    app = make_app(ws, database={"url": "sqlite:///../outside.db"})
    before = {p: p.read_text() for p in (tmp / "outside.txt", outside / "secret.txt")}
    outcome = call(app, tool, **params)
    assert refused(outcome), (tool, params, outcome)
    assert "workspace" in outcome.error or "NUL" in outcome.error or "pattern" in outcome.error, outcome.error
    # Nothing outside changed or appeared; the workspace itself survived.
    assert {p: p.read_text() for p in before} == before
    assert not (tmp / "planted.txt").exists() and not (outside / "planted.txt").exists()
    assert not (tmp / "newdir").exists() and not (tmp / "moved.txt").exists() and not (tmp / "outside.db").exists()
    assert (ws / "inside.txt").read_text() == "inside"


def test_links_that_stay_inside_still_work_and_find_does_not_follow_links_out(layout):
    ws, _outside, _tmp = layout
    app = make_app(ws)
    outcome = call(app, "filesystem.read", path="good_link")
    assert outcome.status == "ok" and outcome.data["content"] == "inside"
    found = call(app, "filesystem.find", pattern="*.txt")
    assert found.status == "ok" and found.data["files"] == ["inside.txt"]
    grep = call(app, "filesystem.grep", pattern="secret")
    assert grep.status == "ok" and grep.data["count"] == 0


def test_a_link_created_by_the_shell_does_not_open_a_way_out(layout):
    ws, outside, _tmp = layout
    app = make_app(ws)
    assert call(app, "shell.run", command=f"ln -s {outside}/secret.txt made_link").status == "ok"
    assert refused(call(app, "filesystem.read", path="made_link"))


def test_the_daemon_data_dir_is_never_readable_even_inside_the_workspace(tmp_path, settings):
    ws = tmp_path / "home"
    data_dir = ws / ".digitorn"
    data_dir.mkdir(parents=True)
    (data_dir / "admin.key").write_text(SECRET)
    (ws / "ok.txt").write_text("fine")
    settings.DATA_DIR = data_dir
    app = make_app(ws)
    for tool, params in [
        ("filesystem.read", {"path": ".digitorn/admin.key"}),
        ("filesystem.read", {"path": str(data_dir / "admin.key")}),
        ("filesystem.ls", {"path": ".digitorn"}),
        ("filesystem.copy", {"source": ".digitorn", "destination": "stolen"}),
    ]:
        outcome = call(app, tool, **params)
        assert refused(outcome) and "data dir" in outcome.error, (tool, outcome.error)
    listing = call(app, "filesystem.ls")
    assert [e["name"] for e in listing.data["entries"]] == ["ok.txt"]
    assert call(app, "filesystem.find", pattern="*").data["files"] == ["ok.txt"]
    assert call(app, "filesystem.grep", pattern="outside").data["count"] == 0
    # A workspace configured inside the data dir (but not the app's own folder) is refused outright.
    inside = make_app(data_dir)
    outcome = call(inside, "filesystem.ls")
    assert outcome.status == "error" and "data dir" in outcome.error


# -- shell limits ------------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _host_sleeps(marker: str) -> list[str]:
    """Host processes running ``sleep <marker>`` (pids inside the sandbox's namespace mean nothing here)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and not _gone(int(entry)):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"sleep {marker}" in cmdline:
                found.append(entry)
    return found


def _wait_no_sleep(marker: str) -> bool:
    for _ in range(100):
        if not _host_sleeps(marker):
            return True
        time.sleep(0.05)
    return False


def test_shell_timeout_kills_the_whole_process_group(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    app = make_app(ws)
    marker = f"{os.getpid()}.{time.time_ns() % 1000}1"
    outcome = call(app, "shell.run", command=f"sleep {marker} & echo started; wait", timeout=1)
    assert outcome.status == "error" and "killed after 1 s" in outcome.error
    assert outcome.data["timed_out"] is True and outcome.data["stdout"] == "started\n"
    assert _wait_no_sleep(marker)


def test_shell_timeout_param_is_capped_by_max_timeout(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    app = make_app(ws, shell={"max_timeout": 1})
    outcome = call(app, "shell.run", command="sleep 30", timeout=500)
    assert outcome.status == "error" and outcome.data["timed_out"] is True and "killed after 1 s" in outcome.error


def test_shell_cancel_check_terminates_the_command(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    app = make_app(ws)
    flag = threading.Event()
    threading.Timer(0.3, flag.set).start()
    marker = f"{os.getpid()}.{time.time_ns() % 1000}2"
    outcome = call(app, "shell.run", cancel_check=flag.is_set, command=f"sleep {marker} & wait")
    assert outcome.status == "error" and "cancelled" in outcome.error and outcome.data["cancelled"] is True
    assert _wait_no_sleep(marker)


def test_shell_output_is_capped_per_stream(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    app = make_app(ws, shell={"max_output_bytes": 1000})
    outcome = call(app, "shell.run", command="head -c 3000000 /dev/zero | tr '\\0' a; echo done >&2")
    assert outcome.status == "ok", outcome.error
    assert outcome.data["stdout"] == "a" * 1000 and outcome.data["truncated"] is True
    assert outcome.data["stderr"] == "done\n"


# -- SSRF --------------------------------------------------------------------------------------


class _Hit(QuietHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def loopback_server():
    _Hit.hits = 0
    with serving(_Hit) as url:
        yield urlsplit(url).port


SSRF_TARGETS = [
    "http://127.0.0.1:{port}/",
    "http://localhost:{port}/",
    "http://127.1:{port}/",
    "http://2130706433:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://0.0.0.0:{port}/",
    "http://10.0.0.1/",
    "http://10.255.255.254:8080/admin",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "https://[fe80::1]/",
]


@pytest.mark.parametrize("target", SSRF_TARGETS)
def test_ssrf_targets_are_refused(tmp_path, loopback_server, target):
    app = make_app(tmp_path)
    outcome = call(app, "http.get", url=target.format(port=loopback_server))
    assert outcome.status == "error" and "allowed_hosts" in outcome.error, outcome.error
    assert _Hit.hits == 0


def test_allowed_hosts_exempt_only_the_named_host(tmp_path, loopback_server):
    app = make_app(tmp_path, http={"allowed_hosts": ["127.0.0.1"]})
    assert call(app, "http.get", url=f"http://127.0.0.1:{loopback_server}/").data["body"] == "ok"
    outcome = call(app, "http.get", url=f"http://localhost:{loopback_server}/")
    assert outcome.status == "error" and "allowed_hosts" in outcome.error
    assert _Hit.hits == 1
