"""Idle session streams cost no thread each (issue 14), whether their session exists or not yet,
and a turn on one of them is still delivered while the others sit idle."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

STREAMS = 40  # per kind: waiting for an unborn session, and following an existing one


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for pid {pid}")


def test_idle_streams_hold_no_thread_each(daemon_factory, app_yaml):
    d = daemon_factory(workers=1, celery_workers=1)
    d.deploy(app_yaml.minimal("idle", rules=[{"steps": [{"say": "pong"}]}]))
    for i in range(STREAMS):  # existing sessions, made by a first message each
        d.sse("/api/apps/idle/chat/stream", method="POST", json_body={"session_id": f"old{i}", "message": "hi"})
    (worker,) = d.child_pids("asgi")
    before = _threads(worker)

    async def scenario() -> tuple[int, list[str]]:
        limits = httpx.Limits(max_connections=2 * STREAMS + 10)
        headers = {"Authorization": f"Bearer {d.key}"}
        async with httpx.AsyncClient(base_url=d.url, headers=headers, limits=limits, timeout=60) as client:
            opened = asyncio.Queue()
            got: list[str] = []

            async def hold(path: str, watch_result: bool) -> None:
                async with client.stream("GET", path) as response:
                    assert response.status_code == 200
                    await opened.put(path)
                    async for line in response.aiter_lines():
                        if watch_result and line.startswith("data: ") and "pong" in line:
                            got.append(path)
                            return

            paths = [f"/api/apps/idle/sessions/new{i}/events" for i in range(STREAMS)]
            paths += [f"/api/apps/idle/sessions/old{i}/events" for i in range(STREAMS)]
            tasks = [asyncio.create_task(hold(p, p.endswith("new0/events"))) for p in paths]
            for _ in paths:
                await asyncio.wait_for(opened.get(), 60)
            await asyncio.sleep(1.0)  # let every stream reach its wait
            held = _threads(worker)
            # The unborn session's stream sees the session appear, then the turn's answer.
            posted = await client.post("/api/apps/idle/sessions/new0/messages", json={"message": "hi"})
            assert posted.status_code == 202, posted.text
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return held, got

    held, got = asyncio.run(scenario())
    assert got == ["/api/apps/idle/sessions/new0/events"], d.log_tail()
    # One thread per stream was 2 x STREAMS more; a handful may come from the executor's growth.
    assert held - before < 10, (before, held)
