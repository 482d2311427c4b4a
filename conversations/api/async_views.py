"""The JSON endpoints that take a message: POST /chat, /run and /sessions/{sid}/messages.

Async views (``digitorn_site.api.asyncviews``): waiting for a turn must not hold one of the ASGI
process's sync threads, and each step runs on the executor's threads, so a worker accepts messages
concurrently instead of queueing behind its one sync thread. Turns they start run as tasks on this
worker's event loop; a response that waits reads the turn's ``result`` from the event log, so the
database stays the one source of truth. The streams (/chat/stream, /events, /notifications) are in
``conversations.api.sse``.

What the extra fields of a message do here (the original's ``SessionMessageRequest``):
- ``queue_mode``: ``async`` (default) answers 202 at once; ``wait`` answers 200 with the turn's
  result when it ends (the original's legacy blocking mode); ``replace_last`` overwrites the
  session's newest message still waiting in the queue (or queues this one when none waits).
- ``client_message_id`` is echoed back (the client's own key for its message bubble).
- ``images`` are validated (≤ 10, base64, ``image/*`` else 415) and **not stored**: the brains of
  this daemon are text-only, so the agent does not see them. The answer says so (``ignored``).
- ``workspace`` is accepted and ignored: a session's tools work in the app's workspace, set by the
  manifest; a path chosen per message would let any caller point the tools at any folder.
"""

from __future__ import annotations

import asyncio
import uuid

from django.http import HttpRequest, HttpResponse

from apps_registry.manifest.compiled import CompiledApp
from apps_registry.selectors import app_exists
from conversations import queue, session_ops, sessions
from conversations.api import serializers as s
from conversations.events import SessionGone, follow
from conversations.ratelimit import RateLimitState, rate_limit_hit
from conversations.turns import scheduler
from digitorn_site.api.asyncviews import async_endpoint
from digitorn_site.api.envelope import ok_response
from digitorn_site.asyncdb import db
from digitorn_site.errors import ConflictError, DigitornError, ValidationError
from digitorn_site.principals import Principal


async def accept(
    app_id: str, principal: Principal, body: dict, session_id: str | None = None
) -> tuple[queue.Enqueued, RateLimitState]:
    """What every message-taking POST does once the body is valid: app, rate limit, enqueue. The
    session comes from the path (``session_id``) or from the body (/chat, /chat/stream). One trip to
    an executor thread for all of it (``queue.message_accept``), in the same order of checks."""
    return await db(queue.message_accept)(
        app_id=app_id, session_id=session_id or body["session_id"], principal=principal.name, message=body["message"]
    )


def start(enqueued: queue.Enqueued) -> None:
    scheduler.ensure_recovery()
    scheduler.schedule_advance(enqueued.session_pk)


async def _wait_done(enqueued: queue.Enqueued) -> dict:
    """The turn's `result` payload (its last event), read from the event log."""
    try:
        async for event in follow(session_pk=enqueued.session_pk, after=enqueued.after_seq):
            if event is not None and event.type == "result" and event.correlation_id == enqueued.correlation_id:
                return event.data
    except SessionGone:
        raise ConflictError("The session was deleted (or its app undeployed) while the turn was running.")
    raise ConflictError("The event stream ended before the turn finished.")  # pragma: no cover


# --- POST /{app}/chat -------------------------------------------------------------------------


@async_endpoint({"POST": "apps:run"}, body=s.ChatSerializer, lean_request=True)
async def chat(request: HttpRequest, principal: Principal, app_id: str, body: dict) -> HttpResponse:
    enqueued, limit = await accept(app_id, principal, body)
    start(enqueued)
    return ok_response(await _wait_done(enqueued), headers=limit.headers())


# --- POST /{app}/run --------------------------------------------------------------------------


@async_endpoint({"POST": "apps:run"}, body=s.RunSerializer, lean_request=True)
async def run(request: HttpRequest, principal: Principal, app_id: str, body: dict) -> HttpResponse:
    def one_shot_only(compiled: CompiledApp) -> None:
        if compiled.mode != "one_shot":
            raise ValidationError(
                f"App '{app_id}' runs in '{compiled.mode}' mode; /run is for one_shot apps. "
                f"Use POST /api/apps/{app_id}/chat with a session_id instead."
            )

    session_id = f"run-{uuid.uuid4().hex}"
    # input_type is metadata (the original's): the agent gets the input as it was sent.
    enqueued, limit = await db(queue.message_accept)(
        app_id=app_id, session_id=session_id, principal=principal.name, message=body["input"], field_name="input",
        check=one_shot_only,
    )
    start(enqueued)
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
    data = {k: payload[k] for k in ("content", "tool_calls_count", "turns_used", "truncated")}
    return ok_response(data, headers=limit.headers())


# --- POST /{app}/sessions/{sid}/messages ---------------------------------------------------------


def _ignored(body: dict) -> list[str]:
    ignored = []
    if body.get("images"):
        ignored.append("images")
    if body.get("workspace"):
        ignored.append("workspace")
    return ignored


def _replace_last(
    app_id: str, session_id: str, principal: str, message: str
) -> tuple[queue.Enqueued, RateLimitState, bool]:
    """replace_last's steps, in one trip to a thread: app, rate limit, overwrite the newest waiting
    message or else queue this one (each step its own transaction, as before)."""
    app_exists(app_id=app_id)
    limit = rate_limit_hit(app_id=app_id)
    enqueued = session_ops.message_replace_last(app_id=app_id, session_id=session_id, principal=principal, message=message)
    if enqueued is not None:
        return enqueued, limit, True
    return queue.message_enqueue(app_id=app_id, session_id=session_id, principal=principal, message=message), limit, False


@async_endpoint({"POST": "apps:run"}, body=s.MessageSerializer, lean_request=True)
async def session_messages(
    request: HttpRequest, principal: Principal, app_id: str, session_id: str, body: dict
) -> HttpResponse:
    replaced = False
    if body["queue_mode"] == "replace_last":
        enqueued, limit, replaced = await db(_replace_last)(app_id, session_id, principal.name, body["message"])
    else:
        enqueued, limit = await accept(app_id, principal, body, session_id=session_id)
    start(enqueued)
    extra = {
        "client_message_id": body["client_message_id"] or None,
        "queue_mode": body["queue_mode"],
        "replaced": replaced,
        "ignored": _ignored(body),
    }
    if body["queue_mode"] == "wait":
        result = await _wait_done(enqueued)
        return ok_response({**enqueued.payload(), **extra, "result": result}, headers=limit.headers())
    return ok_response({**enqueued.payload(), **extra}, status=202, headers=limit.headers())
