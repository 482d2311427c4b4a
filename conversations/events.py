"""The durable event log and the doorbell that wakes SSE streams.

Every event is first an ``Event`` row with a per-session ``seq`` allocated in the same transaction as
the state it reports; the doorbell only tells streams "look again". Three ways a stream is woken:

- in-process: an ``asyncio.Event`` per watching stream, set (thread-safely) when a transaction that
  appended events to its session commits in this process;
- with ``CHANNEL_LAYERS`` (Redis): a ``group_send`` per commit, received by one listener task per
  process that rings the local waiters;
- always (events written by other workers or a Celery worker; with a channel layer, a safety net
  for missed doorbells): one poller task per process reads ``Session.last_seq`` of every watched
  session every ``DIGITORN_SSE_POLL_SECONDS`` in a single query, so idle streams cost no queries
  of their own; on SQLite it skips that query while ``PRAGMA data_version`` says nothing was
  committed (at least one a second regardless).

Handoff: a commit in this process hands the committed events themselves (as stored) to this
process's streams of that session, which yield them without reading the log when they continue
the stream's cursor; any doubt (a gap, events out of order, an overflowing buffer, a plain ring
from the poller or the channel layer) sends the stream back to the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import connections, transaction

from conversations.models import Event, Session
from digitorn_site import fastsql
from digitorn_site.asyncdb import db

log = logging.getLogger("digitorn.events")

GROUP_PREFIX = "digitorn.session."


# --- writing ---------------------------------------------------------------------------------


def _next_stream_seq(session_pk: int) -> tuple[int, int]:
    """The next seq of the stream the session's events go to: its own, or its parent's for the
    session of a delegated run (one statement either way); returns (stream session pk, seq)."""
    found = fastsql.stream_next_seq(session_pk)
    if found is None:
        raise Session.DoesNotExist(f"session {session_pk} is gone")
    return found


def event_append(*, session: Session, type: str, data: dict, correlation_id: str = "") -> Event:
    """Append one event; the seq comes from an atomic increment so it has no gaps per session.

    Call it inside the transaction that writes the state the event reports: a rollback drops both
    the row and the seq increment, and the doorbell rings only once the transaction commits.
    """
    with transaction.atomic(savepoint=False):
        session_pk, seq = _next_stream_seq(session.pk)
        if session_pk != session.pk:
            # A delegated run's event: on its parent's stream, tagged with the run (agent_id, task_id,
            # parent_id) and under the correlation id of the turn the delegation started from.
            tags = fastsql.session_delegation(session.pk) or {}
            data = {**data, **{k: v for k, v in tags.items() if k != "correlation_id"}}
            correlation_id = tags.get("correlation_id") or correlation_id
        else:
            session.last_seq = seq
        # Raw INSERT (see digitorn_site.fastsql): one to three per turn, inside the write transaction.
        event = fastsql.insert(Event(session_id=session_pk, seq=seq, type=type, data=data, correlation_id=correlation_id))
        announce(session_pk, [event])
    return event


@dataclass(slots=True)
class LoggedEvent:
    """A committed event handed over by the transaction that wrote it: the attributes of
    :class:`Event` a stream reads, ``data`` parsed back from the JSON text that was stored."""

    session_id: int
    seq: int
    type: str
    data: Any
    correlation_id: str
    created_at: Any


def _handoff_enabled() -> bool:
    # SQLite stores the JSON text json.dumps wrote and gives back json.loads of it, so a handed-over
    # event is what a replay reads. PostgreSQL's jsonb reorders object keys: streams read the log.
    return settings.IS_SQLITE


def announce(stream_pk: int, rows: list) -> None:
    """Inside the transaction that inserted ``rows`` (Events of the stream ``stream_pk``, in seq
    order): once it commits, hand them to this process's streams of that session and ring the
    others. Their data is serialised now, as it was stored: a caller mutating a dict later changes
    nothing. Without a local stream nothing is serialised; a plain ring is enough."""
    if stream_pk in _watches and _handoff_enabled():
        stored = [(e.seq, e.type, json.dumps(e.data), e.correlation_id, e.created_at) for e in rows]
        transaction.on_commit(lambda: doorbell_hand(stream_pk, stored))
    else:
        transaction.on_commit(lambda: doorbell_ring(stream_pk))


# Brain error kinds and error-envelope codes → the original Digitorn's `error` event vocabulary
# (its `_classify_error`): clients switch on `code` and offer a retry button when `retry` is true.
_ERROR_CODES: dict[str, tuple[str, str, bool]] = {
    "auth": ("auth_error", "auth", False),
    "unauthorized": ("auth_error", "auth", False),
    "forbidden": ("permission_denied", "security", False),
    "rate_limited": ("rate_limited", "rate_limit", True),
    "rate_limit_exceeded": ("rate_limited", "rate_limit", True),
    "context_overflow": ("context_overflow", "provider", False),
    "timeout": ("network_error", "network", True),
    "connection": ("network_error", "network", True),
    "bad_response": ("provider_error", "provider", False),
    "no_rule": ("provider_error", "provider", False),
    "conflict": ("session_busy", "internal", True),
    "session_gone": ("session_gone", "session", False),
    "cursor_expired": ("cursor_expired", "session", False),
    "internal": ("internal_error", "internal", True),
}


def error_data(message: str, *, kind: str, correlation_id: str | None = None) -> dict:
    """The `error` event's payload ``{error, code, category, retry, detail}``; ``kind`` is a brain
    error kind, an error-envelope code (any case) or "internal"/"session_gone"."""
    code, category, retry = _ERROR_CODES.get(kind.lower(), ("internal_error", "internal", False))
    data = {"error": message, "code": code, "category": category, "retry": retry, "detail": f"[{kind}] {message}"[:500]}
    if correlation_id is not None:
        data["correlation_id"] = correlation_id
    return data


# --- the doorbell ----------------------------------------------------------------------------


# A stream's buffer of handed-over events is bounded: past it, the stream reads the log instead.
HAND_LIMIT = 1000


class _Watch:
    """One stream's doorbell. Its fields are touched on its loop's thread only (other threads go
    through ``call_soon_threadsafe``)."""

    __slots__ = ("loop", "event", "handed", "stale", "gone")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.event = asyncio.Event()
        self.handed: list[LoggedEvent] = []  # committed events handed over, in arrival order
        self.stale = True  # the log must be read (first read, a plain ring, an overflow)
        self.gone = False  # the poller found no such session: the read checks it

    def ring(self) -> None:
        self.stale = True
        self.event.set()

    def hand(self, events: list[LoggedEvent]) -> None:
        if len(self.handed) + len(events) > HAND_LIMIT:
            self.handed = []
            self.stale = True
        else:
            self.handed.extend(events)
        self.event.set()

    def mark_gone(self) -> None:
        self.gone = True
        self.ring()


_lock = threading.Lock()
_watches: dict[int, set[_Watch]] = {}
# Streams waiting for a session that does not exist yet, by (app_id, principal, session_id); the
# poller looks them all up in one query per (app, principal) and records the pk of those born.
BirthKey = tuple[str, str, str]
_births: dict[BirthKey, set[_Watch]] = {}
_born: dict[BirthKey, int] = {}
_known_seq: dict[int, int] = {}
_background: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Task] = {}
_layer_groups: set[int] = set()
_layer_channel: dict[asyncio.AbstractEventLoop, str] = {}
# Bumped when a stream or a birth wait starts: the poller then polls even if nothing was committed
# (it records the new session's baseline).
_generation = [0]
# This process's doorbells on the channel layer: its listener skips them (rung here directly).
_ORIGIN = f"{os.getpid()}-{uuid.uuid4().hex}"


def _ring_local(session_pk: int, *, gone: bool = False) -> None:
    with _lock:
        watches = list(_watches.get(session_pk, ()))
    for watch in watches:
        try:
            watch.loop.call_soon_threadsafe(watch.mark_gone if gone else watch.ring)
        except RuntimeError:  # the loop is closed: the stream is gone
            pass


def doorbell_ring(session_pk: int) -> None:
    """Wake every stream watching the session: here directly, elsewhere through the channel layer."""
    _ring_local(session_pk)
    _publish(session_pk)


def doorbell_hand(session_pk: int, stored: list[tuple[int, str, str, str, Any]]) -> None:
    """After the commit of ``stored`` events (seq, type, JSON text, correlation id, created_at):
    hand them to this process's streams of the session, ring other processes'."""
    with _lock:
        watches = list(_watches.get(session_pk, ()))
        if watches:
            # The poller need not ring these streams for events they are handed.
            top = stored[-1][0]
            known = _known_seq.get(session_pk)
            if known is None or top > known:
                _known_seq[session_pk] = top
    if watches:
        events = [
            LoggedEvent(session_pk, seq, type, json.loads(text), correlation_id, created_at)
            for seq, type, text, correlation_id, created_at in stored
        ]
        for watch in watches:
            try:
                watch.loop.call_soon_threadsafe(watch.hand, events)
            except RuntimeError:
                pass
    _publish(session_pk)


def _publish(session_pk: int) -> None:
    if settings.CHANNEL_LAYERS:
        try:
            from asgiref.sync import async_to_sync
            from channels.layers import get_channel_layer

            layer = get_channel_layer()
            group = f"{GROUP_PREFIX}{session_pk}"
            message = {"type": "doorbell", "session_pk": session_pk, "origin": _ORIGIN}
            loop = main_loop()
            if loop is None:  # a Celery worker: no event loop to hand the send to
                async_to_sync(layer.group_send)(group, message)
                return
            # Fire and forget on the worker's loop. Waiting for the publish (async_to_sync) held an
            # executor thread per commit until Redis answered: under bench_load on PostgreSQL the
            # engine's threads queued behind doorbells and POSTs took seconds.
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                sent = loop.create_task(layer.group_send(group, message))
            else:
                sent = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
            sent.add_done_callback(_log_doorbell_failure)
        except Exception:  # noqa: BLE001 - the stream's safety poll still finds the event
            log.warning("channel-layer doorbell failed for session %s", session_pk, exc_info=True)


def _log_doorbell_failure(sent: Any) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("channel-layer doorbell failed", exc_info=sent.exception())


def main_loop() -> asyncio.AbstractEventLoop | None:
    """The ASGI worker's event loop, from async code or from a sync view running under it."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is not None and not loop.is_closed() and loop.is_running():
        return loop
    return None


def _watch_add(session_pk: int, loop: asyncio.AbstractEventLoop) -> _Watch:
    watch = _Watch(loop)
    with _lock:
        _watches.setdefault(session_pk, set()).add(watch)
        _generation[0] += 1
    _ensure_background(loop)
    return watch


def _watch_remove(session_pk: int, watch: _Watch) -> None:
    with _lock:
        watches = _watches.get(session_pk)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del _watches[session_pk]
                _known_seq.pop(session_pk, None)


def watching_count() -> int:
    with _lock:
        return sum(len(w) for w in _watches.values()) + sum(len(w) for w in _births.values())


def ring_birth(key: BirthKey) -> None:
    """Wake the streams waiting for that session to exist (they re-check, e.g. a revoked key)."""
    with _lock:
        watches = list(_births.get(key, ()))
    for watch in watches:
        try:
            watch.loop.call_soon_threadsafe(watch.event.set)
        except RuntimeError:
            pass


async def wait_born(key: BirthKey, *, timeout: float) -> int | None:
    """The pk of the session ``key`` once it exists, or None after ``timeout`` seconds (or when
    rung by :func:`ring_birth`) without it. Never creates the session.

    Streams watching a session id that does not exist yet used to look it up every 0.25 s each:
    1,000 of them ran 4,000 queries a second. They now share the poller's one lookup per interval.
    """
    loop = asyncio.get_running_loop()
    watch = _Watch(loop)
    # No poll forced here (unlike a new stream's baseline): the session's creation is a commit the
    # poller sees, and its periodic recheck covers one committed just before this wait began. A
    # waiting stream re-waits after each ping; forcing a poll each time would cost 1,000 streams
    # a query per interval again.
    with _lock:
        _births.setdefault(key, set()).add(watch)
    _ensure_background(loop)
    try:
        if key not in _born:
            try:
                await asyncio.wait_for(watch.event.wait(), timeout=timeout)
            except TimeoutError:
                pass
        return _born.get(key)
    finally:
        with _lock:
            watches = _births.get(key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del _births[key]
                    _born.pop(key, None)


def _ensure_background(loop: asyncio.AbstractEventLoop) -> None:
    # The poller runs with a channel layer too: under load (bench_load, 4 workers, PostgreSQL +
    # Redis) cross-worker doorbells were missed and turn-ending events reached their streams only at the
    # next 15 s ping. One raw query per interval per worker for all its streams is the safety net;
    # the layer stays the fast path.
    wanted = [("poller", _poller)]
    if settings.CHANNEL_LAYERS:
        wanted.append(("layer", _layer_listener))
    for name, factory in wanted:
        task = _background.get((loop, name))
        if task is None or task.done():
            _background[(loop, name)] = loop.create_task(factory())


# The births lookup runs when a session was created since the last one (the highest session id
# moved: one trivial query per interval) and at least every BIRTH_RECHECK_SECONDS regardless, for a
# commit that lands behind a higher id already seen (PostgreSQL hands ids out before commit).
BIRTH_RECHECK_SECONDS = 1.0
_birth_state = {"max_id": None, "checked_at": 0.0}


def _poll_births() -> list[BirthKey]:
    """Look up every awaited session (grouped by app and owner: the unique index's order)."""
    with _lock:
        keys = [key for key in _births if key not in _born]
    if not keys:
        return []
    max_id = fastsql.sessions_max_pk()
    now = time.monotonic()
    if max_id == _birth_state["max_id"] and now - _birth_state["checked_at"] < BIRTH_RECHECK_SECONDS:
        return []
    _birth_state.update(max_id=max_id, checked_at=now)
    groups: dict[tuple[str, str], list[str]] = {}
    for app_id, principal, session_id in keys:
        groups.setdefault((app_id, principal), []).append(session_id)
    found: list[BirthKey] = []
    for (app_id, principal), sids in groups.items():
        rows = fastsql.sessions_named(app_id, principal, sids)
        with _lock:
            for pk, session_id in rows:
                key = (app_id, principal, session_id)
                if key in _births:  # its streams may have left meanwhile
                    _born[key] = pk
                    found.append(key)
    return found


def _poll_once() -> tuple[list[int], list[int], list[BirthKey]]:
    born = _poll_births()
    with _lock:
        pks = list(_watches)
    if not pks:
        return [], [], born
    changed: list[int] = []
    # Raw SQL (fastsql): this runs every poll interval for every watched session of the worker;
    # compiling the ORM query each time cost more than running it.
    rows = fastsql.sessions_last_seq(pks)
    seen = set()
    for pk, last_seq in rows:
        seen.add(pk)
        # A session seen for the first time is rung too: its stream may have read just before an
        # event another process wrote, and the baseline recorded here would otherwise hide it.
        if _known_seq.get(pk) != last_seq:
            changed.append(pk)
            _known_seq[pk] = last_seq
    # A deleted session wakes its streams so they notice and close.
    gone = [pk for pk in pks if pk not in seen]
    return changed, gone, born


# Even with nothing committed (PRAGMA data_version still), the poller queries at least this often.
POLL_RECHECK_SECONDS = 1.0


class _CommitCounter:
    """``PRAGMA data_version`` of a SQLite connection of the poller's own: it changes whenever
    another connection, of any process, commits. While it and the set of streams stay the same,
    no event can have been written, and the poller skips its query (and its executor thread hop):
    1,000 idle streams cost a pragma per interval. Always "changed" elsewhere (PostgreSQL) or when
    it cannot tell."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.name: str | None = None
        self.version: tuple[int, int] | None = None

    def changed(self, generation: int) -> bool:
        if not settings.IS_SQLITE:
            return True
        name = str(connections["default"].settings_dict["NAME"])
        if not name or name == ":memory:" or name.startswith("file:"):
            return True
        try:
            if self.conn is None or self.name != name:
                self.close()
                self.conn = sqlite3.connect(name, timeout=0.5, isolation_level=None, check_same_thread=False)
                self.name = name
            data_version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self.close()
            return True
        current = (int(data_version), generation)
        if current == self.version:
            return False
        self.version = current
        return True

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
        self.conn, self.name, self.version = None, None, None


async def _poller() -> None:
    """One query per interval for all watched sessions; catches events written by other processes."""
    interval = settings.DIGITORN_SSE_POLL_SECONDS
    poll = db(_poll_once)
    commits = _CommitCounter()
    polled_at = 0.0
    try:
        while True:
            await asyncio.sleep(interval)
            with _lock:
                idle = not _watches and not _births
                generation = _generation[0]
            if idle:
                continue
            now = time.monotonic()
            if not commits.changed(generation) and now - polled_at < POLL_RECHECK_SECONDS:
                continue
            polled_at = now
            try:
                changed, gone, born = await poll()
                for pk in changed:
                    _ring_local(pk)
                for pk in gone:
                    _ring_local(pk, gone=True)
                for key in born:
                    ring_birth(key)
            except Exception:  # noqa: BLE001 - keep polling; a transient lock must not kill every stream
                commits.close()  # poll again next interval
                log.warning("event poller failed", exc_info=True)
    finally:
        commits.close()


async def _layer_listener() -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = await layer.new_channel()
    loop = asyncio.get_running_loop()
    _layer_channel[loop] = channel
    while True:
        with _lock:
            wanted = set(_watches)
        for pk in wanted - _layer_groups:
            await layer.group_add(f"{GROUP_PREFIX}{pk}", channel)
            _layer_groups.add(pk)
        for pk in _layer_groups - wanted:
            await layer.group_discard(f"{GROUP_PREFIX}{pk}", channel)
            _layer_groups.discard(pk)
        try:
            message = await asyncio.wait_for(layer.receive(channel), timeout=max(settings.DIGITORN_SSE_POLL_SECONDS, 0.5))
        except TimeoutError:
            # Groups may have changed: re-sync subscriptions. Missed doorbells are the poller's job
            # (it rings exactly the sessions whose last_seq moved); waking every stream here made
            # each one re-read its log twice a second.
            continue
        pk = message.get("session_pk")
        # This process's own doorbells were rung (or handed over) here already.
        if isinstance(pk, int) and message.get("origin") != _ORIGIN:
            _ring_local(pk)


# --- reading ---------------------------------------------------------------------------------


READ_PAGE = 500


def events_floor(*, session_pk: int) -> int | None:
    """The lowest seq still stored for the session (older ones were pruned), None when it has none."""
    return fastsql.events_min_seq(session_pk)


def cursor_expired(*, session_pk: int, last_seq: int, cursor: int) -> int | None:
    """When events after ``cursor`` were pruned (retention), the cursor to resume from instead: the
    seq just before the oldest one kept. None when the cursor is still inside the retained log."""
    if cursor >= last_seq:
        return None
    floor = events_floor(session_pk=session_pk)
    if floor is None:  # everything up to last_seq was pruned
        return last_seq
    return floor - 1 if cursor < floor - 1 else None


def events_after(*, session_pk: int, after: int, limit: int = READ_PAGE) -> list[Event] | None:
    """Events with seq > after, oldest first; None when the session no longer exists."""
    # Raw SQL (fastsql): every open stream runs this on every wake-up.
    events = fastsql.events_after(session_pk, after, limit)
    if not events and not fastsql.session_exists(session_pk):
        return None
    return events


def sse_frame(*, type: str, data: Any, seq: int | None = None) -> str:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {type}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


class SessionGone(Exception):
    """The session was deleted (or its app undeployed) while a stream was open."""


async def follow_batches(
    *, session_pk: int, after: int, ping_seconds: float | None = None, stop: Callable[[], bool] | None = None
) -> AsyncIterator[list[Event | LoggedEvent] | None]:
    """:func:`follow`, a wake-up at a time: each item is the non-empty list of the events one
    wake-up found (in seq order), or ``None`` for a ping. A stream sends each list in one write."""
    loop = asyncio.get_running_loop()
    ping = settings.DIGITORN_SSE_PING_SECONDS if ping_seconds is None else ping_seconds
    read = db(_read_after)
    watch = _watch_add(session_pk, loop)
    cursor = after
    first = True
    try:
        while True:
            watch.event.clear()
            if stop is not None and stop():
                return
            batch: list = []
            if not watch.stale and watch.handed:
                # Events this process committed: taken as they are while they continue the cursor.
                handed, watch.handed = watch.handed, []
                for event in handed:
                    if event.seq <= cursor:  # already read from the log
                        continue
                    if event.seq != cursor + 1:  # a gap (another process, a callback out of order)
                        watch.stale = True
                        break
                    batch.append(event)
                    cursor = event.seq
            more = False
            if watch.stale:
                # Everything handed so far is committed, so the read covers it; what is handed
                # during the read is kept and deduplicated by seq at the next wake-up.
                watch.stale, watch.handed = False, []
                # No existence check after an empty read, not even the first: the poller polls
                # within an interval of a new stream and reports a missing session (``gone``).
                check, watch.gone = watch.gone, False
                events = await read(session_pk=session_pk, after=cursor, check=check)
                if events is None:
                    raise SessionGone()
                if first:
                    first = False
                    # The poller's baseline for this session: what this read saw (committed seqs
                    # come in order, so last_seq was the cursor reached when the page was not full).
                    with _lock:
                        if session_pk in _watches:
                            _known_seq.setdefault(session_pk, events[-1].seq if events else cursor)
                if events:
                    batch.extend(events)
                    cursor = events[-1].seq
                    # A full page may have more behind it: read again at once.
                    more = len(events) >= READ_PAGE
                    watch.stale = more
            if batch:
                yield batch
                if more:
                    continue
            if watch.event.is_set():
                continue
            try:
                await asyncio.wait_for(watch.event.wait(), timeout=ping)
            except TimeoutError:
                # A ping only: missed doorbells are the poller's to catch, not a re-read's.
                yield None
    finally:
        _watch_remove(session_pk, watch)


def _read_after(*, session_pk: int, after: int, check: bool) -> list[Event] | None:
    if check:
        return events_after(session_pk=session_pk, after=after)
    return fastsql.events_after(session_pk, after, READ_PAGE)


async def follow(
    *, session_pk: int, after: int, ping_seconds: float | None = None, stop: Callable[[], bool] | None = None
) -> AsyncIterator[Event | LoggedEvent | None]:
    """Yield every event after ``after`` as it is committed, forever; ``None`` means "send a ping".

    The DB is the source of truth: events this process commits are handed over and yielded as they
    were stored when they continue the last seq delivered; otherwise a wake-up re-reads from it, so
    an event is never lost, duplicated or reordered whichever doorbell (or none) fired. Raises
    :class:`SessionGone` when the session disappears. Cancelling the consumer unregisters the watch.
    ``stop`` is checked at each wake-up (ring the session's doorbell to make it look now): once
    true, the iteration ends.
    """
    batches = follow_batches(session_pk=session_pk, after=after, ping_seconds=ping_seconds, stop=stop)
    try:
        async for batch in batches:
            if batch is None:
                yield None
            else:
                for event in batch:
                    yield event
    finally:
        await batches.aclose()
