"""Issue 14: committed events handed to this process's streams without a re-read, one write per
wake-up, pings without a re-read, the poller's commit counter, and the DB as the fallback whenever
a handoff is in doubt (a gap, callbacks out of order, an overflow)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.test import AsyncClient

from conversations import events
from conversations.events import LoggedEvent, SessionGone, event_append, follow, follow_batches
from conversations.models import Event, Session
from digitorn_site import fastsql
from tests.helpers import HEADERS, make_workspace, scripted_manifest
from tests.test_security_holes import _read_until
from tests.test_sessions_api import stream_post

pytestmark = pytest.mark.django_db(transaction=True)
# The handoff and the commit counter are SQLite's (PostgreSQL's jsonb reorders keys; data_version
# is SQLite's): there streams read the log and the poller queries every interval.
sqlite_only = pytest.mark.skipif(not settings.IS_SQLITE, reason="SQLite only: the handoff and PRAGMA data_version")


def make_session(sid: str = "s") -> Session:
    return Session.objects.create(app_id="app", session_id=sid, principal="alice")


def foreign_write(session_pk: int, n: int) -> list[int]:
    """Events written without this process's doorbell or handoff (as another worker would)."""
    seqs = []
    with transaction.atomic():
        for i in range(n):
            seq = fastsql.session_next_seq(session_pk)
            Event.objects.create(session_id=session_pk, seq=seq, type="remote", data={"i": i})
            seqs.append(seq)
    return seqs


def stored(session_pk: int, seqs: list[int]) -> list[tuple]:
    """What an on_commit callback hands over for those (committed) rows."""
    rows = Event.objects.filter(session_id=session_pk, seq__in=seqs).order_by("seq")
    return [(e.seq, e.type, json.dumps(e.data), e.correlation_id, e.created_at) for e in rows]


# --- the live stream sends what a replay sends ----------------------------------------------------


@pytest.fixture
def demo(tmp_path: Path, deployed_app, admin_key) -> str:
    ws = make_workspace(tmp_path, {"README.md": "# Demo \"project\" é\n"})
    deployed_app(scripted_manifest("demo", ws, [
        {"when": "read", "steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "read: {result}"}]},
        {"steps": [{"say": "echo: {message}"}]},
    ]), force=True)
    return "demo"


def _framed(text: str) -> dict[int, str]:
    frames = [f for f in text.split("\n\n") if f.startswith("id: ")]
    return {int(f.split("\n", 1)[0][4:]): f for f in frames}


def test_live_frames_equal_replayed_frames_byte_for_byte(demo):
    # Two turns: the second one's stream starts with a known session (its events are handed over).
    for message in ("hello", "read the readme"):
        response, text = stream_post("/api/apps/demo/chat/stream", {"session_id": "s1", "message": message})
        assert response.status_code == 200
    live = _framed(text)
    types = [f.split("\n")[1] for f in live.values()]
    assert "event: tool_start" in types and "event: tool_call" in types and types[-1] == "event: result"
    first, last = min(live), max(live)

    async def replay(**how) -> list[str]:
        response = await AsyncClient().get(f"/api/apps/demo/sessions/s1/events{how.get('query', '')}",
                                           headers={**HEADERS, **how.get("headers", {})})
        assert response.status_code == 200
        frames = await _read_until(response.streaming_content, lambda f: f.startswith(f"id: {last}\n"))
        await response.streaming_content.aclose()
        return frames

    for how in ({"query": f"?since={first - 1}"}, {"headers": {"Last-Event-ID": str(first - 1)}}):
        replayed = {int(f.split("\n", 1)[0][4:]): f for f in async_to_sync(replay)(**how) if f.startswith("id: ")}
        for seq, frame in live.items():
            assert replayed[seq] == frame


# --- the handoff ------------------------------------------------------------------------------------


@sqlite_only
def test_events_committed_here_are_handed_over_as_stored():
    session = make_session()
    event_append(session=session, type="old", data={"i": 0})

    async def scenario() -> list:
        got: list = []

        def later() -> None:
            s = Session.objects.get(pk=session.pk)
            data = {"t": (1, 2), "k": {"z": 1, "a": [None, 1.5]}, "s": "é\n"}
            with transaction.atomic():
                event_append(session=s, type="new", data=data, correlation_id="c1")
                data["t"] = "mutated after the append"  # stored as it was: the handoff too
                event_append(session=s, type="new", data={"n": 2})
            connection.close()

        async for event in follow(session_pk=session.pk, after=0, ping_seconds=30):
            got.append(event)
            if len(got) == 1:
                await sync_to_async(later, thread_sensitive=False)()
            if len(got) == 3:
                return got
        return got

    got = async_to_sync(scenario)()
    assert [e.seq for e in got] == [1, 2, 3]
    assert not isinstance(got[0], LoggedEvent)  # read from the log
    assert all(isinstance(e, LoggedEvent) for e in got[1:])  # handed over, no read
    for e in got:
        row = Event.objects.get(session_id=session.pk, seq=e.seq)
        assert (e.type, e.data, e.correlation_id) == (row.type, row.data, row.correlation_id)
    assert got[1].data == {"t": [1, 2], "k": {"z": 1, "a": [None, 1.5]}, "s": "é\n"}


def test_a_gap_or_callbacks_out_of_order_fall_back_to_the_log(monkeypatch):
    """Handed events that do not continue the cursor are not trusted: the log is read, and late
    callbacks for events already delivered are dropped. Nothing lost, duplicated or reordered."""
    session = make_session()

    async def scenario() -> list[int]:
        got: list[int] = []
        loop = asyncio.get_running_loop()
        async for batch in follow_batches(session_pk=session.pk, after=0, ping_seconds=30):
            got.extend(e.seq for e in batch)
            if got == [1]:
                # 2 and 3 committed; 3's callback runs first (two threads' on_commit in either order).
                seqs = await sync_to_async(foreign_write, thread_sensitive=False)(session.pk, 2)
                later = await sync_to_async(stored, thread_sensitive=False)(session.pk, seqs)
                events.doorbell_hand(session.pk, later[1:])
                loop.call_later(0.05, events.doorbell_hand, session.pk, later[:1])  # late, already read
                loop.call_later(0.1, events.doorbell_hand, session.pk, later)  # a duplicate
            if len(got) >= 3:
                # Overflow: more handed over than a stream buffers → read from the log instead.
                monkeypatch.setattr(events, "HAND_LIMIT", 2)
                if len(got) == 3:
                    seqs = await sync_to_async(foreign_write, thread_sensitive=False)(session.pk, 3)
                    events.doorbell_hand(session.pk, await sync_to_async(stored, thread_sensitive=False)(session.pk, seqs))
            if len(got) >= 6:
                return got
        return got

    foreign_write(session.pk, 1)
    assert async_to_sync(scenario)() == [1, 2, 3, 4, 5, 6]


def test_replay_goes_out_in_one_chunk(demo):
    session = Session.objects.create(app_id="demo", session_id="w", principal="admin")
    for i in range(3):
        event_append(session=Session.objects.get(pk=session.pk), type="t", data={"i": i})

    async def first_chunk(query: str) -> str:
        response = await AsyncClient().get(f"/api/apps/demo/sessions/w/events{query}", headers=HEADERS)
        chunk = await asyncio.wait_for(anext(aiter(response.streaming_content)), timeout=10)
        await response.streaming_content.aclose()
        return chunk.decode() if isinstance(chunk, bytes) else chunk

    chunk = async_to_sync(first_chunk)("?since=0")
    assert [f.split("\n")[0] for f in chunk.split("\n\n") if f] == ["id: 1", "id: 2", "id: 3"]
    # Without a cursor: `connected` alone, at once.
    connected = async_to_sync(first_chunk)("")
    assert connected.startswith("event: connected\n") and connected.count("\n\n") == 1


def test_a_ping_does_not_re_read_the_log(monkeypatch):
    """Missed doorbells are the poller's to catch; pings go out on time without a query."""
    monkeypatch.setattr(settings, "DIGITORN_SSE_POLL_SECONDS", 3600.0, raising=False)
    session = make_session()

    async def scenario() -> tuple[int, list]:
        pings = 0
        async for batch in follow_batches(session_pk=session.pk, after=0, ping_seconds=0.02):
            if batch is None:
                pings += 1
                if pings == 1:
                    await sync_to_async(foreign_write, thread_sensitive=False)(session.pk, 1)  # no doorbell
                if pings == 5:
                    events._ring_local(session.pk)  # as the poller would
                continue
            return pings, [e.seq for e in batch]
        return pings, []

    assert async_to_sync(scenario)() == (5, [1])


def test_a_stream_of_a_missing_session_ends_without_existence_checks():
    async def scenario() -> None:
        async def drain() -> None:
            async for _ in follow(session_pk=987654, after=0, ping_seconds=30):
                pass

        await asyncio.wait_for(drain(), timeout=10)

    with pytest.raises(SessionGone):
        async_to_sync(scenario)()


# --- the poller's commit counter -----------------------------------------------------------------


@sqlite_only
def test_commit_counter_moves_on_any_commit_and_on_new_streams():
    session = make_session()
    counter = events._CommitCounter()
    try:
        assert counter.changed(0) is True  # first look
        assert counter.changed(0) is False  # nothing committed since
        event_append(session=session, type="t", data={})  # this process, another connection
        assert counter.changed(0) is True
        assert counter.changed(0) is False
        assert counter.changed(1) is True  # a new stream: poll for its baseline
        # Another process's commit (a plain sqlite3 connection, no Django).
        other = sqlite3.connect(str(connection.settings_dict["NAME"]), isolation_level=None)
        other.execute("UPDATE conversations_session SET status = 'elsewhere' WHERE id = ?", (session.pk,))
        other.close()
        assert counter.changed(1) is True
    finally:
        counter.close()


@sqlite_only
def test_idle_poller_skips_its_query_but_still_finds_foreign_events(monkeypatch):
    """With nothing committed the poller's query is skipped; a commit elsewhere is still found."""
    monkeypatch.setattr(events, "POLL_RECHECK_SECONDS", 3600.0)
    session = make_session()
    polls: list[int] = []
    real = events._poll_once

    def counting():
        polls.append(1)
        return real()

    async def scenario() -> list[int]:
        got: list[int] = []
        async for event in follow(session_pk=session.pk, after=0, ping_seconds=30):
            got.append(event.seq)
            return got
        return got

    async def run() -> tuple[int, list[int]]:
        task = asyncio.ensure_future(scenario())
        await asyncio.sleep(0.5)
        idle_polls = len(polls)
        await sync_to_async(foreign_write, thread_sensitive=False)(session.pk, 1)
        return idle_polls, await asyncio.wait_for(task, timeout=10)

    monkeypatch.setattr(events, "_poll_once", counting)
    idle_polls, got = async_to_sync(run)()
    # 0.5 s at 0.05 s would be ~10 polls; the stream's baseline costs one or two.
    assert idle_polls <= 2 and got == [1]


def test_concurrent_committers_deliver_every_event_once_in_order():
    session = make_session()
    n_threads, per_thread = 4, 15

    def writer() -> None:
        for i in range(per_thread):
            s = Session.objects.get(pk=session.pk)
            with transaction.atomic():
                event_append(session=s, type="t", data={"i": i})
        connection.close()

    async def scenario() -> list[int]:
        got: list[int] = []
        started = False
        async for event in follow(session_pk=session.pk, after=0, ping_seconds=30):
            if event is None:
                continue
            got.append(event.seq)
            if not started:
                started = True
                threads = [threading.Thread(target=writer) for _ in range(n_threads)]
                for t in threads:
                    t.start()
            if len(got) == 1 + n_threads * per_thread:
                return got
        return got

    async def bounded() -> list[int]:
        return await asyncio.wait_for(scenario(), timeout=60)

    event_append(session=session, type="first", data={})
    assert async_to_sync(bounded)() == list(range(1, 2 + n_threads * per_thread))
