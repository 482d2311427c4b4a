"""Soak: many turns on the embedded daemon with retention on; the database and RSS must level off.

    .venv/bin/python bench/bench_soak.py [--turns 100000] [--clients 20] [--report-every 5000]
                                         [--workers 1] [--rate 0] [--nice 0] [--max-seconds 0]

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
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

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


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for one endpoint: the soak runs 100,000 turns on a 2-core
    machine where the client competes with the daemon, and httpx splits every SSE line in Python.
    It sends the POST, reads the chunked SSE answer to its end (so the connection can be reused)
    and reports whether a ``result`` event came."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def post_stream(self, path: str, body: bytes) -> bool:
        for attempt in (0, 1):  # once more on a fresh connection if the kept one was closed
            if self.writer is None:
                await self._connect()
            try:
                return await self._exchange(path, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        return False

    async def _exchange(self, path: str, body: bytes) -> bool:
        assert self.reader is not None and self.writer is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status = await self.reader.readuntil(b"\r\n")
        if b" 200 " not in status:
            raise AssertionError(status.decode(errors="replace").strip())
        headers = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        if b"transfer-encoding: chunked" in headers:
            payload = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                payload += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:  # no chunking: the server closes the connection at the end of the stream
            payload = await self.reader.read()
            await self.close()
        if b"connection: close" in headers:
            await self.close()
        return b"event: result" in payload


async def drive(url: str, key: str, clients: int, turns: int, report_every: int, report,
                rate: float = 0.0, max_seconds: float = 0.0) -> int:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    done = started = 0
    next_report = report_every
    lock = asyncio.Lock()
    t0 = time.perf_counter()

    async def one(c: int) -> None:
        nonlocal done, started, next_report
        client = RawClient(host, int(port), key)
        n = 0
        try:
            while started < turns and not (max_seconds and time.perf_counter() - t0 > max_seconds):
                started += 1
                if rate > 0:  # paced: turn k is not sent before t0 + k / rate
                    delay = t0 + started / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = json.dumps({"session_id": f"soak-{c}-{n}", "message": "list the files"}).encode()
                n += 1
                if not await client.post_stream("/api/apps/bench/chat/stream", body):
                    raise AssertionError(f"no result event for soak-{c}-{n - 1}")
                async with lock:
                    done += 1
                    if done >= next_report:
                        next_report += report_every
                        await asyncio.to_thread(report, done)
        finally:
            await client.close()

    await asyncio.gather(*(one(c) for c in range(clients)))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--report-every", type=int, default=5_000)
    parser.add_argument("--idle-seconds", type=int, default=5, help="the app's session idle timeout")
    parser.add_argument("--sweep-seconds", type=float, default=5.0)
    parser.add_argument("--audit-retention-days", type=float, default=0.0005)  # ~43 s
    parser.add_argument("--workers", type=int, default=1, help="ASGI workers of the daemon")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="turns/s to offer (0: as fast as it goes); a cap leaves the machine room")
    parser.add_argument("--nice", type=int, default=0, help="run the daemon and this client niced")
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="stop starting turns after this long (0: no bound), then report once more")
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)  # the daemon started below inherits it

    from tests.conftest import AppYaml, start_daemon

    root = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    data = root / "data"
    env = {"DIGITORN_RETENTION_SWEEP_SECONDS": str(args.sweep_seconds),
           "DIGITORN_RETENTION_DAYS": str(args.audit_retention_days)}
    daemon = start_daemon(data, workers=args.workers, celery_workers=1, env=env)
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

        done = asyncio.run(drive(daemon.url, daemon.key, args.clients, args.turns, args.report_every, report,
                                 args.rate, args.max_seconds))
        if done % args.report_every:
            report(done)
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
