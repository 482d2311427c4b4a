"""Load: N concurrent sessions, each streaming its events and sending M messages (one tool call each).

    .venv/bin/python bench/bench_load.py [--sessions 50] [--messages 4] [--workers 1] [--rate 50]

Starts its own daemon (``digitorn start --workers N``, one Celery worker) in a fresh temp data dir on
a free loopback port, on the embedded default, or on PostgreSQL + Redis when ``DATABASE_URL`` and
``REDIS_URL`` are exported (see ``scripts/scaleout_services.sh``). It deploys an app whose scripted
agent calls ``filesystem.read`` once and answers (``--workload reply``: answers at once), and lifts the app's rate limit. Then every session:

1. opens the persistent stream ``GET /sessions/{sid}/events`` and waits for ``connected``;
2. sends its messages one after another with ``POST /sessions/{sid}/messages`` (the next one once
   the previous turn's ``result`` arrived), all sessions together paced to ``--rate`` messages/s.

Measured: messages/s (accepted ``result``s over the sending phase), accepted → ``result`` latency p50/p99
(from the 202 response to the ``result`` event on the stream), HTTP errors (non-2xx, 5xx, transport
errors), and stream integrity per session: ``seq`` strictly consecutive (no gap, no duplicate) and
exactly one ``result`` per correlation_id. Bounded: everything stops after ``--max-seconds``; the
daemon is stopped (``digitorn stop``) on the way out. Exit status 1 if any integrity check failed,
a message got no ``result``, or a 5xx was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
APP = "loadbench"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


@dataclass
class SessionRun:
    sid: str
    seqs: list[int] = field(default_factory=list)
    done_counts: Counter = field(default_factory=Counter)
    done_at: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)  # send -> 202
    sent_at: dict[str, float] = field(default_factory=dict)
    send_to_done: list[float] = field(default_factory=list)
    sent: int = 0
    missing_done: int = 0
    late: dict[str, float] = field(default_factory=dict)
    stream_error: str = ""
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def done_future(self, cid: str) -> asyncio.Future:
        if cid not in self.waiters:
            self.waiters[cid] = asyncio.get_running_loop().create_future()
        return self.waiters[cid]

    def problems(self) -> list[str]:
        out = []
        if self.stream_error:
            out.append(f"{self.sid}: stream error {self.stream_error}")
        if len(self.seqs) != len(set(self.seqs)):
            dups = [s for s, n in Counter(self.seqs).items() if n > 1]
            out.append(f"{self.sid}: duplicated seq {dups[:5]}")
        gaps = [(a, b) for a, b in zip(self.seqs, self.seqs[1:], strict=False) if b != a + 1]
        if gaps:
            out.append(f"{self.sid}: seq not consecutive at {gaps[:5]}")
        extra = {cid: n for cid, n in self.done_counts.items() if n != 1}
        if extra:
            out.append(f"{self.sid}: correlation ids with {extra} `result` events (expected exactly 1)")
        if self.missing_done:
            out.append(f"{self.sid}: {self.missing_done} accepted message(s) got no `result` within 2 x --turn-timeout")
        return out


class Pacer:
    """Hands out send slots at ``rate`` per second across all sessions (0 = no pacing)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.perf_counter()
        self.lock = asyncio.Lock()

    async def slot(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.perf_counter()
            wait = self.next - now
            self.next = max(self.next, now) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)


async def read_stream(client: httpx.AsyncClient, run: SessionRun, connected: asyncio.Event) -> None:
    event, data, seq = "", [], None
    try:
        async with client.stream("GET", f"/api/apps/{APP}/sessions/{run.sid}/events") as response:
            if response.status_code != 200:
                run.stream_error = f"HTTP {response.status_code}"
                connected.set()
                return
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    seq = int(line[3:].strip())
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "":
                    if event == "connected":
                        connected.set()
                    elif event:
                        if seq is not None:
                            run.seqs.append(seq)
                        if event == "result":  # the turn's last event
                            cid = json.loads("\n".join(data))["correlation_id"]
                            run.done_counts[cid] += 1
                            run.done_at.setdefault(cid, time.perf_counter())
                            future = run.done_future(cid)
                            if not future.done():
                                future.set_result(run.done_at[cid])
                    event, data, seq = "", [], None
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash
        run.stream_error = f"{type(exc).__name__}: {exc}"
        connected.set()


async def drive_session(client: httpx.AsyncClient, run: SessionRun, messages: int, pacer: Pacer,
                        start: asyncio.Event, stats: Counter, turn_timeout: float) -> None:
    reader = asyncio.create_task(read_stream(client, run, run.connected))
    try:
        await asyncio.wait_for(run.connected.wait(), 120)
        await start.wait()
        for index in range(messages):
            if run.stream_error:
                break
            await pacer.slot()
            posted = time.perf_counter()
            try:
                response = await client.post(f"/api/apps/{APP}/sessions/{run.sid}/messages",
                                             json={"message": f"read it ({index})"})
            except httpx.HTTPError as exc:
                stats[f"transport error: {type(exc).__name__}"] += 1
                continue
            accepted = time.perf_counter()
            stats[f"HTTP {response.status_code}"] += 1
            if response.status_code != 202:
                continue
            run.sent += 1
            cid = response.json()["data"]["correlation_id"]
            run.post_ms.append((accepted - posted) * 1000)
            run.sent_at[cid] = posted
            try:
                done = await asyncio.wait_for(asyncio.shield(run.done_future(cid)), turn_timeout)
            except TimeoutError:
                # Slow is not lost: keep listening for it (below) and move on to the next message.
                run.late[cid] = accepted
                continue
            run.latencies.append(max(0.0, done - accepted) * 1000)
            run.send_to_done.append((done - posted) * 1000)
        for cid, accepted in run.late.items():
            try:
                done = await asyncio.wait_for(asyncio.shield(run.done_future(cid)), turn_timeout)
            except TimeoutError:
                run.missing_done += 1
                continue
            run.latencies.append(max(0.0, done - accepted) * 1000)
            run.send_to_done.append((done - run.sent_at[cid]) * 1000)
        # Let a late duplicate `result` (if any) arrive before the stream closes.
        await asyncio.sleep(0.5)
    finally:
        reader.cancel()
        try:
            await reader
        except asyncio.CancelledError:
            pass


async def run_load(url: str, key: str, args) -> dict:
    limits = httpx.Limits(max_connections=args.sessions * 2 + 10, max_keepalive_connections=args.sessions * 2)
    runs = [SessionRun(sid=f"load-{i:04d}") for i in range(args.sessions)]
    stats: Counter = Counter()
    start = asyncio.Event()
    pacer = Pacer(args.rate)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        tasks = [asyncio.create_task(drive_session(client, run, args.messages, pacer, start, stats, args.turn_timeout))
                 for run in runs]
        # Every stream attached before the first message: the test is "N sessions streaming at once".
        await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in runs)), 120)
        attached = sum(1 for r in runs if not r.stream_error)
        t0 = time.perf_counter()
        start.set()
        pacer.next = t0
        done, pending = await asyncio.wait(tasks, timeout=args.max_seconds)
        finished = [at for run in runs for at in run.done_at.values()]
        elapsed = (max(finished) if finished else time.perf_counter()) - t0
        for task in pending:
            task.cancel()
        timed_out = len(pending)
        for task in done:
            if task.exception() is not None:
                stats[f"session error: {type(task.exception()).__name__}"] += 1
    latencies = [value for run in runs for value in run.latencies]
    problems = [p for run in runs for p in run.problems()]
    return {
        "sessions": args.sessions,
        "messages_per_session": args.messages,
        "sent": sum(r.sent for r in runs),
        "done": len(latencies),
        "elapsed_s": elapsed,
        "msgs_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies) if latencies else float("nan"),
        "mean_ms": statistics.mean(latencies) if latencies else float("nan"),
        "post_p50_ms": pct([v for run in runs for v in run.post_ms], 50),
        "post_p99_ms": pct([v for run in runs for v in run.post_ms], 99),
        "send_done_p50_ms": pct([v for run in runs for v in run.send_to_done], 50),
        "send_done_p99_ms": pct([v for run in runs for v in run.send_to_done], 99),
        "http": dict(stats),
        "errors_5xx": sum(n for k, n in stats.items() if k.startswith("HTTP 5")),
        "errors_non2xx": sum(n for k, n in stats.items() if k.startswith("HTTP ") and not k.startswith("HTTP 2")),
        "transport_errors": sum(n for k, n in stats.items() if not k.startswith("HTTP ")),
        "events": sum(len(r.seqs) for r in runs),
        "streams_attached": attached,
        "integrity_problems": problems,
        "sessions_timed_out": timed_out,
        "late_done": sum(len(r.late) for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions, each with its own stream")
    parser.add_argument("--messages", type=int, default=4, help="messages per session")
    parser.add_argument("--workers", type=int, default=1, help="ASGI workers (digitorn start --workers)")
    parser.add_argument("--celery-workers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=50.0, help="total messages/s offered (0: as fast as possible)")
    parser.add_argument("--max-seconds", type=float, default=100.0, help="hard stop for the sending phase")
    parser.add_argument("--turn-timeout", type=float, default=30.0, help="give up on a message's `result` after this")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra daemon environment (e.g. DIGITORN_DB_POOL=1); repeatable")
    parser.add_argument("--workload", choices=["tool", "reply"], default="tool",
                        help="tool: each turn calls filesystem.read then answers (default); "
                             "reply: the scripted agent answers at once")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    from tests.conftest import AppYaml, start_daemon

    backend = "PostgreSQL + Redis" if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL") else "embedded default (SQLite WAL)"
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    t_start = time.perf_counter()
    extra_env = dict(item.split("=", 1) for item in args.env)
    daemon = start_daemon(root / "data", workers=args.workers, celery_workers=args.celery_workers, env=extra_env)
    try:
        apps = AppYaml(root / "apps")
        (apps.workspace / "README.md").write_text("# load bench\n")
        if args.workload == "tool":
            rules = [{"steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "read {result}"}]}]
        else:
            rules = [{"steps": [{"say": "echo: {message}"}]}]
        daemon.deploy(apps.minimal(APP, rules=rules), force=True)
        assert daemon.client.put(f"/api/apps/{APP}/quota", json={"rpm": 1_000_000}).status_code == 200
        # Warm-up turns (tool index, brain, module caches in each worker) are not measured. A fresh
        # connection each: the kernel hashes connections to workers, so 6 per worker leave one
        # of 4 workers cold with probability ~0.1% (2 per worker on one keep-alive client warmed one).
        for i in range(6 * args.workers):
            with httpx.Client(base_url=daemon.url, headers={"Authorization": f"Bearer {daemon.key}"},
                              timeout=60) as fresh:
                warm = fresh.post(f"/api/apps/{APP}/chat", json={"session_id": f"warmup-{i}", "message": "hi"})
            assert warm.status_code == 200, warm.text
        result = asyncio.run(run_load(daemon.url, daemon.key, args))
    finally:
        daemon.stop()
    result.update(workers=args.workers, workload=args.workload, backend=backend, env=extra_env, rate_offered=args.rate,
                  wall_s=time.perf_counter() - t_start, load_average=[round(x, 2) for x in os.getloadavg()])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{backend}{' ' + str(extra_env) if extra_env else ''}, {args.workers} ASGI worker(s), {args.sessions} sessions x {args.messages} messages "
              f"({args.workload} workload), "
              f"offered {args.rate or 'unpaced'} msg/s, load average {' '.join(map(str, result['load_average']))}")
        print(f"  done {result['done']}/{result['sent']} accepted in {result['elapsed_s']:.1f} s "
              f"→ {result['msgs_per_s']:.1f} msg/s")
        print(f"  accepted→done: p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
              f"max {result['max_ms']:.0f} ms, mean {result['mean_ms']:.0f} ms")
        print(f"  send→202 (POST round trip): p50 {result['post_p50_ms']:.0f} ms, p99 {result['post_p99_ms']:.0f} ms; "
              f"send→done: p50 {result['send_done_p50_ms']:.0f} ms, p99 {result['send_done_p99_ms']:.0f} ms")
        print(f"  HTTP: {result['http']}; 5xx {result['errors_5xx']}, non-2xx {result['errors_non2xx']}, "
              f"transport errors {result['transport_errors']}")
        print(f"  streams attached {result['streams_attached']}/{args.sessions}; "
              f"events streamed {result['events']}; integrity problems {len(result['integrity_problems'])}; "
              f"sessions cut by --max-seconds {result['sessions_timed_out']}; "
              f"`result` later than --turn-timeout {result['late_done']}")
        for problem in result["integrity_problems"][:20]:
            print(f"    {problem}")
    bad = result["integrity_problems"] or result["errors_5xx"] or result["done"] < result["sent"] \
        or result["sessions_timed_out"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
