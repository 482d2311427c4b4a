"""Turn overhead: message accepted → the turn's `result` delivered, for a turn with one tool call (scripted brain).

    .venv/bin/python bench/bench_turns.py [--turns 200] [--workers 1]

Starts a real daemon (``digitorn start``) in a fresh data dir on the embedded default (SQLite WAL,
in-process doorbell), deploys an app whose scripted agent calls ``filesystem.read`` once then
answers, opens the persistent stream ``/sessions/{sid}/events`` and sends messages one at a time
with ``POST .../messages``. Per turn it records:

- accepted→done: from the 202 response to the turn's `result` event arriving on the stream (the engine:
  claim, brain, tool, result, final answer, with every event committed and pushed);
- sent→done: from just before the POST to `result` (adds the HTTP request/auth/rate-limit path).

Targets on the 2-core machine (issue 4): p50 ≤ 25 ms, p99 ≤ 100 ms on the embedded default.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def _quiet(fn) -> None:
    try:
        fn()
    except httpx.HTTPError:
        pass  # the stream ends when the daemon stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    from tests.conftest import AppYaml, start_daemon

    root = Path(tempfile.mkdtemp(prefix="bench-turns-"))
    daemon = start_daemon(root / "data", workers=args.workers, celery_workers=1)
    try:
        apps = AppYaml(root / "apps")
        (apps.workspace / "README.md").write_text("# bench\n")
        rules = [{"steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "ok {result}"}]}]
        daemon.deploy(apps.minimal("bench", rules=rules), force=True)
        daemon.client.put("/api/apps/bench/quota", json={"rpm": 1_000_000})

        done_at: queue.Queue[tuple[str, float]] = queue.Queue()
        opened = threading.Event()

        def reader() -> None:
            with httpx.Client(base_url=daemon.url, timeout=None) as c, c.stream(
                "GET", "/api/apps/bench/sessions/b1/events", headers={"Authorization": f"Bearer {daemon.key}"}
            ) as response:
                opened.set()
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "result":
                        done_at.put((json.loads(line[6:])["correlation_id"], time.perf_counter()))

        threading.Thread(target=lambda: _quiet(reader), daemon=True).start()
        opened.wait(10)
        time.sleep(0.3)
        accepted, sent = [], []
        with httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {daemon.key}"}, timeout=30) as c:
            for i in range(args.warmup + args.turns):
                t_send = time.perf_counter()
                response = c.post("/api/apps/bench/sessions/b1/messages", json={"message": f"m{i}"})
                t_accepted = time.perf_counter()
                assert response.status_code == 202, response.text
                correlation = response.json()["data"]["correlation_id"]
                got, t_done = done_at.get(timeout=30)
                assert got == correlation, (got, correlation)
                if i >= args.warmup:
                    accepted.append((t_done - t_accepted) * 1000)
                    sent.append((t_done - t_send) * 1000)
        backend = "PostgreSQL + Redis" if os.environ.get("DATABASE_URL") else "embedded default (SQLite WAL)"
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"turns: {args.turns} (one tool call each), ASGI workers: {args.workers}, {backend}, load average {load}")
        for label, values in (("accepted→done", accepted), ("sent→done", sent)):
            print(f"{label:>14}: p50 {pct(values, 50):6.1f} ms   p99 {pct(values, 99):6.1f} ms   "
                  f"mean {statistics.mean(values):6.1f} ms   max {max(values):6.1f} ms")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
