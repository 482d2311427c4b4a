"""The public views (health) and the fallback views Django answers errors with.

The base of every REST endpoint is ``digitorn_site.api.base.ApiView``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from digitorn_site import fastsql
from digitorn_site.api.envelope import error_response, ok_response
from digitorn_site.api.exceptions import to_digitorn_error
from digitorn_site.errors import (
    DigitornError,
    ForbiddenError,
    MethodNotAllowedError,
    NotFoundError,
    ValidationError,
)


@csrf_exempt  # a POST must get the JSON 405 below, not the CSRF middleware's HTML 403
def health(request) -> JsonResponse:
    """Public: version, database reachability and, when known, worker liveness."""
    if request.method != "GET":
        return error_response(MethodNotAllowedError(f'Method "{request.method}" not allowed.'))
    db_ok = True
    try:
        fastsql.ping()
    except Exception:  # noqa: BLE001 - health reports, never raises
        db_ok = False
    data = {
        "status": "ok" if db_ok else "degraded",
        "version": settings.VERSION,
        "database": {"ok": db_ok, "vendor": connection.vendor},
    }
    from digitorn_site import health_checks

    data.update(health_checks.extra())
    return ok_response(data, status=200 if db_ok else 503)


def not_found(request, exception=None) -> JsonResponse:
    return error_response(NotFoundError(f"No endpoint at {request.path}."))


def server_error(request) -> JsonResponse:
    return error_response(DigitornError("Internal error; the daemon's log has the details."))


def bad_request(request, exception=None) -> JsonResponse:
    error = to_digitorn_error(exception) if exception is not None else None
    if error is None and isinstance(exception, DisallowedHost):
        # Django's message names the Host and ALLOWED_HOSTS: what an operator behind a proxy must fix.
        error = ValidationError(f"{exception} (refused to guard against DNS rebinding).")
    if error is None:
        error = ValidationError("Bad request.")
    return error_response(error)


def permission_denied(request, exception=None) -> JsonResponse:
    return error_response(ForbiddenError())
