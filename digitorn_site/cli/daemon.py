"""`digitorn start | stop | status | worker`: the daemon's lifecycle.

``start`` does everything that can fail with a clear message in the foreground (already running,
port in use, migrations, the bootstrap admin key), then hands the bound socket to the supervisor
and returns once ``/api/health`` answers. ``stop`` signals the supervisor and makes sure that,
when it returns, no process of the daemon is left.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from digitorn_site.cli import config, procs
from digitorn_site.cli.output import console, fail, info
from digitorn_site.cli.supervisor import daemon_url, listen_socket

DEFAULT_GRACE = 10.0


class StartError(Exception):
    """Why the daemon could not start; printed as one clear message, exit 1."""


# --- state ------------------------------------------------------------------------------------
def running_daemon() -> dict[str, Any] | None:
    """The pid file's content when its supervisor is alive, else None."""
    state = config.read_pid_file()
    if state and procs.proc_alive(state.get("pid"), state.get("starttime")):
        return state
    return None


def daemon_processes(state: dict[str, Any]) -> list[tuple[int, int | None]]:
    """``(pid, starttime)`` of the supervisor and every child recorded in the pid file."""
    out = [(state.get("pid"), state.get("starttime"))]
    out += [(c.get("pid"), c.get("starttime")) for c in state.get("children", []) if c.get("pid")]
    return [(pid, st) for pid, st in out if isinstance(pid, int)]


def cleanup_stale(state: dict[str, Any]) -> int:
    """Kill what is left of a daemon whose supervisor died; returns how many processes were killed."""
    killed = 0
    for child in state.get("children", []):
        pid, starttime = child.get("pid"), child.get("starttime")
        if isinstance(pid, int) and procs.proc_alive(pid, starttime):
            procs.send_signal(pid, signal.SIGKILL)
            procs.kill_group_quietly(pid)
            killed += 1
    procs.wait_gone(daemon_processes(state)[1:], timeout=5)
    config.remove_pid_file()
    return killed


# --- start ------------------------------------------------------------------------------------
def acquire_lock() -> int | None:
    """An exclusive flock on DATA_DIR/daemon.lock, or None when another daemon holds it.

    The descriptor is inherited by the supervisor and held for its whole life, so two `digitorn
    start` racing on one data dir cannot both get through, whatever the pid file says.
    """
    import fcntl

    fd = os.open(config.data_dir() / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.set_inheritable(fd, True)
    return fd


def bind_socket(host: str, port: int) -> socket.socket:
    """The daemon's first listening socket; the supervisor adds one per further ASGI worker.

    A plain bind (no SO_REUSEPORT) probes the port first, so another program on it, another
    digitorn included, is reported instead of silently sharing its traffic.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host.strip("[]"), port))
        port = probe.getsockname()[1]  # port 0: the kernel's choice, kept for the real sockets
        probe.close()
        sock = listen_socket(host, port)
    except OSError as exc:
        probe.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartError(
                f"port {port} on {host} is already in use by another program; "
                f"stop it or choose another port with `digitorn start --port N`."
            )
        if exc.errno == errno.EACCES:
            raise StartError(f"permission denied binding {host}:{port}; ports below 1024 need root, pick another.")
        raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}.")
    return sock


def run_migrations() -> None:
    result = subprocess.run(
        [config.python(), "-m", "django", "migrate", "--noinput"],
        env=config.child_env(),
        cwd=str(config.PROJECT_ROOT),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()
        tail = "\n".join(output[-15:])
        raise StartError(f"database migration failed (`manage.py migrate`):\n{tail}")


def ensure_admin_key() -> Path | None:
    """The bootstrap admin key: DIGITORN_API_KEY, else a generated key in ADMIN_KEY_FILE (0600).

    Returns the key file path when the key lives in the data dir, None when it comes from the env.
    """
    settings = config.settings()
    if settings.DIGITORN_API_KEY:
        return None
    path = Path(settings.ADMIN_KEY_FILE)
    if path.is_file() and path.read_text().strip():
        return path
    key = "dg_" + secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.replace(tmp, path)
    return path


def wait_healthy(url: str, *, proc: subprocess.Popen | None, timeout: float) -> None:
    """Poll /api/health until 200; fail early when the supervisor dies or an ASGI worker keeps crashing."""
    deadline = time.monotonic() + timeout
    last_problem = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise StartError(f"the daemon exited during startup (code {proc.returncode}).{log_tail_hint()}")
            state = config.read_pid_file()
            if state:
                crashing = [c for c in state.get("children", []) if c.get("role") == "asgi" and c.get("restarts", 0) >= 3]
                if crashing:
                    raise StartError(
                        f"the ASGI worker {crashing[0]['name']} keeps crashing at startup.{log_tail_hint()}"
                    )
            try:
                response = client.get(f"{url}/api/health")
                if response.status_code == 200:
                    return
                last_problem = f"/api/health answered {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last_problem = str(exc) or type(exc).__name__
            time.sleep(0.2)
    raise StartError(f"the daemon did not answer {url}/api/health within {timeout:g}s ({last_problem}).{log_tail_hint()}")


def log_tail_hint(lines: int = 20) -> str:
    path = config.log_file()
    try:
        content = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return ""
    return f"\nLast lines of {path}:\n" + "\n".join(content)


def asgi_server(option: str | None) -> str:
    """``--server``, else DIGITORN_SERVER (the environment, or the env file the settings read into
    it), else daphne: the project's stack stays the default; uvicorn is an opt-in."""
    from digitorn_site.cli.supervisor import SERVERS

    _ = config.settings().VERSION  # loads the settings, which read the env file into os.environ
    value = (option or os.environ.get("DIGITORN_SERVER", "")).strip().lower() or "daphne"
    if value not in SERVERS:
        raise StartError(f"DIGITORN_SERVER must be one of {', '.join(SERVERS)}, not {value[:40]!r}.")
    return value


def cmd_start(args) -> int:
    if state := running_daemon():
        info(f"digitorn is already running at {state.get('url')} (pid {state.get('pid')}).")
        return 1
    if args.workers < 1:
        return fail("--workers must be at least 1.")
    if args.celery_workers < 0 or args.celery_concurrency < 1:
        return fail("--celery-workers must be >= 0 and --celery-concurrency >= 1.")
    try:
        server = asgi_server(args.server)
    except StartError as exc:
        return fail(f"cannot start digitorn: {exc}")
    lock_fd = acquire_lock()
    if lock_fd is None:
        info(f"digitorn is already running or starting for the data dir {config.data_dir()}.")
        return 1
    # Holding the lock, a pid file can only be a dead daemon's.
    if stale := config.read_pid_file():
        killed = cleanup_stale(stale)
        info(f"removed a stale pid file (supervisor pid {stale.get('pid')} is gone"
             f"{f'; killed {killed} leftover processes' if killed else ''}).")
    try:
        sock = bind_socket(args.host, args.port)
    except StartError as exc:
        os.close(lock_fd)
        return fail(f"cannot start digitorn: {exc}")
    port = sock.getsockname()[1]
    url = daemon_url(args.host, port)
    try:
        run_migrations()
        key_file = ensure_admin_key()
    except StartError as exc:
        sock.close()
        os.close(lock_fd)
        return fail(f"cannot start digitorn: {exc}")

    settings = config.settings()
    embedded_broker = not settings.REDIS_URL and str(settings.CELERY_BROKER_URL).startswith("sqla+")
    supervisor_args = [
        "--listen-fd", str(sock.fileno()), "--lock-fd", str(lock_fd), "--host", args.host, "--port", str(port),
        "--workers", str(args.workers), "--celery-workers", str(args.celery_workers),
        "--celery-concurrency", str(args.celery_concurrency), "--celery-pool", args.celery_pool,
        "--broker", "embedded" if embedded_broker else "external", "--grace", str(args.grace),
        "--server", server,
    ]
    if args.no_beat:
        supervisor_args.append("--no-beat")

    if args.foreground:
        info(f"digitorn starting in the foreground at {url} with {server} (Ctrl-C stops it)")
        _print_key_hint(key_file, url)
        # Become the supervisor (same pid, same terminal): a fresh interpreter that never imports
        # Django, instead of this process and everything the checks above loaded (issue 14).
        sys.stdout.flush()
        sys.stderr.flush()
        os.set_inheritable(sock.fileno(), True)
        os.set_inheritable(lock_fd, True)
        argv = [config.python(), "-m", "digitorn_site.cli.supervisor", *supervisor_args]
        os.chdir(config.PROJECT_ROOT)
        os.execve(config.python(), argv, config.child_env())

    log_path = config.log_file()
    # Owner-only: the log holds request lines and tracebacks. os.open's mode applies to a new file
    # only, so an existing one (and the folder, made by an older version) is tightened too.
    os.chmod(log_path.parent, 0o700)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab", buffering=0) as log_fh:
        proc = subprocess.Popen(
            [config.python(), "-m", "digitorn_site.cli.supervisor", *supervisor_args, "--log-file", str(log_path)],
            env=config.child_env(),
            cwd=str(config.PROJECT_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(), lock_fd),
            start_new_session=True,
        )
    sock.close()
    os.close(lock_fd)  # the supervisor holds the lock now
    try:
        wait_healthy(url, proc=proc, timeout=args.wait)
    except StartError as exc:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=args.grace + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if stale := config.read_pid_file():
            cleanup_stale(stale)
        return fail(f"cannot start digitorn: {exc}")
    celery = args.celery_workers
    info(
        f"digitorn is running at {url} (supervisor pid {proc.pid}; {args.workers} {server} ASGI worker(s), "
        f"{celery} Celery worker(s){', beat' if not args.no_beat else ''}). Logs: {log_path}"
    )
    _print_key_hint(key_file, url)
    return 0


def _print_key_hint(key_file: Path | None, url: str) -> None:
    if key_file is None:
        info("Admin key: the DIGITORN_API_KEY environment variable.")
        info(f'Try: curl -H "Authorization: Bearer $DIGITORN_API_KEY" {url}/api/apps/')
    else:
        info(f"Admin key: {key_file} (read it with `cat {key_file}`; the CLI uses it automatically).")
        info(f'Try: curl -H "Authorization: Bearer $(cat {key_file})" {url}/api/apps/')


# --- stop -------------------------------------------------------------------------------------
def cmd_stop(args) -> int:
    state = config.read_pid_file()
    if state is None:
        info("digitorn is not running (no pid file at " f"{config.pid_file()}).")
        return 0
    pid, starttime = state.get("pid"), state.get("starttime")
    if not procs.proc_alive(pid, starttime):
        killed = cleanup_stale(state)
        info(f"digitorn is not running; removed a stale pid file (supervisor pid {pid} is gone"
             f"{f', killed {killed} leftover processes' if killed else ''}).")
        return 0
    grace = float(args.timeout if args.timeout is not None else state.get("grace", DEFAULT_GRACE))
    procs.send_signal(pid, signal.SIGTERM)
    # The supervisor gives its children `grace` seconds and then kills them; allow for that.
    everything = daemon_processes(state)
    if not procs.wait_gone([(pid, starttime)], timeout=grace + 5):
        info(f"the supervisor (pid {pid}) did not stop within {grace + 5:g}s; killing the daemon's processes")
    # Whatever is still there now gets SIGKILL, children's process groups included.
    for child_pid, child_start in everything:
        if procs.proc_alive(child_pid, child_start):
            procs.send_signal(child_pid, signal.SIGKILL)
    for child in state.get("children", []):
        if isinstance(child.get("pid"), int):
            procs.kill_group_quietly(child["pid"])
    # Children restarted after we read the pid file are in the newest copy, if any is left.
    latest = config.read_pid_file()
    if latest and latest.get("pid") == pid:
        for child_pid, child_start in daemon_processes(latest):
            if procs.proc_alive(child_pid, child_start):
                procs.send_signal(child_pid, signal.SIGKILL)
                procs.kill_group_quietly(child_pid)
        everything += daemon_processes(latest)
    if not procs.wait_gone(everything, timeout=5):
        left = [p for p, s in everything if procs.proc_alive(p, s)]
        return fail(f"could not stop every process of the daemon; still running: {left}")
    config.remove_pid_file(only_if_pid=pid)
    info(f"digitorn stopped (was {state.get('url')}).")
    return 0


# --- status -----------------------------------------------------------------------------------
def cmd_status(args) -> int:
    from rich.table import Table

    state = config.read_pid_file()
    local_alive = bool(state) and procs.proc_alive(state.get("pid"), state.get("starttime"))
    url = config.resolve_url(args.url)
    health: dict[str, Any] | None = None
    health_error = ""
    try:
        response = httpx.get(f"{url}/api/health", timeout=3.0)
        body = response.json()
        health = body.get("data") if isinstance(body, dict) else None
        if response.status_code != 200:
            health_error = f"HTTP {response.status_code}"
    except (httpx.HTTPError, ValueError) as exc:
        health_error = str(exc) or type(exc).__name__

    if args.json:
        import json

        print(json.dumps({"url": url, "running": local_alive or health is not None, "pid_file": state,
                          "health": health, "health_error": health_error or None}, indent=2))
    else:
        console.print(f"[bold]url[/bold]: {url}")
        if state and local_alive:
            console.print(f"[bold]supervisor[/bold]: pid {state.get('pid')} (started {state.get('started_at')})")
            console.print(f"[bold]server[/bold]: {state.get('server', 'daphne')} "
                          f"({state.get('workers', '?')} ASGI worker(s))")
            table = Table("process", "pid", "alive", "restarts")
            for child in state.get("children", []):
                alive = procs.proc_alive(child.get("pid"), child.get("starttime"))
                table.add_row(child.get("name", "?"), str(child.get("pid") or "-"),
                              "yes" if alive else "no", str(child.get("restarts", 0)))
            console.print(table)
        elif state:
            console.print(f"[yellow]stale pid file[/yellow] {config.pid_file()} (supervisor pid {state.get('pid')} is gone)")
        if health is not None:
            console.print(f"[bold]health[/bold]: {health.get('status')} (version {health.get('version')})")
            for name, value in health.items():
                if name not in ("status", "version"):
                    console.print(f"  {name}: {value}")
        else:
            console.print(f"[bold]health[/bold]: [red]unreachable[/red] ({health_error})")
    if health is None and not local_alive:
        if not args.json:
            info(f"digitorn is not running at {url}; start it with `digitorn start`.")
        return 2
    return 0 if health is not None and not health_error else 1


# --- worker -----------------------------------------------------------------------------------
def cmd_worker(args) -> int:
    """A Celery worker only, for extra hosts sharing the database and broker (REDIS_URL)."""
    argv = [config.python(), "-m", "celery", "-A", "digitorn_site", "worker",
            "--concurrency", str(args.concurrency), "--loglevel", args.loglevel]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    settings = config.settings()
    if not settings.REDIS_URL and str(settings.CELERY_BROKER_URL).startswith("sqla+"):
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    env = config.child_env()
    if args.beat:
        # The scheduler as a thread of this worker (digitorn_site.celery), not a forked process.
        env["DIGITORN_EMBEDDED_BEAT"] = str(config.data_dir() / "celerybeat-schedule")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(config.python(), argv, env)
    return 0  # pragma: no cover - execve does not return
