"""Shared fixtures: a real daemon started with `digitorn start`, and app YAML files on disk.

``daemon`` (module-scoped) starts ``digitorn start --workers 2`` on a free port with its own data dir
and a known admin key, and stops it at the end of the module, failing if any of its processes is
left. ``daemon_factory`` starts extra daemons with custom settings (environment, workers, flags),
each stopped when the test ends. ``app_yaml`` writes app manifests to temporary files.

For the in-process tests (Django test clients, no daemon): ``admin_key`` installs ``helpers.ADMIN_KEY``
as the daemon's admin key, ``admin_client`` is a test client using it (it replaces pytest-django's
fixture of that name, a logged-in Django admin user, which no test here uses), ``alice``/``bob``
are clients of fresh API keys with the run scopes, ``deployed_app`` deploys manifests through the
real service and undeploys them after the test, and ``ws`` is an empty workspace directory. Plain
helpers (``client_for``, ``assert_envelope_error``, ``scripted_manifest``, ...) are in
``tests/helpers.py``; stand-in HTTP servers in ``tests/httpkit.py``.

Mark tests that use a daemon with ``@pytest.mark.e2e``. With ``DATABASE_URL``/``REDIS_URL`` set in
the environment (the scale-out CI leg) the daemons use them; otherwise the embedded defaults.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import django
import httpx
import pytest
import yaml
from django.apps import apps as django_apps
from django.test import Client, override_settings

if not django_apps.ready:
    # Imported by a bench script (bench/*.py reuse start_daemon), not by pytest (pytest-django sets
    # Django up before any conftest): set it up here, on a throwaway data dir of the bench's own.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
    os.environ.setdefault("DIGITORN_DATA_DIR", tempfile.mkdtemp(prefix="digitorn-bench-"))
    django.setup()

from apps_registry import services as registry  # noqa: E402
from digitorn_site.errors import NotFoundError  # noqa: E402
from tests import helpers  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "digitorn_site.cli.main"]
# Variables a developer's shell may carry that would leak into the daemon under test.
_SCRUBBED_PREFIXES = ("DIGITORN_", "DJANGO_", "CELERY_")
_PASSTHROUGH = ("DATABASE_URL", "REDIS_URL")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    """``predicate()``'s first truthy value, checked every ``interval`` s; after ``timeout``, its last
    (falsy) value, for the caller to assert on with its own message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def poll(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.1) -> Any:
    """``predicate()``'s first truthy value, checked every ``interval`` s; AssertionError after ``timeout``."""
    value = wait_for(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
    return value


def pids_running(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (the unique sleep of a test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state not in ("Z", "X") and "/proc" not in cmdline:
            found.append(int(entry.name))
    return found


def unique_sleep(seconds: int = 30) -> str:
    """A sleep argument no other process uses, so the test can find (and count) its process."""
    return f"{seconds}.{uuid.uuid4().int % 10**6:06d}"


def bearer(key: str) -> dict[str, str]:
    """The ``Authorization`` header of API key ``key``."""
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proc_alive(pid: int, starttime: int | None) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = raw[raw.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    return starttime is None or int(fields[19]) == starttime


def daemon_env(data_dir: Path, key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a daemon (and its CLI) under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    for name in _PASSTHROUGH:
        if not os.environ.get(name):
            env.pop(name, None)
    env.update(
        {
            "DIGITORN_DATA_DIR": str(data_dir),
            "DIGITORN_API_KEY": key,
            # Never read a developer's .env beside manage.py.
            "DIGITORN_ENV_FILE": str(data_dir / "no.env"),
            "PYTHONPATH": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
            # Rich tables wide enough that cells are never wrapped in captured output.
            "COLUMNS": "200",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class Daemon:
    """A running daemon: ``url``, ``key``, ``data_dir``, an authenticated ``client`` and ``cli()``."""

    url: str
    key: str
    data_dir: Path
    port: int
    env: dict[str, str]
    client: httpx.Client
    started: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
    # Run after a successful stop: drop the per-daemon PostgreSQL database, flush its Redis DB.
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    # --- CLI ------------------------------------------------------------------------------
    def cli(self, *args: str, input: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
        """Run ``digitorn ARGS`` against this daemon (it finds it through the data dir's pid file)."""
        return subprocess.run(
            [*CLI, *args], input=input, capture_output=True, text=True, timeout=timeout,
            env={**self.env, **(env or {})}, cwd=str(cwd or PROJECT_ROOT),
        )

    # --- processes ------------------------------------------------------------------------
    def pid_state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.data_dir / "daemon.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def processes(self) -> list[tuple[int, int | None]]:
        """(pid, starttime) of the supervisor and every child the pid file lists now."""
        state = self.pid_state() or {}
        out = [(state["pid"], state.get("starttime"))] if state.get("pid") else []
        out += [(c["pid"], c.get("starttime")) for c in state.get("children", []) if c.get("pid")]
        return out

    def child_pids(self, role: str) -> list[int]:
        """Pids of the children with ``role`` ("asgi", "celery", "beat") that are alive now."""
        state = self.pid_state() or {}
        return [c["pid"] for c in state.get("children", [])
                if c.get("role") == role and c.get("pid") and _proc_alive(c["pid"], c.get("starttime"))]

    def kill_children(self, role: str) -> set[int]:
        """SIGKILL every live child of ``role`` ("asgi", "celery"); returns their pids."""
        killed = set(self.child_pids(role))
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        return killed

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join((self.data_dir / "logs" / "daemon.log").read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no daemon.log)"

    # --- HTTP helpers ---------------------------------------------------------------------
    def sse(self, path: str, *, until: str | Callable[[dict], bool] = "result", timeout: float = 30.0,
            params: dict | None = None, headers: dict | None = None, method: str = "GET",
            json_body: Any = None, on_open: Callable[[], Any] | None = None) -> list[dict]:
        """Read an SSE stream until an event of type ``until`` (or ``until(event)`` is true).

        Returns the events as ``{"id", "event", "data"}`` dicts, the stopping one included.
        ``on_open`` runs once the response headers arrived (e.g. to send a message only after
        the stream is attached). Raises AssertionError on timeout, with what was received.
        """
        from digitorn_site.cli.sse import parse_sse_lines

        stop = (lambda e: e["event"] == until) if isinstance(until, str) else until
        received: list[dict] = []
        deadline = time.monotonic() + timeout
        with self.client.stream(method, path, params=params, headers=headers, json=json_body,
                                timeout=httpx.Timeout(timeout, connect=5.0)) as response:
            assert response.status_code == 200, f"{path}: HTTP {response.status_code} {response.read()[:500]!r}"
            if on_open is not None:
                on_open()
            for event in parse_sse_lines(response.iter_lines()):
                received.append(event.as_dict())
                if stop(received[-1]):
                    return received
                if time.monotonic() > deadline:
                    break
        raise AssertionError(f"{path}: stream ended or timed out before {until!r}; got {received}")

    def deploy(self, yaml_path: Path | str, *, force: bool = False) -> dict:
        response = self.client.post("/api/apps/deploy", json={"yaml_path": str(yaml_path), "force": force})
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def chat(self, app_id: str, text: str, session_id: str, timeout: float = 120) -> str:
        """The answer of one ``/chat`` turn (asserts HTTP 200)."""
        response = self.client.post(f"/api/apps/{app_id}/chat", json={"session_id": session_id, "message": text},
                                    timeout=timeout)
        assert response.status_code == 200, response.text
        return response.json()["data"]["content"]

    def execute(self, app_id: str, tool: str, params: dict, timeout: float = 120) -> dict:
        """The envelope of a direct tool call (asserts HTTP 200): the tool's result flattened into
        ``{success, data, error}``."""
        response = self.client.post(f"/api/apps/{app_id}/tools/{tool}/execute", json={"params": params},
                                    timeout=timeout)
        assert response.status_code == 200, response.text
        return response.json()

    def create_superuser(self, username: str, email: str, password: str) -> subprocess.CompletedProcess:
        """``manage.py createsuperuser`` against this daemon's database."""
        return subprocess.run(
            [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", username, "--email", email],
            cwd=str(PROJECT_ROOT), env={**self.env, "DJANGO_SUPERUSER_PASSWORD": password},
            capture_output=True, text=True, timeout=120,
        )

    # --- lifecycle ------------------------------------------------------------------------
    def stop(self) -> subprocess.CompletedProcess | None:
        """``digitorn stop``; asserts that no process of the daemon is left."""
        if self.stopped:
            return None
        known = set(self.processes()) | set(_state_processes(self.started))
        result = self.cli("stop", timeout=90)
        self.stopped = True
        self.client.close()
        left = [pid for pid, start in known if _proc_alive(pid, start)]
        assert result.returncode == 0, f"digitorn stop failed: {result.stdout}{result.stderr}\n{self.log_tail()}"
        assert not left, f"processes left after digitorn stop: {left}\n{self.log_tail()}"
        assert not (self.data_dir / "daemon.json").exists(), "digitorn stop left the pid file behind"
        for cleanup in self.cleanups:
            cleanup()
        return result


class ReconnectingStream(threading.Thread):
    """Follows a session's persistent stream like an SDK does: on any drop, reconnect with
    Last-Event-ID and carry on. Records every framed event it receives (``opened`` is set once
    connected; set ``stop`` to end it)."""

    def __init__(self, url: str, key: str, path: str):
        super().__init__(daemon=True)
        self.url, self.key, self.path = url, key, path
        self.events: list[dict] = []
        self.connects = 0
        self.stop = threading.Event()
        self.opened = threading.Event()

    def run(self) -> None:
        from digitorn_site.cli.sse import parse_sse_lines

        last_id: str | None = None
        while not self.stop.is_set():
            headers = {"Authorization": f"Bearer {self.key}"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with httpx.stream("GET", self.url + self.path, headers=headers,
                                  timeout=httpx.Timeout(5.0, read=30.0)) as response:
                    if response.status_code != 200:
                        time.sleep(0.3)
                        continue
                    self.connects += 1
                    self.opened.set()
                    for event in parse_sse_lines(response.iter_lines()):
                        if event.id is not None:
                            last_id = event.id
                            self.events.append({"id": int(event.id), "event": event.event, "data": event.data})
                        if self.stop.is_set():
                            return
            except (httpx.HTTPError, OSError):
                time.sleep(0.3)

    def dones(self) -> list[dict]:
        return [e["data"] for e in self.events if e["event"] == "result"]


def _state_processes(state: dict[str, Any]) -> list[tuple[int, int | None]]:
    out = [(state["pid"], state.get("starttime"))] if state.get("pid") else []
    out += [(c["pid"], c.get("starttime")) for c in state.get("children", []) if c.get("pid")]
    return out


_redis_dbs = itertools.count()


def isolated_backends() -> tuple[dict[str, str], list[Callable[[], None]]]:
    """Per-daemon PostgreSQL database and Redis DB when the environment provides the servers.

    On the scale-out leg every daemon of the run talks to the same servers: without this, apps
    deployed by one test module would collide with the next one's, and two daemons alive at once
    would consume each other's Celery messages.
    """
    extra: dict[str, str] = {}
    cleanups: list[Callable[[], None]] = []
    db_url = os.environ.get("DATABASE_URL", "")
    if db_url.startswith(("postgres://", "postgresql://")):
        import psycopg

        name = f"dgtest_{secrets.token_hex(6)}"
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        extra["DATABASE_URL"] = urlunsplit(urlsplit(db_url)._replace(path=f"/{name}"))

        def drop() -> None:
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        cleanups.append(drop)
    redis_url = os.environ.get("REDIS_URL", "")
    if redis_url:
        import redis

        url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{1 + next(_redis_dbs) % 15}"))
        redis.Redis.from_url(url).flushdb()
        extra["REDIS_URL"] = url
        cleanups.append(lambda: redis.Redis.from_url(url).flushdb())
    return extra, cleanups


# The scale-out CI leg runs every daemon with two Celery workers in separate processes.
DEFAULT_CELERY_WORKERS = int(os.environ.get("DIGITORN_TEST_CELERY_WORKERS", "1"))


def start_daemon(data_dir: Path, *, workers: int = 2, celery_workers: int | None = None,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 key: str | None = None) -> Daemon:
    """Run ``digitorn start`` in a fresh data dir on a free port and return the running daemon."""
    if celery_workers is None:
        celery_workers = DEFAULT_CELERY_WORKERS
    data_dir.mkdir(parents=True, exist_ok=True)
    key = key or "dg_test_" + secrets.token_urlsafe(18)
    backends, cleanups = isolated_backends()
    full_env = daemon_env(data_dir, key, {**backends, **(env or {})})
    last = None
    for _attempt in range(3):
        port = free_port()
        last = subprocess.run(
            [*CLI, "start", "--workers", str(workers), "--celery-workers", str(celery_workers),
             "--port", str(port), "--grace", "5", "--wait", "240", *args],
            capture_output=True, text=True, timeout=300, env=full_env, cwd=str(PROJECT_ROOT),
        )
        if last.returncode == 0:
            break
        if "already in use" not in last.stderr:  # another process grabbed the port: try another
            break
    log = (data_dir / "logs" / "daemon.log")
    if last is None or last.returncode != 0:
        for cleanup in cleanups:
            cleanup()
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        pytest.fail(f"digitorn start failed ({last.returncode if last else '?'}):\n{last.stdout if last else ''}"
                    f"{last.stderr if last else ''}\n--- daemon.log ---\n{tail}")
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0)
    daemon = Daemon(url=url, key=key, data_dir=data_dir, port=port, env=full_env, client=client,
                    cleanups=cleanups)
    daemon.started = daemon.pid_state() or {}
    return daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    """A daemon with 2 ASGI workers, one Celery worker and beat, shared by the tests of a module."""
    running = start_daemon(tmp_path_factory.mktemp("daemon"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def daemon_factory(tmp_path_factory) -> Iterator[Callable[..., Daemon]]:
    """``daemon_factory(workers=2, celery_workers=1, env={...}, args=(...))`` → a fresh daemon.

    Each is stopped (and checked for leftover processes) when the test ends.
    """
    started: list[Daemon] = []

    def make(**kwargs) -> Daemon:
        running = start_daemon(tmp_path_factory.mktemp("daemon"), **kwargs)
        started.append(running)
        return running

    yield make
    errors = []
    for running in started:
        try:
            running.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


class AppYaml:
    """Writes app manifests into a temporary directory and returns their paths."""

    def __init__(self, root: Path):
        self.root = root
        self.workspace = root / "workspace"
        self.workspace.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def __call__(self, content: str | dict, name: str | None = None) -> Path:
        """Write ``content`` (YAML text, or a dict dumped as YAML) to ``<tmp>/<name>``."""
        self._count += 1
        path = self.root / (name or f"app-{self._count}.yaml")
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
        return path

    def minimal(self, app_id: str = "demo", *, name: str | None = None, rules: list | None = None,
                modules: dict | None = None, capabilities: dict | None = None,
                runtime: dict | None = None, file_name: str | None = None) -> Path:
        """The canonical minimal app: one scripted agent, the filesystem module in a temp workspace."""
        manifest: dict[str, Any] = {
            "schema_version": 2,
            "app": {"app_id": app_id, "name": name or app_id.title()},
        }
        if runtime:
            manifest["runtime"] = runtime
        manifest["agents"] = [
            {
                "id": "assistant",
                "brain": {
                    "provider": "scripted",
                    "config": {"rules": rules if rules is not None else [{"when": "", "steps": [{"say": "hello"}]}]},
                },
            }
        ]
        manifest["tools"] = {"modules": modules if modules is not None else {"filesystem": {"workspace": str(self.workspace)}}}
        if capabilities is not None:
            manifest["tools"]["capabilities"] = capabilities
        return self(manifest, file_name or f"{app_id}.yaml")


@pytest.fixture
def app_yaml(tmp_path) -> AppYaml:
    """``app_yaml(text_or_dict, name=None) -> Path``; ``app_yaml.minimal("demo", rules=[...]) -> Path``;
    ``app_yaml.workspace`` is a temp dir the minimal app's filesystem module uses."""
    return AppYaml(tmp_path / "apps")


@pytest.fixture
def cli_env(tmp_path) -> Callable[..., dict[str, str]]:
    """An environment for running the CLI with no daemon (data dir in tmp)."""

    def make(**extra: str) -> dict[str, str]:
        data_dir = tmp_path / "cli-data"
        data_dir.mkdir(exist_ok=True)
        return daemon_env(data_dir, extra.pop("key", "dg_test_nodaemon"), extra)

    return make


# --- in-process tests (Django test clients) -------------------------------------------------------


@pytest.fixture
def ws(tmp_path) -> Path:
    """An empty workspace directory (``<tmp>/ws``); modules that need files in it override this."""
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest.fixture
def admin_key() -> Iterator[str]:
    """``helpers.ADMIN_KEY`` is the admin key for the test (``DIGITORN_API_KEY``)."""
    with override_settings(DIGITORN_API_KEY=helpers.ADMIN_KEY):
        yield helpers.ADMIN_KEY


@pytest.fixture
def admin_client(admin_key) -> Client:
    """A Django test client authenticated with the admin key."""
    return helpers.admin_client()


@pytest.fixture
def alice() -> Client:
    """A client of user ``alice`` with the ``apps:read`` and ``apps:run`` scopes."""
    return helpers.client_for("alice", ["apps:read", "apps:run"])


@pytest.fixture
def bob() -> Client:
    """A client of user ``bob`` with the ``apps:read`` and ``apps:run`` scopes."""
    return helpers.client_for("bob", ["apps:read", "apps:run"])


@pytest.fixture
def deployed_app() -> Iterator[Callable[..., Any]]:
    """``deployed_app(manifest, force=False, **app_deploy_kwargs) -> App``: ``manifest`` (YAML/JSON
    text, or a dict) deployed through ``apps_registry.services.app_deploy``; every app it deployed
    is undeployed when the test ends (unless the test already did)."""
    app_ids: list[str] = []

    def deploy(manifest: str | bytes | dict, *, force: bool = False, **kwargs: Any):
        text = manifest if isinstance(manifest, str | bytes) else json.dumps(manifest)
        app = registry.app_deploy(text=text, force=force, **kwargs)
        if app.app_id not in app_ids:
            app_ids.append(app.app_id)
        return app

    yield deploy
    for app_id in reversed(app_ids):
        try:
            registry.app_undeploy(app_id=app_id)
        except NotFoundError:
            pass
