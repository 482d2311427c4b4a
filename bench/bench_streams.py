"""Concurrent idle SSE streams one ASGI worker holds, and its memory.

    .venv/bin/python bench/bench_streams.py [--streams 1000]

Starts a real daemon with one ASGI worker on the embedded default, opens N persistent streams
(``/sessions/{sid}/events``, one session each, from one asyncio client), checks each got its
``connected`` frame, reads the worker's RSS from /proc, then sends one message to the last session
and checks its stream still delivers the turn's ``result`` while the others sit idle.
Target on the 2-core machine (issue 4): 1,000 streams per worker under 300 MB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(url: str, key: str, n: int, worker_pid: int) -> None:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {key}"}
    base_rss = rss_mb(worker_pid)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=httpx.Timeout(120)) as client:
        opened = 0
        stacks = []

        async def hold(i: int, ready: asyncio.Event, done: asyncio.Event) -> None:
            nonlocal opened
            async with client.stream("GET", f"/api/apps/streams/sessions/s{i}/events") as response:
                assert response.status_code == 200, response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("event: connected"):
                        opened += 1
                        ready.set()
                    if line.startswith("event: result"):
                        done.set()
                        return

        t0 = time.perf_counter()
        readies = []
        dones = []
        for i in range(n):
            ready, done = asyncio.Event(), asyncio.Event()
            readies.append(ready)
            dones.append(done)
            stacks.append(asyncio.create_task(hold(i, ready, done)))
            if i % 50 == 49:
                await asyncio.gather(*(r.wait() for r in readies[-50:]))
        await asyncio.gather(*(r.wait() for r in readies))
        open_s = time.perf_counter() - t0
        await asyncio.sleep(2)
        cpu0, t_cpu = cpu_seconds(worker_pid), time.perf_counter()
        await asyncio.sleep(5)
        cpu_pct = 100 * (cpu_seconds(worker_pid) - cpu0) / (time.perf_counter() - t_cpu)
        held_rss = rss_mb(worker_pid)
        print(f"streams open: {opened}/{n} in {open_s:.1f} s")
        print(f"ASGI worker RSS: {base_rss:.0f} MB before, {held_rss:.0f} MB holding {n} idle streams "
              f"(+{(held_rss - base_rss) * 1024 / max(n, 1):.0f} KB per stream)")
        print(f"ASGI worker while holding them: {threads(worker_pid)} threads, {cpu_pct:.1f} % CPU (5 s)")
        t1 = time.perf_counter()
        r = await client.post(f"/api/apps/streams/sessions/s{n - 1}/messages", json={"message": "ping"})
        assert r.status_code == 202, r.text
        await asyncio.wait_for(dones[-1].wait(), 60)
        print(f"a turn on one of them with all open: done delivered in {(time.perf_counter() - t1) * 1000:.0f} ms")
        for task in stacks:
            task.cancel()
        await asyncio.gather(*stacks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()
    from tests.conftest import AppYaml, start_daemon

    root = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    daemon = start_daemon(root / "data", workers=1, celery_workers=1)
    try:
        daemon.deploy(AppYaml(root / "apps").minimal("streams"), force=True)
        daemon.client.put("/api/apps/streams/quota", json={"rpm": 1_000_000})
        (worker,) = daemon.child_pids("asgi")
        asyncio.run(run(daemon.url, daemon.key, args.streams, worker))
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
