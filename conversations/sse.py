"""The async views: SSE streams, the endpoints that wait for a turn (chat, run) and the one that queues
messages (a sync view would queue behind the worker's one sync thread).

DRF has no async views, so these are plain async Django views. They authenticate with
``authenticate_request`` and answer every failure before a stream starts with the JSON envelope.
Turns they start run as tasks on this worker's event loop; the response waits on the event log, so
the database stays the one source of truth (a reconnecting client replays from it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from conversations import engine, services
from conversations.api import serializers as s
from conversations.events import SessionGone, follow, sse_frame
from conversations.ratelimit import RateLimitState, rate_limit_hit
from digitorn_site.api.auth import Principal, authenticate_request
from digitorn_site.api.envelope import error_response
from digitorn_site.errors import ConflictError, DigitornError, MethodNotAllowedError, ValidationError

log = logging.getLogger("digitorn.sse")
db = engine.db


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


def _body(request: HttpRequest) -> dict:
    if not request.body:
        return {}
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"Malformed request body: expected JSON ({exc}).")
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


async def _wait_done(enqueued: services.Enqueued) -> dict:
    """The turn's `done` payload, read from the event log."""
    try:
        async for event in follow(session_pk=enqueued.session_pk, after=enqueued.after_seq):
            if event is not None and event.type == "done" and event.correlation_id == enqueued.correlation_id:
                return event.data
    except SessionGone:
        raise ConflictError("The session was deleted (or its app undeployed) while the turn was running.")
    raise ConflictError("The event stream ended before the turn finished.")  # pragma: no cover


async def _turn_frames(enqueued: services.Enqueued, first: list[str]) -> AsyncIterator[str]:
    """Frames of one turn: the opening ones, then its events until `done`; pings while idle."""
    try:
        for frame in first:
            yield frame
        async for event in follow(session_pk=enqueued.session_pk, after=enqueued.after_seq):
            if event is None:
                yield ": ping\n\n"
                continue
            if event.correlation_id != enqueued.correlation_id:
                continue
            yield sse_frame(type=event.type, data=event.data, seq=event.seq)
            if event.type == "done":
                return
    except SessionGone:
        yield sse_frame(type="error", data={"message": "The session was deleted while the turn was running.", "kind": "session_gone"})
    except asyncio.CancelledError:
        # The client went away; the turn itself goes on (its result stays in the log).
        raise


def _start(enqueued: services.Enqueued) -> None:
    engine.ensure_recovery()
    engine.schedule_advance(enqueued.session_pk)


# --- POST /{app}/chat -------------------------------------------------------------------------


async def _accept(
    request: HttpRequest, app_id: str, serializer: type, session_id: str | None = None
) -> tuple[services.Enqueued, RateLimitState]:
    """What every message-taking POST does first: auth, body, app, rate limit, enqueue. The session
    comes from the path (``session_id``) or from the body (/chat, /chat/stream)."""
    _require(request, "POST")
    principal = await _auth(request, scope="apps:run")
    body = s.validate(serializer, _body(request))
    await db(_app_exists)(app_id)
    limit = await db(rate_limit_hit)(app_id=app_id)
    enqueued = await db(services.message_enqueue)(
        app_id=app_id, session_id=session_id or body["session_id"], principal=principal.name, message=body["message"]
    )
    return enqueued, limit


@csrf_exempt
async def chat(request: HttpRequest, app_id: str) -> HttpResponse:
    try:
        enqueued, limit = await _accept(request, app_id, s.ChatSerializer)
        _start(enqueued)
        payload = await _wait_done(enqueued)
    except DigitornError as err:
        return error_response(err)
    return _envelope(payload, headers=limit.headers())


# --- POST /{app}/sessions/{sid}/messages ---------------------------------------------------------


@csrf_exempt
async def session_messages(request: HttpRequest, app_id: str, session_id: str) -> HttpResponse:
    """Queue a message in the session and answer 202 at once; the session's stream carries the turn.

    An async view like /chat rather than a DRF one: each step runs on the executor's threads, so a
    worker accepts messages concurrently. A sync view queues behind every other sync view on the
    worker's one sync thread; on PostgreSQL, where each step is a round trip, bench_load's POSTs
    waited seconds there while turns took milliseconds.
    """
    try:
        enqueued, limit = await _accept(request, app_id, s.MessageSerializer, session_id=session_id)
    except DigitornError as err:
        return error_response(err)
    _start(enqueued)
    return _envelope(enqueued.payload(), status=202, headers=limit.headers())


# --- POST /{app}/chat/stream ------------------------------------------------------------------


@csrf_exempt
async def chat_stream(request: HttpRequest, app_id: str) -> HttpResponse:
    try:
        enqueued, limit = await _accept(request, app_id, s.ChatSerializer)
    except DigitornError as err:
        return error_response(err)
    _start(enqueued)
    first = [sse_frame(type="connected", data={"session_id": enqueued.session_id, "correlation_id": enqueued.correlation_id})]
    return _sse_response(_turn_frames(enqueued, first), limit.headers())


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
        enqueued = await db(services.message_enqueue)(
            app_id=app_id, session_id=session_id, principal=principal.name, message=body["input"], field_name="input"
        )
        _start(enqueued)
        try:
            payload = await _wait_done(enqueued)
        finally:
            # A one-shot run leaves no session behind (its tool executions stay in the audit log).
            try:
                await asyncio.shield(
                    db(services.session_delete)(app_id=app_id, session_id=session_id, principal=principal.name)
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
        raise ValidationError(f"Last-Event-ID / since: expected an event id (an integer ≥ 0), got {raw!r}.")
    if value < 0:
        raise ValidationError(f"Last-Event-ID / since: expected an integer ≥ 0, got {value}.")
    return value


async def _session_frames(session_pk: int, session_id: str, after: int, greet: bool) -> AsyncIterator[str]:
    try:
        if greet:
            yield sse_frame(type="connected", data={"session_id": session_id})
        async for event in follow(session_pk=session_pk, after=after):
            if event is None:
                yield ": ping\n\n"
            else:
                yield sse_frame(type=event.type, data=event.data, seq=event.seq)
    except SessionGone:
        yield sse_frame(type="error", data={"message": f"Session '{session_id}' was deleted.", "kind": "session_gone"})
    except asyncio.CancelledError:
        raise


@csrf_exempt
async def session_events(request: HttpRequest, app_id: str, session_id: str) -> HttpResponse:
    try:
        _require(request, "GET")
        principal = await _auth(request, scope="apps:read", allow_query_token=True)
        cursor = _cursor(request)
        session = await db(services.session_resolve)(
            app_id=app_id, session_id=session_id, principal=principal.name, create=True
        )
    except DigitornError as err:
        return error_response(err)
    engine.ensure_recovery()
    after = session.last_seq if cursor is None else cursor
    return _sse_response(_session_frames(session.pk, session.session_id, after, greet=cursor is None))


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
            enqueued, summaries = await db(services.notifications_drain)(
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
    return _sse_response(_turn_frames(enqueued, first))

