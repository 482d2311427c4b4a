"""The SSE streams: POST /chat/stream, GET /sessions/{sid}/events and POST /notifications.

Plain async Django views through ``digitorn_site.api.asyncviews`` (DRF has no async views): every
failure before a stream starts is answered with the JSON envelope; after, with an ``error`` event.
A stream reads the session's event log, so the database stays the one source of truth (a
reconnecting client replays from it). The JSON endpoints that take a message (/chat, /run,
/messages) are in ``conversations.api.async_views``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from apps_registry.models import ApiKey
from apps_registry.selectors import app_exists
from conversations import notifications, queue, sessions
from conversations.api import serializers as s
from conversations.api.async_views import accept, start
from conversations.events import (
    SessionGone,
    _ring_local,
    cursor_expired,
    error_data,
    follow_batches,
    ring_birth,
    sse_frame,
    wait_born,
)
from conversations.turns import scheduler
from digitorn_site.api.asyncviews import async_endpoint
from digitorn_site.api.auth import bootstrap_admin_key, raw_key_from
from digitorn_site.api.base import parse
from digitorn_site.api.envelope import ok_response
from digitorn_site.api.jsonbody import request_json
from digitorn_site.asyncdb import db
from digitorn_site.errors import NotFoundError, ValidationError
from digitorn_site.principals import Principal

log = logging.getLogger("digitorn.sse")
MAX_EVENT_ID = 2**63 - 1


def _sse_response(stream: AsyncIterator[str], extra: dict[str, str] | None = None) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (extra or {}).items():
        response[name] = value
    return response


# --- streams end when their key does ---------------------------------------------------------
#
# A stream outlives the request that authenticated it. Every open stream registers a guard; one task
# per event loop re-checks the keys of all of them every few seconds (one query for all, not one per
# stream) and cuts the streams of a revoked or deleted key (or of a rotated bootstrap admin key):
# their doorbell is rung so `follow` notices at once, and the stream ends with an `error` event.


class _StreamGuard:
    __slots__ = ("raw_key", "key_id", "session_pk", "birth", "revoked")

    def __init__(self, raw_key: str, key_id: int | None):
        self.raw_key = raw_key
        self.key_id = key_id
        self.session_pk: int | None = None
        self.birth: tuple[str, str, str] | None = None  # waiting for this session to exist
        self.revoked = False

    def __call__(self) -> bool:
        return self.revoked


_guards: set[_StreamGuard] = set()
_guard_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def _recheck_seconds() -> float:
    return float(getattr(settings, "DIGITORN_SSE_AUTH_RECHECK_SECONDS", 2.0))


def _keys_still_valid(key_ids: list[int], raw_admin_keys: list[str]) -> tuple[set[int], set[str]]:
    """The key ids that are still live, and the admin keys that still are the bootstrap key."""
    live = set(ApiKey.objects.filter(pk__in=key_ids, revoked_at__isnull=True).values_list("pk", flat=True)) if key_ids else set()
    admin = bootstrap_admin_key()
    admins = {raw for raw in raw_admin_keys if admin and hmac.compare_digest(raw.encode(), admin.encode())}
    return live, admins


async def _guard_loop() -> None:
    check = db(_keys_still_valid)
    while True:
        await asyncio.sleep(_recheck_seconds())
        guards = [g for g in list(_guards) if not g.revoked]
        if not guards:
            continue
        try:
            live, admins = await check(
                sorted({g.key_id for g in guards if g.key_id is not None}),
                list({g.raw_key for g in guards if g.key_id is None}),
            )
        except Exception:  # noqa: BLE001 - a transient database error must not cut every stream
            log.warning("stream key re-check failed", exc_info=True)
            continue
        for guard in guards:
            valid = guard.key_id in live if guard.key_id is not None else guard.raw_key in admins
            if not valid:
                guard.revoked = True
                if guard.session_pk is not None:
                    _ring_local(guard.session_pk)
                elif guard.birth is not None:
                    ring_birth(guard.birth)


def _guard_open(request: HttpRequest, principal: Principal) -> _StreamGuard:
    guard = _StreamGuard(raw_key_from(request, allow_query_token=True), principal.key_id)
    _guards.add(guard)
    loop = asyncio.get_running_loop()
    task = _guard_tasks.get(loop)
    if task is None or task.done():
        _guard_tasks[loop] = loop.create_task(_guard_loop())
    return guard


def _revoked_frame() -> str:
    return sse_frame(
        type="error",
        data={"message": "The API key of this stream was revoked; reconnect with a valid key.", "kind": "unauthorized"},
    )


async def _turn_frames(
    enqueued: queue.Enqueued, first: list[str], guard: _StreamGuard | None = None
) -> AsyncIterator[str]:
    """Frames of one turn: the opening ones, then its events until its `result`; pings while idle."""
    if guard is not None:
        guard.session_pk = enqueued.session_pk
    try:
        if first:
            yield "".join(first)  # at once, before the first read
        correlation_id = enqueued.correlation_id
        async for batch in follow_batches(session_pk=enqueued.session_pk, after=enqueued.after_seq, stop=guard):
            if batch is None:
                yield ": ping\n\n"
                continue
            # The frames of one wake-up in one write: clients parse frames, not chunks.
            frames = []
            ended = False
            for event in batch:
                if event.correlation_id != correlation_id:
                    continue
                frames.append(sse_frame(type=event.type, data=event.data, seq=event.seq))
                if event.type == "result":
                    ended = True
                    break
            if frames:
                yield "".join(frames)
            if ended:
                return
        if guard is not None and guard.revoked:
            yield _revoked_frame()
    except SessionGone:
        yield sse_frame(type="error", data=error_data("The session was deleted while the turn was running.", kind="session_gone"))
    except asyncio.CancelledError:
        # The client went away; the turn itself goes on (its result stays in the log).
        raise
    finally:
        if guard is not None:
            _guards.discard(guard)


# --- POST /{app}/chat/stream -------------------------------------------------------------------


@async_endpoint({"POST": "apps:run"}, body=s.ChatSerializer, lean_request=True)
async def chat_stream(request: HttpRequest, principal: Principal, app_id: str, body: dict) -> HttpResponse:
    enqueued, limit = await accept(app_id, principal, body)
    start(enqueued)
    first = [sse_frame(type="connected", data={"session_id": enqueued.session_id, "correlation_id": enqueued.correlation_id})]
    return _sse_response(_turn_frames(enqueued, first, _guard_open(request, principal)), limit.headers())


# --- GET /{app}/sessions/{sid}/events -----------------------------------------------------------


def _cursor(request: HttpRequest) -> int | None:
    raw = request.META.get("HTTP_LAST_EVENT_ID") or request.GET.get("since")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"Last-Event-ID / since: expected an event id (an integer ≥ 0), got {raw[:40]!r}.")
    # Above the 64-bit range the database cannot compare it: the stream's first read failed after
    # the response had started and the request hung. Event ids are 64-bit signed integers.
    if value < 0 or value > MAX_EVENT_ID:
        raise ValidationError(f"Last-Event-ID / since: expected an integer between 0 and {MAX_EVENT_ID}, got {raw[:40]!r}.")
    return value


async def _session_born(app_id: str, session_id: str, principal: str, guard: _StreamGuard) -> AsyncIterator[int | None]:
    """Wait, without creating it, for the caller's session to exist: yields None (a ping is due)
    while waiting, then its pk once. Watching a session id must not create it: a watcher would
    otherwise own the id (or, before ids were per owner, squat another principal's). The wait is
    the event poller's shared lookup (events.wait_born), no query of its own per stream."""
    key = (app_id, principal, session_id)
    guard.birth = key  # a revoked key rings it
    loop = asyncio.get_running_loop()
    next_ping = loop.time() + settings.DIGITORN_SSE_PING_SECONDS
    while not guard.revoked:
        pk = await wait_born(key, timeout=max(0.0, next_ping - loop.time()))
        if pk is not None:
            yield pk
            return
        if loop.time() >= next_ping:
            next_ping = loop.time() + settings.DIGITORN_SSE_PING_SECONDS
            yield None


async def _session_frames(
    session_pk: int | None, session_id: str, after: int, greet: bool, guard: _StreamGuard, *, app_id: str,
    principal: str, expired: int | None = None,
) -> AsyncIterator[str]:
    try:
        if greet:
            yield sse_frame(type="connected", data={"session_id": session_id})
        if expired is not None:
            # The cursor points into the pruned part of the log (retention): say so, then go on from
            # the oldest event kept so the client's Last-Event-ID moves past the gap (an EventSource
            # would otherwise reconnect with the same id forever). Its history is in the REST API.
            yield sse_frame(type="error", data={**error_data(
                f"Events after {after} are no longer retained (DIGITORN_RETENTION_DAYS); the stream "
                f"resumes at event {expired + 1}. Reload the session's history to fill the gap.",
                kind="cursor_expired",
            ), "resume_after": expired})
            after = expired
        if session_pk is None:
            async for pk in _session_born(app_id, session_id, principal, guard):
                if pk is None:
                    yield ": ping\n\n"
                else:
                    session_pk, after = pk, 0  # everything the new session logged is new to this stream
        if session_pk is not None:
            guard.session_pk = session_pk
            async for batch in follow_batches(session_pk=session_pk, after=after, stop=guard):
                if batch is None:
                    yield ": ping\n\n"
                else:  # one write per wake-up
                    yield "".join([sse_frame(type=e.type, data=e.data, seq=e.seq) for e in batch])
        if guard.revoked:
            yield _revoked_frame()
    except SessionGone:
        yield sse_frame(type="error", data=error_data(f"Session '{session_id}' was deleted.", kind="session_gone"))
    except asyncio.CancelledError:
        raise
    finally:
        _guards.discard(guard)


@async_endpoint({"GET": "apps:read"}, allow_query_token=True, lean_request=True)
async def session_events(request: HttpRequest, principal: Principal, app_id: str, session_id: str) -> HttpResponse:
    cursor = _cursor(request)
    await db(app_exists)(app_id=app_id)
    try:
        # Watching never creates the session (issue #10): a missing one is waited for below.
        session = await db(sessions.session_resolve)(app_id=app_id, session_id=session_id, principal=principal.name)
    except NotFoundError:
        session = None
    scheduler.ensure_recovery()
    after = (session.last_seq if session is not None else 0) if cursor is None else cursor
    expired = None
    if session is not None and cursor is not None:
        expired = await db(cursor_expired)(session_pk=session.pk, last_seq=session.last_seq, cursor=cursor)
    return _sse_response(
        _session_frames(
            session.pk if session is not None else None, session_id, after, cursor is None,
            _guard_open(request, principal), app_id=app_id, principal=principal.name, expired=expired,
        )
    )


# --- POST /{app}/notifications ----------------------------------------------------------------


@async_endpoint({"POST": "apps:run"}, lean_request=True)
async def notifications_drain(request: HttpRequest, principal: Principal, app_id: str) -> HttpResponse:
    data = request_json(request)
    if isinstance(data, dict) and "session_id" not in data and request.GET.get("session_id"):
        data["session_id"] = request.GET["session_id"]
    body = parse(s.NotificationsSerializer, data)
    await db(app_exists)(app_id=app_id)
    try:
        enqueued, summaries = await db(notifications.notifications_drain)(
            app_id=app_id, session_id=body["session_id"], principal=principal.name
        )
    except NotFoundError:
        # The original's answer for a session it does not know: nothing to drain (CLIs poll this).
        return ok_response({"notifications": 0})
    if enqueued is None:
        return ok_response({"notifications": 0})
    start(enqueued)
    first = [sse_frame(type="notification", data=summary) for summary in summaries]
    return _sse_response(_turn_frames(enqueued, first, _guard_open(request, principal)))
