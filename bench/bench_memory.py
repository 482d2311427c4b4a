"""Memory of the whole embedded daemon, per process, after a concurrent load.

    .venv/bin/python bench/bench_memory.py [--clients 20] [--turns 20] [--workers 1]

Starts a real daemon (``digitorn start --workers N``, its Celery worker and scheduler) in a fresh
data dir on the embedded default, deploys the peers-bench turn (scripted brain, one
``filesystem.find`` call and one answer, every event persisted), drives ``--clients`` concurrent
clients through ``--turns`` turns each over ``POST /chat/stream``, then prints the RSS and PSS of
every process of the daemon's tree (supervisor, ASGI workers, Celery worker and its pool, beat).

RSS summed over the tree is what ``ps`` and the peers benchmark report (shared pages counted once
per process); PSS splits shared pages between the processes that map them (what ``smem`` sums).
Target (issue 14): the RSS sum ≤ 250 MiB with one ASGI worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc, no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def memory(pid: int) -> tuple[float, float, int, str]:
    """(RSS MiB, PSS MiB, threads, command line) of one process."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return rss / 1024, pss / 1024, threads, cmd


def label(cmd: str) -> str:
    for needle, name in (
        ("asgi_worker", "asgi worker"),
        (" beat", "celery beat"),
        (" worker", "celery worker"),
        ("cli.supervisor", "supervisor"),
        ("digitorn start", "supervisor (foreground)"),
    ):
        if needle in cmd:
            return name
    return cmd[:40]


def report(pid: int, title: str) -> float:
    rows = []
    for p in proc_tree(pid):
        try:
            rows.append((p, *memory(p)))
        except OSError:
            continue
    print(f"\n{title}")
    print("| process | pid | RSS MiB | PSS MiB | threads |\n|---|---|---|---|---|")
    for p, rss, pss, threads, cmd in rows:
        print(f"| {label(cmd)} | {p} | {rss:.1f} | {pss:.1f} | {threads} |")
    total_rss = sum(r[1] for r in rows)
    total_pss = sum(r[2] for r in rows)
    print(f"| **total** ({len(rows)} processes) | | **{total_rss:.1f}** | {total_pss:.1f} | {sum(r[3] for r in rows)} |")
    return total_rss


async def load(url: str, key: str, clients: int, turns: int) -> tuple[int, float]:
    headers = {"Authorization": f"Bearer {key}"}
    done = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal done
        for t in range(turns):
            body = {"session_id": f"c{i}", "message": f"list the files {t}"}
            async with client.stream("POST", "/api/apps/bench/chat/stream", json=body) as response:
                assert response.status_code == 200, response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("event: result"):
                        done += 1
                        break

    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(clients)))
        return done, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the load")
    args = parser.parse_args()

    from tests.conftest import AppYaml, start_daemon

    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    daemon = start_daemon(root / "data", workers=args.workers, celery_workers=1)
    try:
        apps = AppYaml(root / "apps")
        for name in ("alpha", "beta", "gamma"):
            (apps.workspace / f"{name}.py").write_text(f"print({name!r})\n")
        rules = [{"steps": [{"call": "filesystem.find", "params": {"pattern": "*.py", "path": "."}},
                            {"say": "list_files FINAL: {result}"}]}]
        daemon.deploy(apps.minimal("bench", rules=rules, runtime={"rate_limit_rpm": 100000}), force=True)
        supervisor = json.loads((root / "data" / "daemon.json").read_text())["pid"]
        time.sleep(2)
        report(supervisor, "after start")
        done, elapsed = asyncio.run(load(daemon.url, daemon.key, args.clients, args.turns))
        time.sleep(args.settle)
        print(f"\n{done} turns by {args.clients} clients in {elapsed:.1f} s ({done / elapsed:.1f} turns/s)")
        total = report(supervisor, f"after {args.clients} clients x {args.turns} turns")
        print(f"\nRSS total: {total:.1f} MiB (target ≤ 250 MiB with 1 ASGI worker)")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
