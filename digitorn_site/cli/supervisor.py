"""The daemon's supervisor process.

It holds the listening sockets and serves them with N ASGI workers (daphne, or uvicorn with
``--server uvicorn``), runs the Celery worker(s) and the beat
scheduler, restarts a child that dies unexpectedly (with backoff), keeps the pid file current, and
on SIGTERM/SIGINT stops every child: SIGTERM first, SIGKILL to each child's whole process group
after the grace period. Each child runs in its own process group so Celery's pool processes are
reaped with their parent, and gets a parent-death signal so none outlives a SIGKILLed supervisor.

Started by ``digitorn start`` as ``python -m digitorn_site.cli.supervisor --listen-fd N ...``
(detached, logging to DATA_DIR/logs/daemon.log); ``digitorn start --foreground`` execs into it.

Memory (issue 14): this process never imports Django (the CLI hands it every setting it needs), and
the periodic scheduler runs as a thread of the first Celery worker instead of a process of its own
(``DIGITORN_EMBEDDED_BEAT``, see ``digitorn_site.celery``). On the embedded default (SQLite broker)
the Celery worker runs a thread pool: its tasks wait on the database and on tool subprocesses, and a
prefork pool cost one full copy of the app (~115 MiB) per pool process.

Each ASGI worker gets a listening socket of its own on the same port (SO_REUSEPORT), so the kernel
hashes connections evenly over the workers. With one shared socket every idle worker wakes on a
new connection and the most recently woken wins: measured under load, one of two workers took
~90% of the CPU while the other idled. The supervisor keeps every socket open, so connections
that reach a worker while it restarts wait in its backlog instead of being refused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from digitorn_site.cli import config, procs

REUSEPORT = hasattr(socket, "SO_REUSEPORT")
# The ASGI servers a worker can run: daphne (the default, the project's stack) or uvicorn (opt-in).
SERVERS = ("daphne", "uvicorn")


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening, inheritable socket on host:port that more such sockets may share (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if REUSEPORT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


# A child that lived at least this long before dying is "healthy again": its backoff resets.
STABLE_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 30.0


@dataclass
class Child:
    role: str  # "asgi" | "celery" | "beat"
    name: str
    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # on top of config.child_env()
    proc: subprocess.Popen | None = None
    starttime: int | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive quick deaths, drives the backoff
    restart_at: float | None = None
    last_exit: int | None = None

    def describe(self) -> dict:
        return {
            "role": self.role,
            "name": self.name,
            "pid": self.proc.pid if self.proc else None,
            "starttime": self.starttime,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


@dataclass
class Supervisor:
    listen_fd: int
    host: str
    port: int
    workers: int = 1
    celery_workers: int = 1
    celery_concurrency: int = 2
    celery_pool: str = "auto"  # "auto": threads on the embedded broker, prefork otherwise
    embedded_broker: bool = True  # the SQLAlchemy/SQLite broker (no REDIS_URL)
    beat: bool = True
    grace: float = 10.0
    server: str = "daphne"  # the ASGI server of the workers: "daphne" | "uvicorn"
    children: list[Child] = field(default_factory=list)
    extra_fds: list[int] = field(default_factory=list)  # listening sockets of ASGI workers 2..N
    stopping: bool = False
    started_at: str = ""
    # daemon.log when detached (None in the foreground: the terminal); rotated when it grows past
    # log_max_bytes, keeping log_backups old files (issue 14: it grew forever).
    log_file: str | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    _log_checked_at: float = 0.0

    @property
    def url(self) -> str:
        return daemon_url(self.host, self.port)

    def build_children(self) -> None:
        py = config.python()
        for index in range(self.workers):
            fd = self.listen_fd
            if index and REUSEPORT:
                try:
                    fd = listen_socket(self.host, self.port).detach()
                    self.extra_fds.append(fd)
                except OSError as exc:  # e.g. a kernel without SO_REUSEPORT load balancing
                    log(f"asgi-{index + 1} shares the first worker's socket ({exc})")
                    fd = self.listen_fd
            self.children.append(Child(role="asgi", name=f"asgi-{index + 1}", argv=self.asgi_argv(fd), pass_fds=(fd,)))
        pool = self.celery_pool
        if pool == "auto":
            pool = "threads" if self.embedded_broker else "prefork"
        schedule = str(config.data_dir() / "celerybeat-schedule")
        for index in range(self.celery_workers):
            argv = [
                py, "-m", "celery", "-A", "digitorn_site", "worker",
                "--pool", pool,
                "--concurrency", str(self.celery_concurrency),
                "--hostname", f"digitorn-{index + 1}-{os.getpid()}@%h",
                "--loglevel", "INFO",
            ]
            if self.embedded_broker:
                # The SQLAlchemy transport has no broadcast: gossip, mingle and heartbeats would
                # only add polling and warnings.
                argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            # The scheduler rides in the first worker (a thread, see digitorn_site.celery).
            env = {"DIGITORN_EMBEDDED_BEAT": schedule} if self.beat and index == 0 else {}
            self.children.append(Child(role="celery", name=f"celery-{index + 1}", argv=argv, env=env))
        if self.beat and not self.celery_workers:
            # No local worker (they run on other hosts): the scheduler still runs here, alone.
            self.children.append(
                Child(
                    role="beat",
                    name="beat",
                    argv=[py, "-m", "celery", "-A", "digitorn_site", "beat", "--schedule", schedule,
                          "--loglevel", "INFO"],
                )
            )

    def asgi_argv(self, fd: int) -> list[str]:
        py = config.python()
        if self.server == "uvicorn":
            return [
                # uvicorn on uvloop + httptools, same socket, logging and limits (see uvicorn_worker).
                py, "-m", "digitorn_site.cli.uvicorn_worker",
                "--fd", str(fd),
                "--application-close-timeout", "5",
                # Requests in flight get half the grace (streams end at once), so the worker is
                # gone before the supervisor's SIGKILL.
                "--graceful-timeout", f"{max(0.5, min(5.0, self.grace / 2)):g}",
                "-v", "1",
                "digitorn_site.asgi:application",
            ]
        return [
            # Daphne, with ?token= redacted from its access log (see asgi_worker).
            py, "-m", "digitorn_site.cli.asgi_worker",
            "--fd", str(fd),
            # SSE streams are long-lived: no HTTP timeout; let apps finish on stop.
            "--application-close-timeout", "5",
            "-v", "1",
            "digitorn_site.asgi:application",
        ]

    # --- children -----------------------------------------------------------------------------
    def spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            child.argv,
            env={**config.child_env(), **child.env},
            cwd=str(config.PROJECT_ROOT),
            stdin=subprocess.DEVNULL,
            pass_fds=child.pass_fds,
            start_new_session=True,
            preexec_fn=procs.set_parent_death_signal,
        )
        child.starttime = procs.proc_starttime(child.proc.pid)
        child.started_at = time.monotonic()
        child.restart_at = None
        log(f"started {child.name} (pid {child.proc.pid})")

    def reap(self) -> bool:
        """Notice children that exited; schedule restarts. True when something changed."""
        changed = False
        now = time.monotonic()
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            lived = now - child.started_at
            child.last_exit = code
            procs.kill_group_quietly(child.proc.pid)
            child.proc = None
            child.starttime = None
            changed = True
            if self.stopping:
                continue
            child.failures = 0 if lived >= STABLE_SECONDS else child.failures + 1
            delay = 0.0 if child.failures == 0 else min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (child.failures - 1))
            child.restart_at = now + delay
            log(f"{child.name} exited unexpectedly with code {code} after {lived:.1f}s; restarting in {delay:.1f}s")
        return changed

    def restart_due(self) -> bool:
        changed = False
        now = time.monotonic()
        for child in self.children:
            if child.proc is None and child.restart_at is not None and now >= child.restart_at and not self.stopping:
                child.restarts += 1
                self.spawn(child)
                changed = True
        return changed

    def write_state(self) -> None:
        config.write_pid_file(
            {
                "pid": os.getpid(),
                "starttime": procs.proc_starttime(os.getpid()),
                "url": self.url,
                "host": self.host,
                "port": self.port,
                "workers": self.workers,
                "server": self.server,
                "celery_workers": self.celery_workers,
                "beat": self.beat,
                "grace": self.grace,
                "started_at": self.started_at,
                "data_dir": str(config.data_dir()),
                "log_file": str(config.log_file()),
                "children": [child.describe() for child in self.children],
            }
        )

    def stop_children(self) -> None:
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        log(f"stopping {len(running)} children (grace {self.grace:g}s)")
        for child in running:
            procs.send_signal(child.proc.pid, signal.SIGTERM)
        began = time.monotonic()
        deadline = began + self.grace
        waiting = list(running)
        while waiting and time.monotonic() < deadline:
            time.sleep(0.05)
            for child in [c for c in waiting if c.proc.poll() is not None]:
                waiting.remove(child)
                log(f"{child.name} stopped (code {child.proc.returncode}) after {time.monotonic() - began:.1f}s")
        for child in running:
            if child.proc.poll() is None:
                log(f"{child.name} (pid {child.proc.pid}) did not stop in {self.grace:g}s; killing it")
            # The whole group: Celery's pool processes and anything a daphne worker spawned.
            procs.kill_group_quietly(child.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=5)

    # --- log rotation -------------------------------------------------------------------------
    def rotate_log(self, *, force: bool = False) -> bool:
        """copytruncate: daemon.log → daemon.log.1 (older ones shift up), then truncated in place.

        Every process of the daemon writes to the one file through descriptors inherited from
        ``digitorn start``, opened O_APPEND, so after the truncation their writes land at the new
        end: nothing to reopen, no pipe through this process. A line written between the copy and
        the truncation can be lost, the price logrotate's copytruncate pays too.
        """
        if not self.log_file or self.log_max_bytes <= 0:
            return False
        now = time.monotonic()
        if not force and now - self._log_checked_at < 5.0:
            return False
        self._log_checked_at = now
        try:
            if os.stat(self.log_file).st_size <= self.log_max_bytes:
                return False
            for index in range(self.log_backups - 1, 0, -1):
                older = f"{self.log_file}.{index}"
                if os.path.exists(older):
                    os.replace(older, f"{self.log_file}.{index + 1}")
            if self.log_backups > 0:
                backup = f"{self.log_file}.1"
                fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out, open(self.log_file, "rb") as src:
                    shutil.copyfileobj(src, out)
            os.truncate(self.log_file, 0)
        except OSError as exc:
            log(f"could not rotate {self.log_file}: {exc}")
            return False
        log(f"rotated {self.log_file} (over {self.log_max_bytes} bytes; {self.log_backups} kept)")
        return True

    # --- main loop ----------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            log(f"received {signal.Signals(signum).name}; shutting down")
        self.stopping = True

    def run(self) -> int:
        self.started_at = dt.datetime.now(dt.UTC).isoformat()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.build_children()
        log(f"supervisor pid {os.getpid()} serving {self.url} with {self.workers} {self.server} ASGI worker(s), "
            f"{self.celery_workers} Celery worker(s){' and beat' if self.beat else ''}")
        try:
            for child in self.children:
                self.spawn(child)
            self.write_state()
            while not self.stopping:
                time.sleep(0.2)
                changed = self.reap()
                changed = self.restart_due() or changed
                if changed:
                    self.write_state()
                self.rotate_log()
        finally:
            self.stopping = True
            self.stop_children()
            config.remove_pid_file(only_if_pid=os.getpid())
            for fd in (self.listen_fd, *self.extra_fds):
                with contextlib.suppress(OSError):
                    os.close(fd)
            log("stopped")
        return 0


def daemon_url(host: str, port: int) -> str:
    """The URL clients use: a wildcard bind is reached through loopback."""
    connect = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in connect and not connect.startswith("["):
        connect = f"[{connect}]"
    return f"http://{connect}:{port}"


def log(message: str) -> None:
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    print(f"[{stamp}] digitorn supervisor: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m digitorn_site.cli.supervisor")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--celery-workers", type=int, default=1)
    parser.add_argument("--celery-concurrency", type=int, default=2)
    parser.add_argument("--celery-pool", choices=("auto", "threads", "prefork", "solo"), default="auto")
    parser.add_argument("--broker", choices=("embedded", "external"), default="embedded",
                        help="embedded: the SQLAlchemy transport (set by `digitorn start` from the settings)")
    parser.add_argument("--no-beat", action="store_true")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--server", choices=SERVERS, default="daphne", help="the ASGI server of the workers")
    parser.add_argument("--log-file", default=None, help="the file stdout/stderr go to, rotated by size")
    # Held, never read: the flock on DATA_DIR/daemon.lock lives as long as this process.
    parser.add_argument("--lock-fd", type=int, default=None)
    args = parser.parse_args(argv)
    if args.lock_fd is not None:
        os.set_inheritable(args.lock_fd, False)  # children must not keep the daemon "running"
    return Supervisor(
        listen_fd=args.listen_fd,
        host=args.host,
        port=args.port,
        workers=args.workers,
        celery_workers=args.celery_workers,
        celery_concurrency=args.celery_concurrency,
        celery_pool=args.celery_pool,
        embedded_broker=args.broker == "embedded",
        beat=not args.no_beat,
        grace=args.grace,
        server=args.server,
        log_file=args.log_file,
        log_max_bytes=_env_int("DIGITORN_LOG_MAX_BYTES", 10 * 1024 * 1024),
        log_backups=_env_int("DIGITORN_LOG_BACKUPS", 5),
    ).run()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "").strip() or default)
    except ValueError:
        log(f"{name} is not an integer; using {default}")
        return default


if __name__ == "__main__":
    sys.exit(main())
