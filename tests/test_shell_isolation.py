"""shell.run is isolated from the daemon: the attacks of issue #10 item 3, performed for real.

Each test runs a real command through ``tool_invoke`` (or the module in a real child process) and
looks at the host afterwards: which files exist, which processes still run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from apps_registry.manifest.compiled import CompiledApp
from tooling import sandbox
from tooling.services import tool_invoke

pytestmark = pytest.mark.django_db

SECRET = "daemon-only-secret-7f3a"


def make_app(ws: Path | None, **shell) -> CompiledApp:
    modules = {"shell": {**({"workspace": str(ws)} if ws else {}), **shell}}
    return CompiledApp(app_id="iso", name="Iso", modules=modules)


def run(app, command, **params):
    return tool_invoke(
        app=app, tool_name="shell.run", params={"command": command, **params}, caller="test", principal="t"
    )


def host_pids_running(marker: str) -> list[int]:
    """Host processes whose command line contains ``marker`` (the sandbox's own pids differ)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state not in ("Z", "X") and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def wait_no_process(marker: str, seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := host_pids_running(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def data_dir_secret(settings, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "django-secret.key").write_text(SECRET)
    settings.DATA_DIR = data_dir
    return data_dir


def test_the_data_dir_is_not_visible_to_commands(data_dir_secret, ws):
    for app in (make_app(ws), make_app(None)):  # a workspace of its own, and the default one inside the data dir
        outcome = run(app, f"cat {data_dir_secret}/django-secret.key; ls -a {data_dir_secret}; "
                           f"cat ../../django-secret.key; find / -name django-secret.key 2>/dev/null; true")
        assert SECRET not in str(outcome.data), outcome.data
        assert "django-secret.key" not in outcome.data["stdout"]


def test_a_workspace_that_contains_the_data_dir_sees_it_empty(settings, tmp_path):
    ws = tmp_path / "home"
    data_dir = ws / ".digitorn"
    data_dir.mkdir(parents=True)
    (data_dir / "django-secret.key").write_text(SECRET)
    settings.DATA_DIR = data_dir
    outcome = run(make_app(ws), "ls -a .digitorn; cat .digitorn/django-secret.key; echo x > .digitorn/planted; true")
    assert SECRET not in str(outcome.data)
    assert sorted(os.listdir(data_dir)) == ["django-secret.key"]


def test_the_daemons_environment_and_processes_are_out_of_reach(ws, monkeypatch):
    monkeypatch.setenv("DIGITORN_API_KEY", SECRET)
    outcome = run(
        make_app(ws),
        "cat /proc/$PPID/environ /proc/1/environ; for f in /proc/[0-9]*/environ; do cat $f; done; "
        "echo; echo pids: $(ls -d /proc/[0-9]* | wc -l)",
    )
    assert outcome.status == "ok", outcome.error
    assert SECRET not in str(outcome.data)
    # A fresh PID namespace: the sandbox's init, sh, and the few commands of this line; not the host's.
    assert int(outcome.data["stdout"].rsplit("pids:", 1)[1]) < 8, outcome.data["stdout"]


def test_writes_outside_the_workspace_do_not_reach_the_host(ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    tag = uuid.uuid4().hex
    outcome = run(
        make_app(ws),
        f"echo x > {outside}/planted; echo x > $HOME/../planted; echo x > /tmp/planted-{tag}; "
        f"touch /usr/planted-{tag} /etc/planted-{tag}; echo inside > ok.txt; true",
    )
    assert outcome.status == "ok", outcome.error
    try:
        assert not (outside / "planted").exists() and not (tmp_path / "planted").exists()
        assert not Path(f"/tmp/planted-{tag}").exists() and not Path(f"/usr/planted-{tag}").exists()
        assert not Path(f"/etc/planted-{tag}").exists()
        assert (ws / "ok.txt").read_text() == "inside\n"
    finally:
        for path in (f"/tmp/planted-{tag}", f"/usr/planted-{tag}", f"/etc/planted-{tag}"):
            Path(path).unlink(missing_ok=True)


def test_setsid_children_die_at_the_timeout_and_after_a_normal_exit(ws):
    marker = f"{time.time_ns() % 10**6 + 3000}.{os.getpid()}"
    outcome = run(make_app(ws), f"setsid sleep {marker} & (sleep {marker} &) ; echo started; sleep 30", timeout=1)
    assert outcome.status == "error" and outcome.data["timed_out"] is True
    assert wait_no_process(f"sleep {marker}") == []
    marker2 = marker + "1"
    outcome = run(make_app(ws), f"setsid sleep {marker2} & nohup sleep {marker2} >/dev/null 2>&1 & echo done")
    assert outcome.status == "ok" and outcome.data["stdout"] == "done\n"
    assert wait_no_process(f"sleep {marker2}") == []


def test_resource_limits_apply_inside(ws):
    app = make_app(ws, limits={"cpu_seconds": 7, "memory_mb": 512, "max_processes": 50, "max_file_mb": 2})
    outcome = run(app, "ulimit -t; ulimit -v; ulimit -p 2>/dev/null || ulimit -u; ulimit -f")
    assert outcome.status == "ok", outcome.error
    cpu, mem, nproc, fsize = outcome.data["stdout"].split()
    assert (cpu, mem, nproc) == ("7", str(512 * 1024), "50") and int(fsize) == 2 * 1024 * 1024 // 512
    big = run(app, "head -c 5000000 /dev/zero > big.bin")
    assert big.status == "error" and (ws / "big.bin").stat().st_size <= 2 * 1024 * 1024
    hog = run(app, "python3 -c 'x = bytearray(1024 * 1024 * 1024)'")
    assert hog.status == "error" and "MemoryError" in hog.data["stderr"]


def test_process_count_is_capped_whoever_the_daemon_runs_as(ws):
    """A fork storm stops at max_processes (an rlimit for other users, a pids cgroup for root)."""
    marker = f"{time.time_ns() % 10**6 + 7000}.{os.getpid()}"
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(len(host_pids_running(f"sleep {marker}")))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outcome = run(
            make_app(ws, limits={"max_processes": 30}),
            f"i=0; while [ $i -lt 200 ]; do sleep {marker} 2>/dev/null & i=$((i+1)); done; sleep 2; wait",
            timeout=6,
        )
    finally:
        stop.set()
        watcher.join()
    assert outcome.status == "error"
    assert seen and max(seen) <= 30, max(seen)
    assert wait_no_process(f"sleep {marker}") == []


def test_memory_is_capped_for_the_whole_command_not_only_per_process(ws):
    """Four processes of 150 MB each fit the per-process limit (256 MB), not the command's total."""
    app = make_app(ws, limits={"memory_mb": 256})
    hog = "import time; b = bytearray(150 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(2); print('ok')"
    outcome = run(app, f'for i in 1 2 3 4; do python3 -c "{hog}" & done; wait', timeout=60)
    assert outcome.data["stdout"].count("ok") < 4, outcome.data


def test_no_network_unless_the_app_allows_it(ws):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    probe = f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('connected')\""
    try:
        closed = run(make_app(ws), probe)
        assert closed.status == "error" and "connected" not in closed.data["stdout"]
        opened = run(make_app(ws, network=True), probe)
        assert opened.status == "ok" and opened.data["stdout"] == "connected\n", opened.error
    finally:
        server.close()


def test_without_bubblewrap_the_shell_refuses_unless_the_operator_opts_out(ws, monkeypatch, tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.delenv(sandbox.ENV_SETTING, raising=False)
    sandbox._probe.cache_clear()
    try:
        outcome = run(make_app(ws), "echo hi > ran.txt")
        assert outcome.status == "error"
        assert "bubblewrap" in outcome.error and f"{sandbox.ENV_SETTING}=off" in outcome.error
        assert not (ws / "ran.txt").exists()
        monkeypatch.setenv(sandbox.ENV_SETTING, "off")
        assert run(make_app(ws), "echo hi > ran.txt").status == "ok"
        assert (ws / "ran.txt").read_text() == "hi\n"
    finally:
        sandbox._probe.cache_clear()


def test_a_killed_worker_takes_its_command_down(ws, tmp_path, settings):
    """A stand-in Celery worker (a real process running the shell module) is SIGKILLed mid-command."""
    marker = f"{time.time_ns() % 10**6 + 5000}.{uuid.uuid4().int % 1000}"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import django, os
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
        django.setup()
        from tooling.modules.base import ToolContext
        from tooling.modules.shell import ShellModule
        module = ShellModule(config={{"workspace": {str(ws)!r}}}, context=ToolContext(app_id="w"))
        module.invoke_action("run", {{"command": "sleep {marker} & setsid sleep {marker} & echo up > up.txt; wait",
                                      "timeout": 120}})
    """))
    env = {**os.environ, "DIGITORN_DATA_DIR": str(settings.DATA_DIR)}
    for mode in ("bwrap", "off"):
        (ws / "up.txt").unlink(missing_ok=True)
        env[sandbox.ENV_SETTING] = mode
        worker = subprocess.Popen([sys.executable, str(script)], env=env, cwd=Path(__file__).parent.parent)
        try:
            deadline = time.monotonic() + 60
            while not (ws / "up.txt").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (ws / "up.txt").exists(), mode
            assert host_pids_running(f"sleep {marker}"), mode
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            left = wait_no_process(f"sleep {marker}")
            if mode == "off":
                # Without the sandbox only the direct child dies with the worker (pdeathsig); the
                # opt-out documents that. The sandbox takes every descendant down.
                for pid in left:
                    os.kill(pid, signal.SIGKILL)
            else:
                assert left == [], mode
        finally:
            if worker.poll() is None:
                worker.kill()
    # The dead worker's per-command cgroups are swept by the next command.
    stale = f"digitorn-shell-{worker.pid}-"
    run(make_app(ws), "true")
    for controller in ("pids", "memory"):
        parent = sandbox._cgroup_parent(controller)
        if parent is not None:
            assert not [n for n in os.listdir(parent) if n.startswith(stale)], controller


# -- allowed / blocked commands are checked as /bin/sh reads the line -------------------------

ALLOWED = ["ls", "echo"]
BYPASSES = [
    "ls a#b; cat /etc/hostname",
    "ls a#b\ncat /etc/hostname",
    "echo ok & cat /etc/hostname",
    "echo `cat /etc/hostname`",
    'echo "$(cat /etc/hostname)"',
    "echo ${x:-$(cat /etc/hostname)}",
    "echo $((1 + $(cat /etc/hostname)))",
    "(cat /etc/hostname)",
    "{ cat /etc/hostname; }",
    "if ls; then cat /etc/hostname; fi",
    "ls | while read x; do cat /etc/hostname; done",
    "for x in 1; do cat /etc/hostname; done",
    "$(echo cat) /etc/hostname",
    "c''at /etc/hostname",
    "\\cat /etc/hostname",
    "l* /etc/hostname",
    "echo 'unbalanced",
    "PATH=/tmp ls",
    "ls > x\ncat<<EOF\nhi\nEOF",
    "case x in x) cat /etc/hostname;; esac",
    "./ls /etc/hostname",
    "/tmp/ls",
    "/usr/../tmp/ls",
    "echo ok >",
]


@pytest.mark.parametrize("command", BYPASSES)
def test_allowed_commands_cannot_be_bypassed(ws, command):
    outcome = run(make_app(ws, allowed_commands=ALLOWED), command)
    assert outcome.status == "error" and outcome.data is None, (command, outcome)
    assert "params.command" in outcome.error


BLOCKED_BYPASSES = [
    "echo a#b; rm -f keep.txt",
    "env rm -f keep.txt",
    "env FOO=1 rm -f keep.txt",
    "timeout 5 rm -f keep.txt",
    "nice -n 5 /bin/rm -f keep.txt",
    "xargs rm -f < list.txt",
    "find . -name keep.txt -exec rm {} ;",
    "sh -c 'rm -f keep.txt'",
    "bash -lc \"rm -f keep.txt\"",
    "eval rm -f keep.txt",
    "command rm -f keep.txt",
    "exec rm -f keep.txt",
    "r\\m -f keep.txt",
    "alias x=rm; x keep.txt",
    "sh script.sh",
]


@pytest.mark.parametrize("command", BLOCKED_BYPASSES)
def test_blocked_commands_cannot_be_bypassed(ws, command):
    (ws / "keep.txt").write_text("keep")
    (ws / "list.txt").write_text("keep.txt\n")
    (ws / "script.sh").write_text("rm -f keep.txt\n")
    outcome = run(make_app(ws, blocked_commands=["rm"]), command)
    assert outcome.status == "error" and outcome.data is None, (command, outcome)
    assert (ws / "keep.txt").read_text() == "keep"


def test_plain_commands_still_pass_the_lists(ws):
    app = make_app(ws, allowed_commands=["ls", "echo", "grep", "wc"], blocked_commands=["rm"])
    outcome = run(app, "echo 'a#b' \"c d\" 2>/dev/null | grep -c a # a comment; rm -rf /\nls -a | wc -l")
    assert outcome.status == "ok", outcome.error
    assert outcome.data["stdout"].split()[0] == "1"
