"""The `digitorn` CLI without a running daemon: help, exit codes, discovery, and its helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
from conftest import CLI, PROJECT_ROOT, free_port

from digitorn_site.cli import procs
from digitorn_site.cli.main import build_parser, main
from digitorn_site.cli.sse import parse_sse_lines
from digitorn_site.cli.supervisor import daemon_url

DOWN_URL = "http://127.0.0.1:9"


def run(env: dict, *args: str, input: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env, input=input,
                          cwd=str(cwd or PROJECT_ROOT))


# --- parser -------------------------------------------------------------------------------------
COMMANDS = [
    ["start"], ["stop"], ["status"], ["worker"], ["deploy"], ["apps"], ["undeploy"], ["secret"],
    ["secret", "set"], ["secret", "list"], ["secret", "delete"], ["secret", "rotate"], ["secret", "genkey"], ["tasks"],
    ["approvals"], ["chat"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: digitorn " + " ".join(command))


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("start", "stop", "status", "worker", "deploy", "apps", "undeploy", "secret", "tasks",
                 "approvals", "chat", "apikey"):
        assert name in out


def test_console_script_points_at_main():
    import importlib
    import tomllib

    target = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]["digitorn"]
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is main


def test_start_defaults_match_the_documented_ones():
    args = build_parser().parse_args(["start"])
    assert (args.host, args.port, args.workers, args.foreground) == ("127.0.0.1", 8000, 1, False)
    assert args.celery_workers == 1


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- daemon down ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [["apps"], ["deploy", "pyproject.toml"], ["undeploy", "a"], ["secret", "list", "a"],
     ["secret", "set", "a", "K", "v"], ["secret", "delete", "a", "K"], ["tasks", "a"], ["approvals", "a"],
     ["chat", "a"]],
    ids=lambda a: " ".join(a),
)
def test_client_commands_exit_2_with_a_hint_when_the_daemon_is_down(cli_env, args):
    result = run(cli_env(DIGITORN_URL=DOWN_URL), *args, input="")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"error: digitorn is not running at {DOWN_URL}; start it with `digitorn start`."
    )


def test_status_exit_2_when_nothing_runs(cli_env):
    result = run(cli_env(DIGITORN_URL=DOWN_URL), "status")
    assert result.returncode == 2
    assert "unreachable" in result.stdout
    assert f"digitorn is not running at {DOWN_URL}" in result.stdout


def test_stop_without_a_daemon_says_so_and_succeeds(cli_env):
    result = run(cli_env(), "stop")
    assert result.returncode == 0
    assert "digitorn is not running" in result.stdout


def test_url_discovery_order_flag_then_env_then_pid_file(cli_env, tmp_path):
    env = cli_env()
    port_a, port_b = free_port(), free_port()
    pid_file = tmp_path / "cli-data" / "daemon.json"
    pid_file.write_text(json.dumps({"pid": 0, "url": f"http://127.0.0.1:{port_a}", "children": []}))
    from_pid = run(env, "apps")
    assert f"127.0.0.1:{port_a}" in from_pid.stderr
    from_env = run({**env, "DIGITORN_URL": f"http://127.0.0.1:{port_b}"}, "apps")
    assert f"127.0.0.1:{port_b}" in from_env.stderr
    from_flag = run({**env, "DIGITORN_URL": f"http://127.0.0.1:{port_b}"}, "apps", "--url", DOWN_URL)
    assert DOWN_URL in from_flag.stderr


def test_secret_set_without_value_reads_stdin_and_refuses_empty(cli_env):
    result = run(cli_env(DIGITORN_URL=DOWN_URL), "secret", "set", "app", "KEY", input="\n")
    assert result.returncode == 1
    assert "no value given" in result.stderr


def test_deploy_of_a_missing_file_fails_before_calling_the_daemon(cli_env, tmp_path):
    result = run(cli_env(DIGITORN_URL=DOWN_URL), "deploy", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "missing.yaml: no such file" in result.stderr


def test_secret_genkey_prints_a_fernet_key(cli_env):
    from cryptography.fernet import Fernet

    result = run(cli_env(), "secret", "genkey")
    assert result.returncode == 0
    key = result.stdout.strip()
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"
    assert "DIGITORN_ENCRYPTION_KEYS" in result.stderr


# --- start failures -------------------------------------------------------------------------------
def test_migration_failure_is_reported_and_frees_the_port(cli_env, tmp_path):
    port = free_port()
    env = cli_env(DATABASE_URL="postgres://nobody:nothing@127.0.0.1:9/nowhere")
    result = run(env, "start", "--port", str(port))
    assert result.returncode == 1
    assert "cannot start digitorn: database migration failed" in result.stderr
    assert not (tmp_path / "cli-data" / "daemon.json").exists()
    with socket.socket() as sock:  # the socket bound for the daemon was released
        sock.bind(("127.0.0.1", port))


def test_start_refuses_while_another_start_holds_the_data_dir_lock(cli_env, tmp_path):
    import fcntl

    env = cli_env()
    with open(tmp_path / "cli-data" / "daemon.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run(env, "start", "--port", str(free_port()))
    assert result.returncode == 1
    assert "already running or starting for the data dir" in result.stdout


def test_start_rejects_zero_workers(cli_env):
    result = run(cli_env(), "start", "--workers", "0", "--port", str(free_port()))
    assert result.returncode == 1
    assert "--workers must be at least 1" in result.stderr


# --- helpers --------------------------------------------------------------------------------------
def test_sse_parser_follows_the_wire_format():
    lines = [
        ": ping",
        "id: 1",
        "event: connected",
        'data: {"session_id": "s"}',
        "",
        "id: 2",
        "event: token",
        "data: first line",
        "data: second line",
        "",
        "data: plain message without event",
        "",
        "id: 3",
        "event: cut",
        "data: {}",
    ]
    events = [e.as_dict() for e in parse_sse_lines(lines)]
    assert events == [
        {"id": "1", "event": "connected", "data": {"session_id": "s"}},
        {"id": "2", "event": "token", "data": "first line\nsecond line"},
        {"id": "2", "event": "message", "data": "plain message without event"},
    ]


def test_proc_alive_checks_identity_and_ignores_zombies():
    me = os.getpid()
    assert procs.proc_alive(me)
    assert procs.proc_alive(me, procs.proc_starttime(me))
    assert not procs.proc_alive(me, (procs.proc_starttime(me) or 0) + 1)
    assert not procs.proc_alive(0)
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while procs.proc_stat(child.pid) and procs.proc_stat(child.pid)[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not procs.proc_alive(child.pid), "an exited, unreaped child is not alive"
    child.wait()
    assert not procs.proc_alive(child.pid)


def test_daemon_url_uses_loopback_for_wildcard_binds():
    assert daemon_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert daemon_url("127.0.0.1", 8123) == "http://127.0.0.1:8123"
    assert daemon_url("::1", 8000) == "http://[::1]:8000"
