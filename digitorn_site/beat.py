"""The embedded scheduler's own runner: periodic tasks run in the worker that schedules them.

On the embedded broker (kombu's SQLAlchemy transport over SQLite) every beat tick was a message:
an ORM insert into the broker file by the scheduler thread, a doorbell, an ORM claim by the same
worker's consumer, Celery's request machinery, a fresh database connection for the task (Celery's
Django fixup closes it around every task) and another poll after the ack. That was most of the
~1 % of a core an idle daemon spent (issue 14), for tasks whose own queries take a few hundred
microseconds when there is nothing to repair.

When the scheduler is a thread of a worker (``DIGITORN_EMBEDDED_BEAT``, see
``digitorn_site.celery``) and the broker is that SQLite file, ``InlineScheduler`` runs each due
entry in this process instead of publishing it. What a tick guarantees is unchanged: each entry
runs once per interval, in a worker that is alive (the scheduler lives in it), with the same task
function. Each entry has a lane (a thread of its own, its database connection closed after each run),
so a long retention prune does not delay lease recovery, and an entry whose previous run has not
finished skips that tick (the broker's ``expires`` dropped piled-up ticks likewise).

A separate beat process (``celery beat``, workers on other hosts) and the Redis broker keep
publishing: the tasks are then spread over the deployment's workers as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.beat import PersistentScheduler, _evaluate_entry_args, _evaluate_entry_kwargs

log = logging.getLogger("digitorn.workers")


class _Lane:
    """One daemon thread that runs one schedule entry's task, one run at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._due = threading.Event()
        self._busy = False
        self._call: Callable[[], Any] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"digitorn-beat-{name}", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], Any]) -> bool:
        """Run ``call`` on this lane; False (and nothing done) while the previous run goes on."""
        with self._lock:
            if self._busy:
                return False
            self._busy = True
            self._call = call
        self._due.set()
        return True

    def _loop(self) -> None:
        from django.db import connections

        while True:
            self._due.wait()
            self._due.clear()
            call, self._call = self._call, None
            try:
                if call is not None:
                    call()
            except Exception:  # noqa: BLE001 - the next tick runs it again; the worker lives on
                log.exception("periodic task %s failed", self.name)
            finally:
                # Closed after each run, as Celery's Django fixup does around a worker's task: an
                # idle lane holds no connection (nor any SQLite snapshot) between its ticks.
                try:
                    connections.close_all()
                except Exception:  # noqa: BLE001 - a connection that cannot close is dropped anyway
                    log.warning("periodic task %s: closing its connection failed", self.name, exc_info=True)
                with self._lock:
                    self._busy = False


class InlineScheduler(PersistentScheduler):
    """A ``PersistentScheduler`` (same schedule file, same timing) that runs due entries here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lanes: dict[str, _Lane] = {}
        super().__init__(*args, **kwargs)

    def apply_entry(self, entry, producer=None):
        # Celery logs "Sending due task" at INFO for every tick: 24 lines a minute in daemon.log
        # (~35,000 a day) that say nothing a failure log would not. Debug here; failures still log.
        log.debug("periodic task %s (%s) is due", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception:  # noqa: BLE001 - as Celery's own apply_entry: the scheduler goes on
            log.exception("periodic task %s could not be started", entry.name)

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        entry = self.reserve(entry) if advance else entry
        task = self.app.tasks.get(entry.task)
        if task is None:  # not registered in this process: let a worker that knows it run it
            return super().apply_async(entry, producer=producer, advance=False, **kwargs)
        try:
            args = _evaluate_entry_args(entry.args)
            kw = _evaluate_entry_kwargs(entry.kwargs)
            lane = self._lanes.get(entry.name)
            if lane is None:
                lane = self._lanes[entry.name] = _Lane(entry.name)
            if not lane.submit(lambda: task(*args, **kw)):
                log.info("periodic task %s still running: this tick is skipped", entry.name)
        finally:
            self._tasks_since_sync += 1
            if self.should_sync():
                self._do_sync()
        return None
