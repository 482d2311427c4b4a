"""The event log and its doorbells: seq allocation, follow() wake-ups, replay, SSE framing."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection, transaction

from conversations import events
from conversations.events import SessionGone, event_append, follow, sse_frame
from conversations.models import Event, Session
from digitorn_site import fastsql

pytestmark = pytest.mark.django_db(transaction=True)


def make_session(sid: str = "s") -> Session:
    return Session.objects.create(app_id="app", session_id=sid, principal="alice")


def test_seq_is_per_session_and_gap_free_under_concurrency():
    a, b = make_session("a"), make_session("b")

    def writer(session_pk: int) -> None:
        session = Session.objects.get(pk=session_pk)
        for i in range(10):
            with transaction.atomic():
                event_append(session=session, type="t", data={"i": i})
        connection.close()

    threads = [threading.Thread(target=writer, args=(pk,)) for pk in (a.pk, a.pk, b.pk)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(Event.objects.filter(session=a).values_list("seq", flat=True)) == list(range(1, 21))
    assert list(Event.objects.filter(session=b).values_list("seq", flat=True)) == list(range(1, 11))
    assert Session.objects.get(pk=a.pk).last_seq == 20


def test_rollback_drops_event_and_seq():
    session = make_session()
    with pytest.raises(RuntimeError), transaction.atomic():
        event_append(session=session, type="t", data={})
        raise RuntimeError("boom")
    assert not Event.objects.exists()
    assert event_append(session=Session.objects.get(pk=session.pk), type="t", data={}).seq == 1


def test_follow_replays_then_wakes_on_commit_from_another_thread():
    session = make_session()
    for i in range(3):
        event_append(session=session, type="old", data={"i": i})

    async def scenario() -> list[tuple[int, str]]:
        got: list[tuple[int, str]] = []

        def later() -> None:
            s = Session.objects.get(pk=session.pk)
            with transaction.atomic():
                event_append(session=s, type="new", data={})
                event_append(session=s, type="new", data={})

        async def consume() -> None:
            async for event in follow(session_pk=session.pk, after=1, ping_seconds=30):
                assert event is not None  # no ping within the test: the doorbell woke us
                got.append((event.seq, event.type))
                if len(got) == 2:
                    await sync_to_async(later, thread_sensitive=False)()
                if len(got) == 4:
                    return

        await asyncio.wait_for(consume(), timeout=10)
        return got

    assert async_to_sync(scenario)() == [(2, "old"), (3, "old"), (4, "new"), (5, "new")]
    assert events.watching_count() == 0  # the watch was unregistered


def test_poller_wakes_streams_for_events_written_elsewhere():
    """An event inserted without this process's doorbell (another worker) is found by the poller."""
    session = make_session()

    async def scenario() -> int:
        async def consume() -> int:
            async for event in follow(session_pk=session.pk, after=0, ping_seconds=30):
                return event.seq
            return -1

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)

        def foreign_write() -> None:
            with transaction.atomic():
                seq = fastsql.session_next_seq(session.pk)
                Event.objects.create(session_id=session.pk, seq=seq, type="remote", data={})
            # No on_commit doorbell: as if another process had written it.

        await sync_to_async(foreign_write, thread_sensitive=False)()
        return await asyncio.wait_for(task, timeout=10)

    assert async_to_sync(scenario)() == 1


def test_ping_when_idle_and_session_gone():
    session = make_session()

    async def scenario() -> list:
        seen: list = []
        with pytest.raises(SessionGone):
            async for event in follow(session_pk=session.pk, after=0, ping_seconds=0.1):
                seen.append(event)
                if len(seen) == 1:
                    await sync_to_async(lambda: Session.objects.filter(pk=session.pk).delete(), thread_sensitive=False)()
        return seen

    seen = async_to_sync(scenario)()
    assert seen[0] is None  # a ping


def test_sse_frame_format():
    assert sse_frame(type="result", data={"a": 1}, seq=7) == 'id: 7\nevent: result\ndata: {"a":1}\n\n'
    assert sse_frame(type="connected", data={"session_id": "s"}) == 'event: connected\ndata: {"session_id":"s"}\n\n'
    # Newlines inside data stay escaped in JSON, so a frame is never split.
    assert "\n" not in sse_frame(type="t", data={"x": "a\nb"}).split("data: ", 1)[1].rstrip("\n")


def test_wait_born_shares_one_lookup_and_returns_the_pk_once_created():
    """Streams waiting for sessions that do not exist yet are answered by the poller's shared lookup
    (issue 14): each gets its own session's pk, one owner's id never answers another's wait."""

    async def scenario() -> tuple[list, int]:
        keys = [("app", "alice", f"w{i}") for i in range(20)]
        waits = [asyncio.ensure_future(events.wait_born(key, timeout=30)) for key in keys]
        bob = asyncio.ensure_future(events.wait_born(("app", "bob", "w3"), timeout=1.0))
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waits)  # nothing exists: still waiting
        made = await sync_to_async(lambda: make_session("w3").pk, thread_sensitive=False)()
        done = await asyncio.wait_for(waits[3], timeout=10)
        assert done == made
        assert await bob is None  # alice's w3 is not bob's w3: bob's wait times out
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        return [w.cancelled() for w in waits], events.watching_count()

    cancelled, count = async_to_sync(scenario)()
    assert cancelled.count(False) == 1  # only w3 finished
    assert count == 0 and not events._births and not events._born  # nothing left registered


def test_ring_birth_wakes_a_waiter_without_a_session():
    async def scenario():
        key = ("app", "alice", "never")
        wait = asyncio.ensure_future(events.wait_born(key, timeout=30))
        await asyncio.sleep(0.1)
        events.ring_birth(key)
        return await asyncio.wait_for(wait, timeout=5)

    assert async_to_sync(scenario)() is None
