"""The base view every REST endpoint derives from, and the public/health/fallback views."""

from __future__ import annotations

from collections.abc import Mapping

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.views import APIView

from digitorn_site import fastsql
from digitorn_site.api.envelope import error_response, ok_response
from digitorn_site.api.jsonbody import DepthLimitedJSONParser
from digitorn_site.errors import DigitornError, MethodNotAllowedError, NotFoundError, ValidationError
from digitorn_site.principals import Principal


class ApiView(APIView):
    """Thin base: API-key auth, scope permission, JSON only, the envelope via the exception handler."""

    required_scope: str | dict[str, str] | None = None
    # JSON nested thousands deep must answer 400, not escape DRF's parser as a RecursionError (500).
    parser_classes = [DepthLimitedJSONParser, MultiPartParser, FormParser]

    def parse(self, serializer_class: type[serializers.Serializer], data=None) -> dict:
        """Validate the body (or ``data``) with a serializer; errors leave as 400 naming the field."""
        if data is None:
            data = self.request.data
        if not isinstance(data, Mapping):
            raise ValidationError(f"The request body must be a JSON object, got {type(data).__name__}.")
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    @property
    def principal(self) -> Principal:
        return self.request.user


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
    from django.core.exceptions import DisallowedHost

    from digitorn_site.api.exceptions import to_digitorn_error

    error = to_digitorn_error(exception) if exception is not None else None
    if error is None and isinstance(exception, DisallowedHost):
        # Django's message names the Host and ALLOWED_HOSTS: what an operator behind a proxy must fix.
        error = ValidationError(f"{exception} (refused to guard against DNS rebinding).")
    if error is None:
        error = ValidationError("Bad request.")
    return error_response(error)


def permission_denied(request, exception=None) -> JsonResponse:
    from digitorn_site.errors import ForbiddenError

    return error_response(ForbiddenError())
