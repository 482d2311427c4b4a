"""Soak: many turns on the embedded daemon with retention on; the database and RSS must level off.

    .venv/bin/python bench/bench_soak.py [--turns 100000] [--clients 20] [--report-every 5000]

Starts a real daemon (``digitorn start --workers 1``) whose retention sweep runs every few seconds,
deploys the peers-bench turn (one ``filesystem.find`` call and one answer) with a short session
idle timeout, and drives ``--clients`` concurrent clients, each turn on a new session (as one-shot
clients do). Expired sessions go with their transcript and events at each sweep; audit rows of gone
sessions after ``--audit-retention-days`` (fractional days allowed). Every ``--report-every`` turns
it prints the database size (main file + WAL), the rows left in the big tables, and the RSS summed
over the daemon's process tree. Without pruning every column but RSS grows linearly with the turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_memory import memory, proc_tree  # noqa: E402


def db_facts(data_dir: Path) -> tuple[float, dict[str, int]]:
    path = data_dir / "digitorn.sqlite3"
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    counts = {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        for table in ("conversations_session", "conversations_event", "conversations_message",
                      "tooling_toolexecution"):
            counts[table.split("_", 1)[1]] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return size / 1024 / 1024, counts


async def drive(url: str, key: str, clients: int, turns: int, report_every: int, report) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    done = 0
    next_report = report_every
    lock = asyncio.Lock()

    async def one(client: httpx.AsyncClient, c: int) -> None:
        nonlocal done, next_report
        n = 0
        while done < turns:
            body = {"session_id": f"soak-{c}-{n}", "message": "list the files"}
            n += 1
            async with client.stream("POST", "/api/apps/bench/chat/stream", json=body) as response:
                assert response.status_code == 200, response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("event: result"):
                        break
            async with lock:
                done += 1
                if done >= next_report:
                    next_report += report_every
                    await asyncio.to_thread(report, done)

    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        await asyncio.gather(*(one(client, c) for c in range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--report-every", type=int, default=5_000)
    parser.add_argument("--idle-seconds", type=int, default=5, help="the app's session idle timeout")
    parser.add_argument("--sweep-seconds", type=float, default=5.0)
    parser.add_argument("--audit-retention-days", type=float, default=0.0005)  # ~43 s
    args = parser.parse_args()

    from tests.conftest import AppYaml, start_daemon

    root = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    data = root / "data"
    env = {"DIGITORN_RETENTION_SWEEP_SECONDS": str(args.sweep_seconds),
           "DIGITORN_RETENTION_DAYS": str(args.audit_retention_days)}
    daemon = start_daemon(data, workers=1, celery_workers=1, env=env)
    try:
        apps = AppYaml(root / "apps")
        for name in ("alpha", "beta", "gamma"):
            (apps.workspace / f"{name}.py").write_text(f"print({name!r})\n")
        rules = [{"steps": [{"call": "filesystem.find", "params": {"pattern": "*.py", "path": "."}},
                            {"say": "list_files FINAL: {result}"}]}]
        daemon.deploy(apps.minimal("bench", rules=rules, runtime={
            "rate_limit_rpm": 1_000_000, "session_idle_seconds": args.idle_seconds}), force=True)
        supervisor = json.loads((data / "daemon.json").read_text())["pid"]
        t0 = time.perf_counter()
        print("| turns | elapsed s | turns/s | DB MiB (+WAL) | sessions | events | messages | audit rows | RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|")

        def report(done: int) -> None:
            size, counts = db_facts(data)
            rss = sum(memory(p)[0] for p in proc_tree(supervisor))
            elapsed = time.perf_counter() - t0
            print(f"| {done} | {elapsed:.0f} | {done / elapsed:.1f} | {size:.1f} | {counts['session']} | "
                  f"{counts['event']} | {counts['message']} | {counts['toolexecution']} | {rss:.0f} |", flush=True)

        asyncio.run(drive(daemon.url, daemon.key, args.clients, args.turns, args.report_every, report))
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
