"""The Celery app, its beat schedule and the worker heartbeat behind ``/api/health``.

On the embedded default the broker is kombu's SQLAlchemy transport over SQLite, subclassed in
``digitorn_site.broker`` with a doorbell so an idle worker does not poll it ten times a second
(the ``polling_interval`` transport option crashes the worker; the class sets its own). With
``REDIS_URL`` the broker is Redis (settings.py picks the URL).

Worker liveness: the SQLAlchemy transport has no broadcast, so Celery's own heartbeats and
``inspect ping`` are unavailable there (workers run ``--without-heartbeat``). Instead each worker's
main process writes ``<DATA_DIR>/workers/<hostname>.json`` every few seconds from a daemon thread;
a SIGKILLed worker simply stops writing. The periodic task sweep stamps ``scheduler.json`` there
too, which shows that beat and a worker are both turning. The files live in the data dir, so with
workers on other hosts the health check only sees the local ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")


# The embedded SQLite broker gets a doorbell (digitorn_site.broker): workers wait on it instead of
# polling the table ten times a second. A string, so kombu imports it (and SQLAlchemy, ~20 MiB) only
# when a process first connects to the broker: ASGI workers that never publish never load it.
for _alias in ("sqla", "sqlalchemy"):
    TRANSPORT_ALIASES[_alias] = "digitorn_site.broker:Transport"


log = logging.getLogger("digitorn.workers")

app = Celery("digitorn")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Task names are strings so a part that is missing (or not written yet) never breaks this import;
# `expires` drops ticks that piled up in the broker while no worker was running.
app.conf.beat_schedule = {
    "approvals-expire-due": {
        "task": "approvals.tasks.expire_due",
        "schedule": 5.0,
        "options": {"expires": 5.0},
    },
    "conversations-recover-leases": {
        "task": "conversations.tasks.recover_leases",
        "schedule": 10.0,
        "options": {"expires": 10.0},
    },
    "tooling-sweep-background-tasks": {
        "task": "tooling.tasks.sweep_background_tasks",
        "schedule": 10.0,
        "options": {"expires": 10.0},
    },
    "conversations-prune-retention": {
        "task": "conversations.tasks.prune_retention",
        "schedule": float(os.environ.get("DIGITORN_RETENTION_SWEEP_SECONDS", "3600")),
        "options": {"expires": 600.0},
    },
}
# acks_late, reject_on_worker_lost and a prefetch of 1 come from settings.py (CELERY_*): a
# message is acknowledged only after its task ran, and the row claim makes a redelivery harmless.
app.conf.worker_hijack_root_logger = False

HEARTBEAT_SECONDS = float(os.environ.get("DIGITORN_WORKER_HEARTBEAT_SECONDS", "5"))
# Three missed beats before a worker counts as gone.
ALIVE_WITHIN_SECONDS = HEARTBEAT_SECONDS * 3 + 1
SCHEDULER_ALIVE_WITHIN_SECONDS = 35.0


def _workers_dir() -> Path:
    from django.conf import settings

    path = Path(settings.DATA_DIR) / "workers"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _heartbeat_file(hostname: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", hostname)[:150] or "worker"
    return _workers_dir() / f"{safe}.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class _Heartbeat:
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.path = _heartbeat_file(hostname)
        self.stop = threading.Event()
        self.started = time.time()

    def beat(self) -> None:
        _write_json(
            self.path,
            {
                "hostname": self.hostname,
                "pid": os.getpid(),
                "started": self.started,
                "last_seen": time.time(),
            },
        )

    def run(self) -> None:
        while True:
            try:
                self.beat()
            except OSError:
                log.warning("could not write the worker heartbeat %s", self.path, exc_info=True)
            if self.stop.wait(HEARTBEAT_SECONDS):
                return


_heartbeat: _Heartbeat | None = None
_beat: Any = None


@worker_ready.connect
def _start_heartbeat(sender=None, **kwargs) -> None:
    global _heartbeat
    hostname = getattr(sender, "hostname", None) or f"worker-{os.getpid()}"
    _heartbeat = _Heartbeat(hostname)
    threading.Thread(target=_heartbeat.run, name="digitorn-heartbeat", daemon=True).start()
    _start_embedded_beat()
    # A worker that starts after a crash repairs what the crash left (expired leases, lost
    # messages) at once instead of at the next beat tick.
    try:
        app.send_task("tooling.tasks.sweep_background_tasks", expires=30)
    except Exception:  # noqa: BLE001 - the beat schedule sends it anyway
        log.warning("could not queue the start-up task sweep", exc_info=True)


def _start_embedded_beat() -> None:
    """The periodic scheduler as a thread of this worker, when ``DIGITORN_EMBEDDED_BEAT`` names its
    schedule file: the supervisor sets it on its first Celery worker. A beat process of its own
    imported the whole app again (~145 MiB) to send three messages every few seconds (issue 14).
    On the embedded broker it runs the periodic tasks itself (``InlineScheduler``)."""
    global _beat
    schedule = os.environ.get("DIGITORN_EMBEDDED_BEAT", "").strip()
    if not schedule or _beat is not None:
        return
    from celery.beat import EmbeddedService

    inline = _embedded_broker()
    # A string: celery.beat resolves it, so only this worker imports digitorn_site.beat.
    kwargs: dict[str, Any] = {"scheduler_cls": "digitorn_site.beat:InlineScheduler"} if inline else {}
    _beat = EmbeddedService(app, thread=True, schedule_filename=schedule, **kwargs)
    _beat.start()
    log.info(
        "periodic scheduler running in this worker (schedule %s%s)",
        schedule, "; periodic tasks run in this worker" if inline else "",
    )


def _embedded_broker() -> bool:
    return str(app.conf.broker_url or "").startswith("sqla+sqlite")


@worker_shutdown.connect
def _stop_heartbeat(**kwargs) -> None:
    global _beat
    if _beat is not None:
        try:
            _beat.stop()
        except Exception:  # noqa: BLE001 - shutting down anyway; the schedule file is rewritten at start
            log.warning("the embedded scheduler did not stop cleanly", exc_info=True)
        _beat = None
    if _heartbeat is None:
        return
    _heartbeat.stop.set()
    try:
        _heartbeat.path.unlink()
    except OSError:
        pass


def scheduler_tick() -> None:
    """Stamped by the periodic sweep: proof that beat and at least one worker are running."""
    try:
        _write_json(_workers_dir() / "scheduler.json", {"last_tick": time.time(), "pid": os.getpid()})
    except OSError:
        log.warning("could not stamp the scheduler tick", exc_info=True)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def workers_health() -> dict[str, Any]:
    """The ``workers`` and ``scheduler`` facts of ``/api/health``."""
    now = time.time()
    alive: list[str] = []
    last_seen: float | None = None
    scheduler_tick_at: float | None = None
    for path in _workers_dir().glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if path.name == "scheduler.json":
            scheduler_tick_at = float(data.get("last_tick") or 0) or None
            continue
        seen = float(data.get("last_seen") or 0)
        last_seen = max(last_seen or 0.0, seen) or None
        if now - seen <= ALIVE_WITHIN_SECONDS:
            alive.append(str(data.get("hostname", path.stem)))
        elif now - seen > 86400:
            path.unlink(missing_ok=True)  # a worker that died long ago; keep the folder small
    return {
        "workers": {
            "alive": bool(alive),
            "count": len(alive),
            "hostnames": sorted(alive),
            "last_seen": _iso(last_seen),
        },
        "scheduler": {
            "alive": scheduler_tick_at is not None
            and now - scheduler_tick_at <= SCHEDULER_ALIVE_WITHIN_SECONDS,
            "last_tick": _iso(scheduler_tick_at),
        },
    }
