"""One exception handler: every failure leaves as the envelope with a real status code."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import Http404
from rest_framework import exceptions as drf
from rest_framework.response import Response

from digitorn_site import errors
from digitorn_site.api.envelope import error_body

log = logging.getLogger("digitorn.api")


def _flatten(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """DRF's nested error detail → ``[{"path": "a.b[0]", "message": ...}]``."""
    out: list[dict[str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            path = key if not prefix else f"{prefix}.{key}"
            if key == "non_field_errors":
                path = prefix
            out.extend(_flatten(value, path))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out.extend({"path": prefix, "message": str(item)} for item in detail)
        else:
            for index, item in enumerate(detail):
                out.extend(_flatten(item, f"{prefix}[{index}]"))
    else:
        out.append({"path": prefix, "message": str(detail)})
    return out


def to_digitorn_error(exc: Exception) -> errors.DigitornError | None:
    """Translate framework exceptions into the project's vocabulary (None: unexpected)."""
    if isinstance(exc, errors.DigitornError):
        return exc
    if isinstance(exc, RequestDataTooBig | TooManyFieldsSent):
        return errors.PayloadTooLargeError("Request body too large.")
    if isinstance(exc, Http404 | drf.NotFound):
        return errors.NotFoundError(str(exc) or "Not found.")
    if isinstance(exc, DjangoPermissionDenied):
        return errors.ForbiddenError()
    if isinstance(exc, drf.ParseError):
        return errors.ValidationError(f"Malformed request body: {exc.detail}")
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return errors.UnauthorizedError(str(exc.detail) if isinstance(exc, drf.AuthenticationFailed) else None)
    if isinstance(exc, drf.PermissionDenied):
        return errors.ForbiddenError(str(exc.detail))
    if isinstance(exc, drf.MethodNotAllowed):
        return errors.MethodNotAllowedError(str(exc.detail))
    if isinstance(exc, drf.UnsupportedMediaType):
        return errors.UnsupportedMediaTypeError(f"{exc.detail} Send JSON (Content-Type: application/json).")
    if isinstance(exc, drf.ValidationError):
        items = _flatten(exc.detail)
        first = items[0] if items else {"path": "", "message": "invalid request"}
        message = f"{first['path']}: {first['message']}" if first["path"] else first["message"]
        return errors.ValidationError(message, details={"errors": items})
    if isinstance(exc, drf.Throttled):
        return errors.RateLimitError(headers={"Retry-After": str(int(exc.wait or 1))})
    if isinstance(exc, drf.APIException):
        err = errors.DigitornError(str(exc.detail))
        err.status_code = exc.status_code
        return err
    return None


def exception_handler(exc: Exception, context: dict) -> Response:
    error = to_digitorn_error(exc)
    if error is None:
        log.exception("unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc)
        error = errors.DigitornError("Internal error; the daemon's log has the details.")
    response = Response(error_body(error), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    if isinstance(error, errors.UnauthorizedError):
        response["WWW-Authenticate"] = 'Bearer realm="digitorn"'
    return response
