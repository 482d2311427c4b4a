"""`digitorn start/stop/status` as a user runs them: real processes, real sockets, real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys

import httpx
import pytest
from conftest import (
    CLI,
    DEFAULT_CELERY_WORKERS,
    PROJECT_ROOT,
    _proc_alive,
    daemon_env,
    free_port,
    isolated_backends,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_start_two_workers_serves_health_and_records_every_process(daemon):
    health = httpx.get(f"{daemon.url}/api/health", timeout=5).json()
    assert health["success"] is True
    assert health["data"]["database"]["ok"] is True

    state = daemon.pid_state()
    assert state["url"] == daemon.url
    assert state["port"] == daemon.port
    roles = sorted(c["role"] for c in state["children"])
    # The scheduler is a thread of the first Celery worker, not a process of its own (issue 14).
    assert roles == ["asgi", "asgi", *["celery"] * DEFAULT_CELERY_WORKERS]
    assert state["beat"] is True
    for pid, starttime in daemon.processes():
        assert _proc_alive(pid, starttime), f"pid {pid} from the pid file is not running"
    # The pid file is private to the operator.
    assert stat.S_IMODE((daemon.data_dir / "daemon.json").stat().st_mode) == 0o600


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on ``port`` (IPv4 and IPv6), from /proc/net/tcp*."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _sockets_of(pid: int) -> set[str]:
    links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return {link for link in links if link.startswith("socket:")}


def test_each_asgi_worker_listens_on_its_own_socket_of_the_one_port(daemon):
    """SO_REUSEPORT: one listening socket per worker on the daemon's port, so the kernel spreads
    connections evenly; the supervisor holds them all, so a restarting worker's queue waits."""
    asgi = daemon.child_pids("asgi")
    assert len(asgi) == 2
    listening = _listening_inodes(daemon.port)
    per_worker = [_sockets_of(pid) & listening for pid in asgi]
    assert all(len(socks) == 1 for socks in per_worker), per_worker
    assert per_worker[0] != per_worker[1], "the two workers share one socket"
    assert per_worker[0] | per_worker[1] <= _sockets_of(daemon.pid_state()["pid"])


def _server_side_inode(client_port: int, server_port: int) -> str | None:
    """The accepted socket of a connection, found by its ports in /proc/net/tcp (ESTABLISHED)."""
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if local == server_port and remote == client_port and fields[3] == "01":
                return f"socket:[{fields[9]}]"
    return None


def test_connections_reach_both_asgi_workers(daemon):
    asgi = daemon.child_pids("asgi")
    served: set[int] = set()
    for _ in range(40):  # fresh connections: the kernel hashes each one to a worker's socket
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as conn:
            conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200")  # accepted and answered by a worker
            inode = _server_side_inode(conn.getsockname()[1], daemon.port)
            served.update(pid for pid in asgi if inode in _sockets_of(pid))
        if len(served) == 2:
            break
    assert served == set(asgi), f"40 connections all went to {served}"


def test_status_reports_url_processes_and_health(daemon):
    result = daemon.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["url"] == daemon.url
    assert payload["running"] is True
    assert payload["health"]["status"] == "ok"

    human = daemon.cli("status")
    assert human.returncode == 0
    assert daemon.url in human.stdout
    assert "asgi-1" in human.stdout and "celery-1" in human.stdout


def test_second_start_says_already_running(daemon):
    result = daemon.cli("start", "--port", str(free_port()))
    assert result.returncode == 1
    assert "already running" in result.stdout
    assert daemon.url in result.stdout
    # And the first daemon is untouched.
    assert httpx.get(f"{daemon.url}/api/health", timeout=5).status_code == 200


@pytest.mark.parametrize("name", ["asgi-1", "celery-1"])
def test_killed_child_is_restarted_and_service_continues(daemon, name):
    before = {c["name"]: c for c in daemon.pid_state()["children"]}
    victim = before[name]["pid"]
    restarts = before[name]["restarts"]
    os.kill(victim, signal.SIGKILL)

    def restarted():
        state = daemon.pid_state() or {}
        child = next((c for c in state.get("children", []) if c["name"] == name), None)
        return child if child and child["pid"] not in (None, victim) and child["restarts"] > restarts else None

    child = wait_for(restarted, timeout=30)
    assert child, f"{name} was not restarted:\n{daemon.log_tail()}"
    assert _proc_alive(child["pid"], child["starttime"])
    for _ in range(10):
        assert httpx.get(f"{daemon.url}/api/health", timeout=5).status_code == 200
    assert f"{name} exited unexpectedly with code -9" in daemon.log_tail(400)


def test_stop_leaves_no_process_and_a_second_stop_is_harmless(daemon_factory):
    running = daemon_factory(workers=1, celery_workers=1)
    processes = running.processes()
    assert len(processes) == 3  # supervisor, 1 ASGI worker, 1 Celery worker (with the scheduler)
    running.stop()  # asserts nothing is left and the pid file is gone
    for pid, starttime in processes:
        assert not _proc_alive(pid, starttime)

    again = running.cli("stop")
    assert again.returncode == 0
    assert "not running" in again.stdout

    # With the pid file gone the CLI needs to be told where the daemon was.
    down = running.cli("apps", env={"DIGITORN_URL": running.url})
    assert down.returncode == 2
    assert f"digitorn is not running at {running.url}" in down.stderr
    assert "digitorn start" in down.stderr


def _process_tree(pid: int) -> list[int]:
    """pid and every descendant, from /proc (what `ps --forest` shows)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(parents.get(current, []))
    return out


def test_embedded_daemon_is_three_processes_with_the_scheduler_in_the_celery_worker(daemon_factory):
    """Issue 14: no beat process and, on the embedded broker, no prefork pool processes; the
    periodic tasks still run (the scheduler tick moves on after the worker's start-up sweep)."""
    running = daemon_factory(workers=1, celery_workers=1)
    state = running.pid_state()
    tree = _process_tree(state["pid"])
    embedded = not running.env.get("REDIS_URL")
    if embedded:  # with Redis the worker keeps its prefork pool (CPU-bound tasks scale out there)
        assert len(tree) == 3, tree
    assert sorted(c["role"] for c in state["children"]) == ["asgi", "celery"]

    def tick():
        return running.client.get("/api/health").json()["data"]["scheduler"]["last_tick"]

    first = wait_for(tick, timeout=60)
    assert first, running.log_tail()
    # The sweep is scheduled every 10 s: a later tick can only come from the scheduler.
    assert wait_for(lambda: (tick() or "") > first, timeout=60), running.log_tail()
    assert "periodic scheduler running in this worker" in running.log_tail(400)


def test_supervisor_never_imports_django(tmp_path):
    """The supervisor holds ~16 MiB instead of the app's ~90 (issue 14): it builds its children
    from its arguments and the environment alone."""
    code = (
        "import sys\n"
        "from digitorn_site.cli import supervisor\n"
        "s = supervisor.Supervisor(listen_fd=0, host='127.0.0.1', port=1, workers=2, celery_workers=2)\n"
        "s.build_children()\n"
        "assert [c.role for c in s.children] == ['asgi', 'asgi', 'celery', 'celery'], s.children\n"
        "assert 'threads' in s.children[2].argv and 'DIGITORN_EMBEDDED_BEAT' in s.children[2].env\n"
        "assert 'DIGITORN_EMBEDDED_BEAT' not in s.children[3].env\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'celery', 'rest_framework')))\n"
    )
    env = {**os.environ, "DIGITORN_DATA_DIR": str(tmp_path / "data")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=str(PROJECT_ROOT), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        env = daemon_env(tmp_path / "data", "dg_test_port")
        result = subprocess.run([*CLI, "start", "--port", str(port)], capture_output=True, text=True,
                                timeout=60, env=env, cwd=str(PROJECT_ROOT))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port" in result.stderr
    assert not (tmp_path / "data" / "daemon.json").exists()


def test_stale_pid_file_is_reported_and_replaced(daemon_factory, tmp_path):
    data_dir = tmp_path / "stale"
    data_dir.mkdir()
    # A pid that cannot be ours: a process that already exited.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (data_dir / "daemon.json").write_text(json.dumps(
        {"pid": dead.pid, "starttime": 1, "url": "http://127.0.0.1:9", "children": []}))
    env = daemon_env(data_dir, "dg_test_stale")

    status = subprocess.run([*CLI, "status"], capture_output=True, text=True, timeout=60, env=env,
                            cwd=str(PROJECT_ROOT))
    assert status.returncode == 2
    assert "stale pid file" in status.stdout

    stop = subprocess.run([*CLI, "stop"], capture_output=True, text=True, timeout=60, env=env,
                          cwd=str(PROJECT_ROOT))
    assert stop.returncode == 0
    assert "stale pid file" in stop.stdout
    assert not (data_dir / "daemon.json").exists()


def test_generated_admin_key_is_private_and_used_by_the_cli(tmp_path):
    """Without DIGITORN_API_KEY the first start writes admin.key (0600) and the CLI reads it."""
    data_dir = tmp_path / "keyless"
    backends, cleanups = isolated_backends()
    env = daemon_env(data_dir, "", backends)
    env.pop("DIGITORN_API_KEY")
    port = free_port()
    start = subprocess.run([*CLI, "start", "--port", str(port), "--celery-workers", "0", "--no-beat",
                            "--grace", "5"], capture_output=True, text=True, timeout=180, env=env,
                           cwd=str(PROJECT_ROOT))
    try:
        assert start.returncode == 0, start.stderr
        key_file = data_dir / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert key.startswith("dg_") and len(key) > 30
        assert str(key_file) in start.stdout
        assert key not in start.stdout  # the path is printed, never the key itself

        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/api/apps/", timeout=5).status_code == 401
        authed = httpx.get(f"{url}/api/apps/", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert authed.status_code == 200, authed.text

        apps = subprocess.run([*CLI, "apps"], capture_output=True, text=True, timeout=60, env=env,
                              cwd=str(PROJECT_ROOT))
        assert apps.returncode == 0, apps.stderr
    finally:
        state = json.loads((data_dir / "daemon.json").read_text()) if (data_dir / "daemon.json").exists() else {}
        stop = subprocess.run([*CLI, "stop"], capture_output=True, text=True, timeout=90, env=env,
                              cwd=str(PROJECT_ROOT))
        assert stop.returncode == 0, stop.stderr
        pids = [(state.get("pid"), state.get("starttime"))] + [
            (c["pid"], c.get("starttime")) for c in state.get("children", [])]
        assert not [p for p, s in pids if p and _proc_alive(p, s)]
        for cleanup in cleanups:
            cleanup()


def test_supervisor_sigkill_takes_its_children_down(daemon_factory):
    """A SIGKILLed supervisor leaves no orphan serving the port; stop then cleans the stale state."""
    running = daemon_factory(workers=1)
    processes = running.processes()
    os.kill(running.pid_state()["pid"], signal.SIGKILL)
    gone = wait_for(lambda: not any(_proc_alive(p, s) for p, s in processes), timeout=30)
    assert gone, f"children outlived their supervisor: {[p for p, s in processes if _proc_alive(p, s)]}"

    # The next start in that data dir clears the stale pid file and serves again on the same port.
    again = running.cli("start", "--port", str(running.port), "--workers", "1", "--celery-workers", "0",
                        "--no-beat", "--grace", "5", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed a stale pid file" in again.stdout
    assert running.pid_state()["pid"] != processes[0][0]
    assert running.client.get("/api/apps/").status_code == 200


def test_worker_command_runs_background_tasks_for_a_daemon_without_celery(daemon_factory, app_yaml):
    """`digitorn worker` is the Celery-only process for other hosts: it consumes the daemon's tasks."""
    running = daemon_factory(workers=1, celery_workers=0, args=("--no-beat",))
    assert [c["role"] for c in running.pid_state()["children"]] == ["asgi"]
    running.deploy(app_yaml.minimal("remote-worker"))
    (app_yaml.workspace / "a.txt").write_text("a")

    worker = subprocess.Popen([*CLI, "worker", "--concurrency", "1"], env=running.env, cwd=str(PROJECT_ROOT),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        launched = running.client.post("/api/apps/remote-worker/background-tasks",
                                       json={"tool": "filesystem.ls", "params": {"path": "."}})
        assert launched.status_code in (200, 201, 202), launched.text
        task_id = launched.json()["data"]["task_id"]
        waited = running.client.post(f"/api/apps/remote-worker/background-tasks/{task_id}/wait",
                                     json={"timeout": 60}, timeout=90)
        task = waited.json()["data"]
        assert task["status"] == "completed", task
        assert "a.txt" in json.dumps(task["result"])
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert "celery" in output.lower()
    assert worker.returncode is not None


def test_foreground_start_serves_until_sigterm_then_cleans_up(tmp_path):
    data_dir = tmp_path / "fg"
    backends, cleanups = isolated_backends()
    env = daemon_env(data_dir, "dg_test_fg", backends)
    port = free_port()
    proc = subprocess.Popen([*CLI, "start", "--foreground", "--port", str(port), "--celery-workers", "0",
                             "--no-beat", "--grace", "5"], env=env, cwd=str(PROJECT_ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(healthy, timeout=90), "foreground daemon never answered /api/health"
        state = json.loads((data_dir / "daemon.json").read_text())
        assert state["pid"] == proc.pid  # the foreground process is the supervisor itself
        children = [(c["pid"], c["starttime"]) for c in state["children"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    for cleanup in cleanups:
        cleanup()
    assert proc.returncode == 0, output
    assert f"digitorn starting in the foreground at http://127.0.0.1:{port}" in output
    assert not [p for p, s in children if _proc_alive(p, s)]
    assert not (data_dir / "daemon.json").exists()


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace_period(daemon_factory):
    running = daemon_factory(workers=1, celery_workers=0, args=("--no-beat",))
    stuck = running.child_pids("asgi")[0]
    os.kill(stuck, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    running.stop()  # asserts that nothing is left
    assert "asgi-1" in running.log_tail(50) and "did not stop in 5s; killing it" in running.log_tail(50)


def test_stop_kills_an_unresponsive_supervisor(daemon_factory):
    running = daemon_factory(workers=1, celery_workers=0, args=("--no-beat",))
    processes = running.processes()
    os.kill(running.pid_state()["pid"], signal.SIGSTOP)
    result = running.cli("stop", "--timeout", "1", timeout=60)
    running.stopped = True  # stopped here, by hand
    running.client.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "did not stop within 6s; killing the daemon's processes" in result.stdout
    assert not [p for p, s in processes if _proc_alive(p, s)]
    assert not (running.data_dir / "daemon.json").exists()
    for cleanup in running.cleanups:
        cleanup()


def test_api_and_admin_run_their_own_middleware_chains(daemon):
    """/api/* skips sessions and CSRF (key auth only) but keeps the security headers and the Host
    check; the admin keeps Django's full chain (its login form sets the CSRF cookie)."""
    api = httpx.get(f"{daemon.url}/api/apps/", headers={"Authorization": f"Bearer {daemon.key}"}, timeout=5)
    assert api.status_code == 200
    assert api.headers["x-content-type-options"] == "nosniff" and api.headers["x-frame-options"] == "DENY"
    assert "set-cookie" not in api.headers
    rebound = httpx.get(f"{daemon.url}/api/health", headers={"Host": "attacker.example"}, timeout=5)
    assert rebound.status_code == 400 and rebound.json()["error_code"] == "VALIDATION_ERROR"
    admin = httpx.get(f"{daemon.url}/admin/login/", timeout=5)
    assert admin.status_code == 200 and "csrftoken=" in admin.headers.get("set-cookie", "")
    assert admin.headers["x-frame-options"] == "DENY"
