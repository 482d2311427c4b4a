"""The one helper of the plain async Django views (DRF has no async views).

Endpoints that wait (a turn, a background task) or stream (SSE) are plain async views, so they do
not hold one of the ASGI process's sync threads. :func:`async_endpoint` gives them what ``ApiView``
gives the REST views: the method check (405), the API key and its scope (401/403), the body parsed
by a serializer (400 naming the field) and every failure answered as the envelope, with
``WWW-Authenticate`` on a 401. An unexpected exception is logged and answered 500, never a page.

A streamed response is returned as is: failures inside a stream are the stream's own ``error`` events.

Roof, not plumbing: it authenticates through ``digitorn_site.api.auth`` (which looks keys up).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers

from digitorn_site.api.auth import authenticate_request, bootstrap_principal
from digitorn_site.api.base import parse
from digitorn_site.api.envelope import error_response
from digitorn_site.api.exceptions import to_digitorn_error
from digitorn_site.api.jsonbody import request_json
from digitorn_site.asyncdb import db
from digitorn_site.errors import DigitornError, MethodNotAllowedError, UnauthorizedError
from digitorn_site.principals import Principal

log = logging.getLogger("digitorn.api")

Handler = Callable[..., Awaitable[HttpResponse]]


def _failure(request: HttpRequest, exc: Exception) -> HttpResponse:
    error = to_digitorn_error(exc)
    if error is None:
        log.exception("unhandled error in %s", request.path, exc_info=exc)
        error = DigitornError("Internal error; the daemon's log has the details.")
    response = error_response(error)
    if isinstance(error, UnauthorizedError):
        response["WWW-Authenticate"] = 'Bearer realm="digitorn"'
    return response


def _shared_fields(serializer_class: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """``serializer_class`` whose instances share one set of fields, built once.

    DRF deep-copies a serializer's declared fields for every instance (``get_fields``): for a chat
    body, a dozen fields rebuilt per message (the images list's child serializer and its fields with
    them), about a seventh of the request's handling on the event loop. The copies exist so that an
    instance may alter its fields; these bodies' fields never are altered, and validating with them
    keeps no state on a field (the errors and the validated data are the instance's own), so one set
    serves every request: same validation, same errors."""
    template = serializer_class()
    return type(
        serializer_class.__name__,
        (serializer_class,),
        {"fields": template.fields, "__module__": serializer_class.__module__, "__doc__": serializer_class.__doc__},
    )


def async_endpoint(
    scopes: dict[str, str],
    *,
    body: type[serializers.Serializer] | None = None,
    allow_query_token: bool = False,
    lean_request: bool = False,
) -> Callable[[Handler], Callable[..., Awaitable[HttpResponse]]]:
    """Decorate ``handler(request, principal, **path_kwargs)`` (plus ``body=`` the validated body when a
    ``body`` serializer is given). ``scopes`` maps each allowed method to the scope it needs; checks
    run in that order: method, key, body, then the handler. ``allow_query_token``: ``?token=`` is
    accepted as the key (SSE GETs: EventSource cannot set headers).

    ``lean_request``: the handler reaches the database only through ``digitorn_site.asyncdb.db``
    (executor threads), never through the request's own thread (a thread-sensitive
    ``sync_to_async``); the API's ASGI handler then lends the request no thread and sends Django's
    request signals from the event loop (``digitorn_site.asgi.ApiASGIHandler._handle_lean``)."""
    allowed = " or ".join(scopes)
    # The turn-taking endpoints' bodies (lean_request: chat, run, messages, the chat stream).
    lean_body: list[type[serializers.Serializer]] = []

    def body_class() -> type[serializers.Serializer]:
        if not lean_request:
            return body
        if not lean_body:  # built at the first request: fields may read settings
            lean_body.append(_shared_fields(body))
        return lean_body[0]

    def decorate(handler: Handler) -> Callable[..., Awaitable[HttpResponse]]:
        @csrf_exempt  # API keys, not cookies: no CSRF; a wrong method must get the JSON 405
        @functools.wraps(handler)
        async def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            try:
                scope = scopes.get(request.method)
                if scope is None:
                    raise MethodNotAllowedError(f'Method "{request.method}" not allowed; use {allowed}.')
                # The bootstrap admin key needs no lookup: no trip to a thread for it.
                principal: Principal = bootstrap_principal(
                    request, allow_query_token=allow_query_token
                ) or await db(authenticate_request)(request, allow_query_token=allow_query_token, scope=scope)
                if body is not None:
                    kwargs["body"] = parse(body_class(), request_json(request))
                return await handler(request, principal, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure leaves as the envelope
                return _failure(request, exc)

        view.lean_request = lean_request
        return view

    return decorate
