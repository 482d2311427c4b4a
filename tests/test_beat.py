"""The embedded scheduler runs its periodic tasks in its own worker (digitorn_site.beat).

A real Celery app and a real ``PersistentScheduler`` file; the app's broker is an address nothing
listens on, so a tick that published instead of running here would fail (and the probe would never
run in this process). Each entry runs on its lane thread, one run at a time.
"""

from __future__ import annotations

import threading
import uuid

import pytest
from celery import Celery

from digitorn_site.beat import InlineScheduler

WAIT = 30.0


@pytest.fixture
def probe_app():
    app = Celery("inline-probe", set_as_current=False)
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing there: publishing would fail
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    calls: list[str] = []
    gate = threading.Event()
    ran = threading.Semaphore(0)

    name = f"probe.sweep.{uuid.uuid4().hex}"  # a name per test: Celery warns about a reused one

    @app.task(name=name)
    def sweep(label: str) -> str:
        calls.append(f"{label}@{threading.current_thread().name}")
        ran.release()
        gate.wait(WAIT)
        if label == "boom":
            raise RuntimeError("a failing sweep")
        return label

    app.conf.beat_schedule = {"probe": {"task": name, "schedule": 3600.0, "args": ("tick",)}}
    return app, calls, gate, ran


def test_due_entries_run_in_this_worker_one_at_a_time(probe_app, tmp_path):
    app, calls, gate, ran = probe_app
    scheduler = InlineScheduler(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        entry = scheduler.schedule["probe"]
        scheduler.apply_entry(entry)
        assert ran.acquire(timeout=WAIT)
        # The previous run has not finished: this tick is skipped, not queued behind it.
        scheduler.apply_entry(entry)
        gate.set()
        assert calls == ["tick@digitorn-beat-probe"]
        # Once it finished, the next tick runs again on the same lane.
        for _ in range(100):
            if scheduler.apply_async(entry, advance=False) is None and ran.acquire(timeout=0.3):
                break
        assert calls == ["tick@digitorn-beat-probe", "tick@digitorn-beat-probe"]
    finally:
        gate.set()
        scheduler.close()


def test_a_failing_run_does_not_stop_its_lane(probe_app, tmp_path):
    app, calls, gate, ran = probe_app
    gate.set()
    app.conf.beat_schedule["probe"]["args"] = ("boom",)
    scheduler = InlineScheduler(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        entry = scheduler.schedule["probe"]
        scheduler.apply_entry(entry)
        assert ran.acquire(timeout=WAIT)
        for _ in range(100):
            scheduler.apply_entry(entry)
            if ran.acquire(timeout=0.3):
                break
        assert calls == ["boom@digitorn-beat-probe", "boom@digitorn-beat-probe"]
    finally:
        scheduler.close()
