"""POST /{app}/sessions/{sid}/messages: the original's body (message ≤ 1 MiB, images, workspace,
queue_mode, client_message_id).

An async view like /chat (see ``conversations.sse``): each step runs on the executor's threads, so a
worker accepts messages concurrently instead of queueing behind its one sync thread.

What the extra fields do here:
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

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from conversations import queue, session_ops
from conversations.api import serializers as s
from conversations.ratelimit import rate_limit_hit
from conversations.sse import _accept, _app_exists, _auth, _body, _envelope, _require, _start, _wait_done, db
from digitorn_site.api.envelope import error_response
from digitorn_site.errors import DigitornError


def _ignored(body: dict) -> list[str]:
    ignored = []
    if body.get("images"):
        ignored.append("images")
    if body.get("workspace"):
        ignored.append("workspace")
    return ignored


def _peek_mode(request: HttpRequest) -> str | None:
    try:
        raw = _body(request)
    except DigitornError:
        return None  # the full path below answers the malformed body, after authentication
    mode = raw.get("queue_mode")
    return mode if isinstance(mode, str) else None


@csrf_exempt
async def session_messages(request: HttpRequest, app_id: str, session_id: str) -> HttpResponse:
    try:
        _require(request, "POST")
        replaced = False
        if _peek_mode(request) == "replace_last":
            principal = await _auth(request, scope="apps:run")
            body = s.validate(s.MessageSerializer, _body(request))
            await db(_app_exists)(app_id)
            limit = await db(rate_limit_hit)(app_id=app_id)
            enqueued = await db(session_ops.message_replace_last)(
                app_id=app_id, session_id=session_id, principal=principal.name, message=body["message"]
            )
            replaced = enqueued is not None
            if enqueued is None:
                enqueued = await db(queue.message_enqueue)(
                    app_id=app_id, session_id=session_id, principal=principal.name, message=body["message"]
                )
        else:
            # The path /chat takes (auth, body, app, rate limit, enqueue); the body is valid by now.
            enqueued, limit, _ = await _accept(request, app_id, s.MessageSerializer, session_id=session_id)
            body = s.validate(s.MessageSerializer, _body(request))
        _start(enqueued)
        extra = {
            "client_message_id": body["client_message_id"] or None,
            "queue_mode": body["queue_mode"],
            "replaced": replaced,
            "ignored": _ignored(body),
        }
        if body["queue_mode"] == "wait":
            result = await _wait_done(enqueued)
            return _envelope({**enqueued.payload(), **extra, "result": result}, headers=limit.headers())
    except DigitornError as err:
        return error_response(err)
    return _envelope({**enqueued.payload(), **extra}, status=202, headers=limit.headers())
