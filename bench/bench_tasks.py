"""Background-task throughput and launch-to-start latency on a real Celery worker.

    .venv/bin/python bench/bench_tasks.py                  # embedded default (SQLite + SQLAlchemy broker)
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bench_tasks.py   # embedded, then Redis
    .venv/bin/python bench/bench_tasks.py --redis-server   # also start a throwaway redis-server

Each scenario runs in a fresh data dir and a child process (the broker is chosen when Django's
settings load): migrate, deploy a one-module app, start ``celery -A digitorn_site worker`` with two
pool processes, then

- latency: N tasks launched one at a time (each waited for), ``started_at - created_at`` per task,
  i.e. commit → broker → worker claim;
- throughput: a burst of M launches of a trivial tool (``filesystem.stat``), tasks/s from the first
  launch to the last finish.

Tasks are launched through ``tooling.background.background_task_launch`` (what the HTTP view calls)
so HTTP overhead is not part of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_scenario(label: str, latency_n: int, burst_n: int) -> dict:
    """Runs inside the child process, whose environment picks the data dir and broker."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from apps_registry.selectors import app_runtime
    from apps_registry.services import app_deploy
    from tooling.background import background_task_launch
    from tooling.models import BackgroundTask

    app_deploy(
        text="""schema_version: 2
app: {app_id: bench, name: bench}
agents:
  - id: assistant
    brain: {provider: scripted, config: {rules: [{when: "", steps: [{say: "hi"}]}]}}
tools:
  modules:
    filesystem: {}
"""
    )
    app = app_runtime(app_id="bench")

    log_path = Path(settings.DATA_DIR) / "worker.log"
    argv = [
        sys.executable, "-m", "celery", "-A", "digitorn_site", "worker", "--concurrency", "2",
        "--hostname", f"bench-{os.getpid()}@%h", "--loglevel", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            argv, cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while not list((Path(settings.DATA_DIR) / "workers").glob("bench-*.json")):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"worker did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)

        def launch():
            return background_task_launch(
                app=app, tool="filesystem.stat", params={"path": "."}, principal="bench", session_id=None
            )

        def wait_all(ids: list[str], timeout: float = 600) -> list[BackgroundTask]:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                rows = list(BackgroundTask.objects.filter(task_id__in=ids))
                if all(r.finished_at is not None for r in rows) and len(rows) == len(ids):
                    return rows
                time.sleep(0.01)
            raise SystemExit(f"tasks did not finish in {timeout} s:\n{log_path.read_text()[-3000:]}")

        wait_all([launch().task_id for _ in range(5)])  # warm-up: imports, connections, index cache

        starts: list[float] = []
        for _ in range(latency_n):
            [row] = wait_all([launch().task_id])
            assert row.status == "completed", (row.status, row.error)
            starts.append((row.started_at - row.created_at).total_seconds() * 1000)

        began = time.time()
        ids = [launch().task_id for _ in range(burst_n)]
        launched = time.time() - began
        rows = wait_all(ids)
        failed = [r for r in rows if r.status != "completed"]
        assert not failed, [(r.status, r.error) for r in failed[:3]]
        first = min(r.created_at for r in rows)
        last = max(r.finished_at for r in rows)
        span = (last - first).total_seconds()
        burst_starts = [(r.started_at - r.created_at).total_seconds() * 1000 for r in rows]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)

    return {
        "label": label,
        "broker": settings.CELERY_BROKER_URL.split("://")[0],
        "latency_n": latency_n,
        "latency_p50_ms": statistics.median(starts),
        "latency_p99_ms": pct(starts, 99),
        "latency_max_ms": max(starts),
        "burst_n": burst_n,
        "launch_rate": burst_n / launched,
        "throughput": burst_n / span,
        "burst_start_p50_ms": statistics.median(burst_starts),
        "burst_start_p99_ms": pct(burst_starts, 99),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency-n", type=int, default=50)
    parser.add_argument("--burst-n", type=int, default=200)
    parser.add_argument(
        "--redis-server", action="store_true", help="start a throwaway redis-server for the Redis run"
    )
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args.latency_n, args.burst_n)))
        return

    redis_proc = None
    redis_url = os.environ.get("REDIS_URL", "")
    if args.redis_server and not redis_url:
        port = free_port()
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)

    scenarios = [("embedded", {})]
    if redis_url:
        scenarios.append(("redis", {"REDIS_URL": redis_url}))
    results = []
    try:
        for label, extra in scenarios:
            data_dir = tempfile.mkdtemp(prefix=f"bench-tasks-{label}-")
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("DIGITORN_", "CELERY_", "REDIS_URL"))
            }
            env.update({"DIGITORN_DATA_DIR": data_dir, "DIGITORN_ENV_FILE": f"{data_dir}/no.env", **extra})
            out = subprocess.run(
                [sys.executable, __file__, "--scenario", label, "--latency-n", str(args.latency_n),
                 "--burst-n", str(args.burst_n)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            if out.returncode != 0:
                sys.exit(f"{label} scenario failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)

    print("| broker | launch→start p50 | p99 | max | burst | throughput | burst launch→start p50 / p99 |")
    print("|--------|------------------|-----|-----|-------|------------|------------------------------|")
    for r in results:
        print(
            f"| {r['label']} ({r['broker']}) | {r['latency_p50_ms']:.0f} ms | {r['latency_p99_ms']:.0f} ms "
            f"| {r['latency_max_ms']:.0f} ms | {r['burst_n']} | {r['throughput']:.1f} tasks/s "
            f"| {r['burst_start_p50_ms']:.0f} / {r['burst_start_p99_ms']:.0f} ms |"
        )
    print(f"(latency: {results[0]['latency_n']} sequential tasks; burst launched at ~{results[0]['launch_rate']:.0f}/s; "
          "trivial tool filesystem.stat; worker concurrency 2)")  # fmt: skip


if __name__ == "__main__":
    main()
