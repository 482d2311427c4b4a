"""The opt-in uvicorn server (`digitorn start --server uvicorn`) against the daphne default.

One daemon per server, started as a user does (`digitorn start`, 1 ASGI worker), side by side: the
same turn (a tool call, then the answer) gives the same SSE frames under both (event names, ids,
data, `?since=` / Last-Event-ID replay); bad input still gets the envelope; the access log is
redacted and ignores X-Forwarded-For (daphne's configuration here); streams a client dropped end,
and SIGTERM ends the open ones cleanly and leaves no process (the last test).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import AppYaml, Daemon, poll, start_daemon

pytestmark = pytest.mark.e2e

RULES = [
    {"when": "", "steps": [{"call": "filesystem.find", "params": {"pattern": "*.py", "path": "."}},
                           {"say": "found: {result}"}]},
]


@pytest.fixture(scope="module")
def apps(tmp_path_factory) -> AppYaml:
    apps = AppYaml(tmp_path_factory.mktemp("apps"))
    (apps.workspace / "alpha.py").write_text("print('a')\n")
    (apps.workspace / "notes.txt").write_text("not python\n")
    return apps


@pytest.fixture(scope="module")
def pair(tmp_path_factory, apps) -> dict[str, Daemon]:
    """A uvicorn daemon and a daphne one, started at the same time (each `digitorn start`)."""
    started: dict[str, Daemon] = {}
    errors: list[BaseException] = []

    def run(server: str) -> None:
        try:
            # uvicorn with 2 workers: the listening model (a socket each) is checked below.
            workers = 2 if server == "uvicorn" else 1
            started[server] = start_daemon(tmp_path_factory.mktemp(server), workers=workers, celery_workers=1,
                                           args=("--server", server) if server == "uvicorn" else ())
        except BaseException as exc:  # noqa: BLE001 - pytest.fail raises Failed, a BaseException
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("uvicorn", "daphne")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        if errors:
            raise errors[0]
        for daemon in started.values():
            daemon.deploy(apps.minimal("uvapp", rules=RULES))
        yield started
    finally:
        for daemon in started.values():
            if not daemon.stopped:
                daemon.stop()


@pytest.fixture(scope="module")
def uv(pair) -> Daemon:
    return pair["uvicorn"]


def _worker_cmdlines(daemon: Daemon) -> list[str]:
    return [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in daemon.child_pids("asgi")]


def test_the_server_is_chosen_and_reported(pair, uv):
    assert len(_worker_cmdlines(uv)) == 2
    assert all("digitorn_site.cli.uvicorn_worker" in cmd for cmd in _worker_cmdlines(uv))
    assert ["digitorn_site.cli.asgi_worker" in cmd for cmd in _worker_cmdlines(pair["daphne"])] == [True]
    assert uv.pid_state()["server"] == "uvicorn" and pair["daphne"].pid_state()["server"] == "daphne"
    health = uv.client.get("/api/health")
    assert health.status_code == 200 and health.json()["data"]["status"] == "ok"
    assert health.headers["server"] == "uvicorn"
    status = uv.cli("status")
    assert status.returncode == 0, status.stderr
    assert "server: uvicorn (2 ASGI worker(s))" in status.stdout
    assert "server: daphne" in pair["daphne"].cli("status").stdout


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _sockets_of(pid: int) -> set[str]:
    links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return {link for link in links if link.startswith("socket:")}


def test_each_uvicorn_worker_serves_its_own_socket_of_the_one_port(uv):
    """The supervisor's SO_REUSEPORT model, as with daphne: one listening socket per worker, all held
    by the supervisor too; and fresh connections reach both workers."""
    workers = uv.child_pids("asgi")
    listening = _listening_inodes(uv.port)
    per_worker = [_sockets_of(pid) & listening for pid in workers]
    assert all(len(socks) == 1 for socks in per_worker) and per_worker[0] != per_worker[1], per_worker
    assert per_worker[0] | per_worker[1] <= _sockets_of(uv.pid_state()["pid"])
    served: set[int] = set()
    for _ in range(40):  # fresh connections: the kernel hashes each one to a worker's socket
        with socket.create_connection(("127.0.0.1", uv.port), timeout=5) as conn:
            conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
            inode = _accepted_inode(conn.getsockname()[1], uv.port)
            served.update(pid for pid in workers if inode in _sockets_of(pid))
        if len(served) == 2:
            break
    assert served == set(workers), f"40 connections all went to {served}"


def _accepted_inode(client_port: int, server_port: int) -> str | None:
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if local == server_port and remote == client_port and fields[3] == "01":  # ESTABLISHED
                return f"socket:[{fields[9]}]"
    return None


@pytest.mark.parametrize("where", ["environment", "env file"])
def test_an_unknown_server_is_refused(cli_env, tmp_path, where):
    if where == "environment":
        env = cli_env(DIGITORN_SERVER="gunicorn")
    else:  # DIGITORN_SERVER is read from the .env file like every other setting
        env_file = tmp_path / "digitorn.env"
        env_file.write_text("DIGITORN_SERVER=gunicorn\n")
        env = cli_env(DIGITORN_ENV_FILE=str(env_file))
    done = subprocess.run([sys.executable, "-m", "digitorn_site.cli.main", "start", "--port", "0"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1
    assert "DIGITORN_SERVER must be one of daphne, uvicorn, not 'gunicorn'" in done.stderr
    assert not (Path(env["DIGITORN_DATA_DIR"]) / "daemon.json").exists()
    # --server wins over the setting; an unknown --server is argparse's usage error.
    bad = subprocess.run([sys.executable, "-m", "digitorn_site.cli.main", "start", "--server", "nginx"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "invalid choice: 'nginx'" in bad.stderr


def _shape(events: list[dict]) -> list[tuple]:
    """The frames with the turn's correlation id (random) blanked: everything else must match."""

    def blank(value):
        if isinstance(value, dict):
            return {k: ("<cid>" if k == "correlation_id" else blank(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [blank(v) for v in value]
        return value

    return [(e["id"], e["event"], blank(e["data"])) for e in events]


def _raw_stream(daemon: Daemon, path: str, **kwargs) -> tuple[httpx.Headers, str]:
    """The raw text of a chat stream until its `result` frame."""
    text = ""
    with daemon.client.stream("POST", path, timeout=60, **kwargs) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_text():
            text += chunk
            if "\nevent: result\n" in text and text.endswith("\n\n"):
                return response.headers, text
    raise AssertionError(f"{path}: the stream ended before its result: {text!r}")


def test_a_turn_streams_the_same_frames_as_under_daphne(pair):
    turns = {}
    for server, daemon in pair.items():
        headers, raw = _raw_stream(daemon, "/api/apps/uvapp/chat/stream", json={"session_id": "s1", "message": "go"})
        assert headers["content-type"] == "text/event-stream"
        assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
        from digitorn_site.cli.sse import parse_sse_lines

        events = [e.as_dict() for e in parse_sse_lines(raw.splitlines())]
        # The framing itself: "id:", "event:", "data:" lines, one blank line after each frame.
        assert re.fullmatch(r"(?:(?:id: \d+\n)?event: \w+\ndata: .*\n\n)+", raw), raw
        turns[server] = events
    uv_events, dp_events = turns["uvicorn"], turns["daphne"]
    kinds = [e["event"] for e in uv_events]
    assert kinds[0] == "connected" and kinds[-1] == "result"
    assert "tool_start" in kinds and "tool_call" in kinds
    assert "alpha.py" in uv_events[-1]["data"]["content"] and "notes.txt" not in uv_events[-1]["data"]["content"]
    assert _shape(uv_events) == _shape(dp_events)

    # The session's stream replays from a cursor (?since= and Last-Event-ID) the same way.
    cut = uv_events[3]["id"]
    last = uv_events[-1]["id"]
    replays = {}
    for server, daemon in pair.items():
        replays[server] = daemon.sse("/api/apps/uvapp/sessions/s1/events", params={"since": cut},
                                     until=lambda e, last=last: e["id"] == last)
    assert _shape(replays["uvicorn"]) == _shape(replays["daphne"]) == _shape(uv_events[4:])
    by_header = pair["uvicorn"].sse("/api/apps/uvapp/sessions/s1/events", headers={"Last-Event-ID": cut},
                                    until=lambda e: e["id"] == last)
    assert _shape(by_header) == _shape(uv_events[4:])


def test_bad_input_still_gets_the_envelope(uv):
    def envelope(response: httpx.Response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["success"] is False and body["data"] is None and body["error_code"] == code, body

    envelope(uv.client.post("/api/apps/uvapp/chat/stream", content=b"{not json",
                            headers={"Content-Type": "application/json"}), 400, "VALIDATION_ERROR")
    envelope(uv.client.post("/api/apps/uvapp/chat", json={"session_id": "s2"}), 400, "VALIDATION_ERROR")
    envelope(uv.client.get("/api/apps/uvapp/sessions/s1/events", params={"since": "-1"}), 400, "VALIDATION_ERROR")
    envelope(uv.client.get("/api/apps/nope/sessions"), 404, "RESOURCE_NOT_FOUND")
    envelope(uv.client.get("/api/no/such/endpoint"), 404, "RESOURCE_NOT_FOUND")
    # Larger than DIGITORN_MAX_BODY_BYTES (1 MiB): the body-size check still answers.
    envelope(uv.client.put("/api/apps/uvapp/quota", content=b"x" * (1024 * 1024 + 10),
                           headers={"Content-Type": "application/json"}), 413, "PAYLOAD_TOO_LARGE")
    # A large body under the limits is read whole (the bound on request heads does not touch bodies).
    big = uv.client.post("/api/apps/uvapp/sessions/big/messages", json={"message": "x" * 300_000})
    assert big.status_code == 202, big.text
    unauth = httpx.get(f"{uv.url}/api/apps/uvapp/sessions", timeout=30)
    assert unauth.status_code == 401 and unauth.json()["success"] is False


def _raw_request(url: str, head: bytes) -> bytes:
    """What the server answers to a raw request head (until it closes the connection)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(head)
        except OSError:  # it may close before reading everything: what it answered counts
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


@pytest.mark.parametrize("head", [
    b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(600)) + b"\r\n",
], ids=["100KB-header", "600-headers"])
def test_an_oversized_request_head_is_refused_as_under_daphne(pair, head):
    for server, daemon in pair.items():
        # A 400 and the connection closed; the 400 may be lost to the reset the kernel sends when
        # the server closes a socket the rest of the head is still arriving on.
        answer = _raw_request(daemon.url, head)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), (server, answer[:200])
    # A head under the limits is served (the bound is not a lower one than daphne's).
    fine = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n"
    for server, daemon in pair.items():
        assert _raw_request(daemon.url, fine).startswith(b"HTTP/1.1 200 "), server


def test_access_log_is_redacted_and_ignores_forwarded_headers(uv):
    marker = "203.0.113.77"
    # EventSource clients pass their key as ?token= (SSE streams only).
    with httpx.stream("GET", f"{uv.url}/api/apps/uvapp/sessions/s1/events",
                      params={"token": uv.key, "probe": "redact-me"},
                      headers={"X-Forwarded-For": marker, "X-Forwarded-Proto": "https"}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        next(response.iter_lines())
    line = poll(lambda: next((ln for ln in uv.log_tail(400).splitlines() if "probe=redact-me" in ln), None),
                timeout=10, what="the access line")
    assert "uvicorn.access" in line and "token=[redacted]" in line and '" 200' in line
    log = (uv.data_dir / "logs" / "daemon.log").read_text(errors="replace")
    assert uv.key not in log
    assert marker not in log and "127.0.0.1:" in line  # the peer's address, not the header's


def test_dropped_streams_end_and_sigterm_ends_the_open_ones(uv):
    # Streams a client drops: a session stream (idle, between pings) and a turn's stream mid-turn.
    for _ in range(3):
        with uv.client.stream("GET", "/api/apps/uvapp/sessions/s1/events", timeout=30) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # its first frame arrived: the stream runs; now drop it
    with uv.client.stream("POST", "/api/apps/uvapp/chat/stream", json={"session_id": "s3", "message": "go"},
                          timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    # One stream still open when the daemon is stopped.
    opened = threading.Event()
    ended: dict[str, object] = {}

    def hold() -> None:
        try:
            with httpx.stream("GET", f"{uv.url}/api/apps/uvapp/sessions/s1/events",
                              headers={"Authorization": f"Bearer {uv.key}"}, timeout=60) as response:
                opened.set()
                for _line in response.iter_lines():
                    pass
            ended["how"] = "eof"
        except httpx.HTTPError as exc:
            ended["how"] = repr(exc)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert opened.wait(30)
    uv.stop()  # `digitorn stop`: SIGTERM; asserts no process of the daemon is left, no pid file
    holder.join(30)
    assert ended.get("how") == "eof", ended
    log = (uv.data_dir / "logs" / "daemon.log").read_text(errors="replace")
    # A dropped stream whose request kept running would be waited for, then cancelled, at shutdown;
    # an open stream cancelled at the deadline would be logged as an exception.
    for leak in ("Waiting for background tasks", "Waiting for connections", "Cancel ", "Exception in ASGI"):
        assert leak not in log, f"{leak!r} in daemon.log:\n{log[-3000:]}"
    assert re.search(r"asgi-1 stopped \(code 0\) after \d+\.\ds", log), log[-3000:]
    assert "did not stop" not in log
