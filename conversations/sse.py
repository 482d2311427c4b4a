"""The async views: SSE streams, the endpoints that wait for a turn (chat, run) and the one that queues
messages (a sync view would queue behind the worker's one sync thread).

DRF has no async views, so these are plain async Django views. They authenticate with
``authenticate_request`` and answer every failure before a stream starts with the JSON envelope.
Turns they start run as tasks on this worker's event loop; the response waits on the event log, so
the database stays the one source of truth (a reconnecting client replays from it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from conversations import notifications, queue, sessions
from conversations.api import serializers as s
from conversations.events import SessionGone, cursor_expired, db, error_data, follow, sse_frame
from conversations.ratelimit import RateLimitState, rate_limit_hit
from conversations.turns import scheduler
from digitorn_site.api.auth import Principal, authenticate_request
from digitorn_site.api.envelope import error_response
from digitorn_site.api.jsonbody import loads_body
from digitorn_site.errors import (
    ConflictError,
    DigitornError,
    MethodNotAllowedError,
    NotFoundError,
    ValidationError,
)

log = logging.getLogger("digitorn.sse")
MAX_EVENT_ID = 2**63 - 1


def _headers(response: HttpResponse, extra: dict[str, str] | None = None) -> HttpResponse:
    for name, value in (extra or {}).items():
        response[name] = value
    return response


def _sse_response(stream: AsyncIterator[str], extra: dict[str, str] | None = None) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return _headers(response, extra)


def _envelope(data, status: int = 200, headers: dict[str, str] | None = None) -> JsonResponse:
    return _headers(JsonResponse({"success": True, "data": data, "error": None}, status=status), headers)


async def _auth(request: HttpRequest, *, scope: str, allow_query_token: bool = False) -> Principal:
    return await db(authenticate_request)(request, allow_query_token=allow_query_token, scope=scope)


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
    from django.conf import settings

    return float(getattr(settings, "DIGITORN_SSE_AUTH_RECHECK_SECONDS", 2.0))


def _keys_still_valid(key_ids: list[int], raw_admin_keys: list[str]) -> tuple[set[int], set[str]]:
    """The key ids that are still live, and the admin keys that still are the bootstrap key."""
    import hmac

    from apps_registry.models import ApiKey
    from digitorn_site.api.auth import bootstrap_admin_key

    live = set(ApiKey.objects.filter(pk__in=key_ids, revoked_at__isnull=True).values_list("pk", flat=True)) if key_ids else set()
    admin = bootstrap_admin_key()
    admins = {raw for raw in raw_admin_keys if admin and hmac.compare_digest(raw.encode(), admin.encode())}
    return live, admins


async def _guard_loop() -> None:
    from conversations.events import _ring_local, ring_birth

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
    from digitorn_site.api.auth import raw_key_from

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


def _body(request: HttpRequest) -> dict:
    if not request.body:
        return {}
    data = loads_body(request.body)
    if not isinstance(data, dict):
        raise ValidationError(f"The request body must be a JSON object, got {type(data).__name__}.")
    return data


def _require(request: HttpRequest, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowedError(f'Method "{request.method}" not allowed; use {method}.')


def _app_exists(app_id: str) -> None:
    from apps_registry.selectors import app_exists

    app_exists(app_id=app_id)


def _app_compiled(app_id: str):
    from apps_registry.selectors import app_compiled

    return app_compiled(app_id=app_id)


async def _wait_done(enqueued: queue.Enqueued) -> dict:
    """The turn's `result` payload (its last event), read from the event log."""
    try:
        async for event in follow(session_pk=enqueued.session_pk, after=enqueued.after_seq):
            if event is not None and event.type == "result" and event.correlation_id == enqueued.correlation_id:
                return event.data
    except SessionGone:
        raise ConflictError("The session was deleted (or its app undeployed) while the turn was running.")
    raise ConflictError("The event stream ended before the turn finished.")  # pragma: no cover


async def _turn_frames(
    enqueued: queue.Enqueued, first: list[str], guard: _StreamGuard | None = None
) -> AsyncIterator[str]:
    """Frames of one turn: the opening ones, then its events until its `result`; pings while idle."""
    if guard is not None:
        guard.session_pk = enqueued.session_pk
    try:
        for frame in first:
            yield frame
        async for event in follow(session_pk=enqueued.session_pk, after=enqueued.after_seq, stop=guard):
            if event is None:
                yield ": ping\n\n"
                continue
            if event.correlation_id != enqueued.correlation_id:
                continue
            yield sse_frame(type=event.type, data=event.data, seq=event.seq)
            if event.type == "result":
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


def _start(enqueued: queue.Enqueued) -> None:
    scheduler.ensure_recovery()
    scheduler.schedule_advance(enqueued.session_pk)


# --- POST /{app}/chat -------------------------------------------------------------------------


async def _accept(
    request: HttpRequest, app_id: str, serializer: type, session_id: str | None = None
) -> tuple[queue.Enqueued, RateLimitState, Principal]:
    """What every message-taking POST does first: auth, body, app, rate limit, enqueue. The session
    comes from the path (``session_id``) or from the body (/chat, /chat/stream)."""
    _require(request, "POST")
    principal = await _auth(request, scope="apps:run")
    body = s.validate(serializer, _body(request))
    await db(_app_exists)(app_id)
    limit = await db(rate_limit_hit)(app_id=app_id)
    enqueued = await db(queue.message_enqueue)(
        app_id=app_id, session_id=session_id or body["session_id"], principal=principal.name, message=body["message"]
    )
    return enqueued, limit, principal


@csrf_exempt
async def chat(request: HttpRequest, app_id: str) -> HttpResponse:
    try:
        enqueued, limit, _ = await _accept(request, app_id, s.ChatSerializer)
        _start(enqueued)
        payload = await _wait_done(enqueued)
    except DigitornError as err:
        return error_response(err)
    return _envelope(payload, headers=limit.headers())


# --- POST /{app}/sessions/{sid}/messages ---------------------------------------------------------



@csrf_exempt
async def chat_stream(request: HttpRequest, app_id: str) -> HttpResponse:
    try:
        enqueued, limit, principal = await _accept(request, app_id, s.ChatSerializer)
    except DigitornError as err:
        return error_response(err)
    _start(enqueued)
    first = [sse_frame(type="connected", data={"session_id": enqueued.session_id, "correlation_id": enqueued.correlation_id})]
    return _sse_response(_turn_frames(enqueued, first, _guard_open(request, principal)), limit.headers())


# --- POST /{app}/run --------------------------------------------------------------------------


@csrf_exempt
async def run(request: HttpRequest, app_id: str) -> HttpResponse:
    try:
        _require(request, "POST")
        principal = await _auth(request, scope="apps:run")
        body = s.validate(s.RunSerializer, _body(request))
        compiled = await db(_app_compiled)(app_id)
        if compiled.mode != "one_shot":
            raise ValidationError(
                f"App '{app_id}' runs in '{compiled.mode}' mode; /run is for one_shot apps. "
                f"Use POST /api/apps/{app_id}/chat with a session_id instead."
            )
        limit = await db(rate_limit_hit)(app_id=app_id)
        session_id = f"run-{uuid.uuid4().hex}"
        # input_type is metadata (the original's): the agent gets the input as it was sent.
        enqueued = await db(queue.message_enqueue)(
            app_id=app_id, session_id=session_id, principal=principal.name, message=body["input"], field_name="input"
        )
        _start(enqueued)
        try:
            payload = await _wait_done(enqueued)
        finally:
            # A one-shot run leaves no session behind (its tool executions stay in the audit log).
            try:
                await asyncio.shield(
                    db(sessions.session_delete)(app_id=app_id, session_id=session_id, principal=principal.name)
                )
            except DigitornError:
                pass
    except DigitornError as err:
        return error_response(err)
    data = {k: payload[k] for k in ("content", "tool_calls_count", "turns_used", "truncated")}
    return _envelope(data, headers=limit.headers())


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
    from django.conf import settings

    from conversations.events import wait_born

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
            async for event in follow(session_pk=session_pk, after=after, stop=guard):
                if event is None:
                    yield ": ping\n\n"
                else:
                    yield sse_frame(type=event.type, data=event.data, seq=event.seq)
        if guard.revoked:
            yield _revoked_frame()
    except SessionGone:
        yield sse_frame(type="error", data=error_data(f"Session '{session_id}' was deleted.", kind="session_gone"))
    except asyncio.CancelledError:
        raise
    finally:
        _guards.discard(guard)


@csrf_exempt
async def session_events(request: HttpRequest, app_id: str, session_id: str) -> HttpResponse:
    try:
        _require(request, "GET")
        principal = await _auth(request, scope="apps:read", allow_query_token=True)
        cursor = _cursor(request)
        await db(_app_exists)(app_id)
        try:
            # Watching never creates the session (issue #10): a missing one is waited for below.
            session = await db(sessions.session_resolve)(app_id=app_id, session_id=session_id, principal=principal.name)
        except NotFoundError:
            session = None
    except DigitornError as err:
        return error_response(err)
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


@csrf_exempt
async def notifications_drain(request: HttpRequest, app_id: str) -> HttpResponse:
    try:
        _require(request, "POST")
        principal = await _auth(request, scope="apps:run")
        data = _body(request)
        if "session_id" not in data and request.GET.get("session_id"):
            data["session_id"] = request.GET["session_id"]
        body = s.validate(s.NotificationsSerializer, data)
        await db(_app_exists)(app_id)
        from digitorn_site.errors import NotFoundError

        try:
            enqueued, summaries = await db(notifications.notifications_drain)(
                app_id=app_id, session_id=body["session_id"], principal=principal.name
            )
        except NotFoundError:
            # The original's answer for a session it does not know: nothing to drain (CLIs poll this).
            enqueued, summaries = None, []
    except DigitornError as err:
        return error_response(err)
    if enqueued is None:
        return _envelope({"notifications": 0})
    _start(enqueued)
    first = [sse_frame(type="notification", data=summary) for summary in summaries]
    return _sse_response(_turn_frames(enqueued, first, _guard_open(request, principal)))

