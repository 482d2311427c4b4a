"""``digitorn_site.asyncdb``: database hops from the event loop on a pool of warm threads.

The semantics are those of ``sync_to_async(thread_sensitive=False)``, which the hops used before
(context, exceptions, cancellation, async_to_sync inside a hop); what is new is which thread runs a
hop: the most recently idle one, so a connection whose page cache is warm serves the next hop.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading

import pytest
from asgiref.sync import async_to_sync

from digitorn_site.asyncdb import HopPool, db

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_asyncdb_var", default="unset")


@pytest.mark.parametrize("through", ["db", "pool"])
def test_sequential_hops_after_a_busy_moment_stay_on_one_thread(through):
    """After four concurrent hops made four threads, later one-at-a-time hops all run on the thread
    that went idle last (its SQLite page cache is warm), not round the pool."""
    pool = HopPool(6)
    if through == "db":
        pool.run = lambda fn: db(fn)()  # the module's own pool, as every caller uses it
    barrier = threading.Barrier(4, timeout=10)

    def busy() -> int:
        barrier.wait()
        return threading.get_ident()

    async def scenario() -> tuple[set[int], list[int]]:
        concurrent = await asyncio.gather(*(pool.run(busy) for _ in range(4)))
        sequential = [await pool.run(threading.get_ident) for _ in range(12)]
        return set(concurrent), sequential

    concurrent, sequential = asyncio.run(scenario())
    assert len(concurrent) == 4
    assert len(set(sequential)) == 1
    assert sequential[0] in concurrent and sequential[0] != threading.get_ident()


def test_the_pool_is_bounded_and_queued_hops_all_run_first_come_first_served():
    def scenario(pool: HopPool) -> tuple[list[int], set[int], list[int]]:
        gate = threading.Event()
        threads, order = set(), []

        def hop(i: int) -> int:
            gate.wait(10)
            threads.add(threading.get_ident())
            order.append(i)
            return i * i

        async def main() -> list[int]:
            runs = [asyncio.ensure_future(pool.run(hop, i)) for i in range(10)]
            await asyncio.sleep(0.05)
            gate.set()
            return await asyncio.gather(*runs)

        return asyncio.run(main()), threads, order

    results, threads, _ = scenario(HopPool(2))
    assert results == [i * i for i in range(10)] and len(threads) == 2
    results, threads, order = scenario(HopPool(1))
    assert results == [i * i for i in range(10)] and len(threads) == 1
    assert order == list(range(10))


def test_a_hop_sees_the_callers_context_and_its_own_changes_stay_in_the_hop():
    def read_and_set() -> str:
        seen = VAR.get()
        VAR.set("set in the hop")
        return seen

    async def scenario() -> tuple[str, str, str]:
        VAR.set("caller")
        seen = await db(read_and_set)()
        after = VAR.get()
        VAR.set("second")
        return seen, after, await db(VAR.get)()

    assert asyncio.run(scenario()) == ("caller", "caller", "second")


def test_arguments_results_and_exceptions_cross_unchanged():
    class Refused(Exception):
        pass

    def fail(kind: str) -> None:
        raise Refused(kind)

    async def scenario() -> None:
        assert await db(lambda a, *, b: (a, b))(1, b=[2]) == (1, [2])
        with pytest.raises(Refused, match="nope") as caught:
            await db(fail)("nope")
        assert any(frame.name == "fail" for frame in __import__("traceback").extract_tb(caught.tb))
        with pytest.raises(KeyError):
            await db({}.__getitem__)("missing")
        # StopIteration cannot travel through a future; it must not hang the caller.
        with pytest.raises(RuntimeError, match="StopIteration"):
            await db(next)(iter(()))

    asyncio.run(scenario())


def test_cancelling_the_caller_is_immediate_and_a_started_call_still_finishes():
    pool = HopPool(1)
    started, release, finished, never = threading.Event(), threading.Event(), threading.Event(), []

    def slow() -> str:
        started.set()
        release.wait(10)
        finished.set()
        return "done"

    async def scenario() -> None:
        running = asyncio.ensure_future(pool.run(slow))
        queued = asyncio.ensure_future(pool.run(never.append, "ran"))  # waits behind it: one thread
        while not started.is_set():
            await asyncio.sleep(0.005)
        running.cancel()
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert not finished.is_set()  # the caller did not wait for the call to end
        release.set()
        assert await pool.run(lambda: "next") == "next"  # the thread is free again afterwards

    asyncio.run(scenario())
    assert finished.is_set()
    assert never == []  # a call cancelled before it started never runs


def test_async_to_sync_inside_a_hop_runs_on_the_callers_loop():
    async def which_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        return await db(async_to_sync(which_loop))() is loop

    assert asyncio.run(scenario())


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_a_pool_of_its_own():
    async def warm() -> int:
        return await db(threading.get_ident)()

    asyncio.run(warm())  # the parent's pool has a thread now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            ok = asyncio.run(asyncio.wait_for(warm(), 10)) != threading.get_ident()
        except BaseException:  # noqa: BLE001
            ok = False
        sys.stdout.flush()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
