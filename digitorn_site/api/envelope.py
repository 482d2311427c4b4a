"""The response envelope: ``{"success", "data", "error"}`` plus ``error_code``/``details`` on failure."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from rest_framework.response import Response

from digitorn_site.errors import DigitornError


def ok(data: Any = None, status: int = 200, headers: dict | None = None) -> Response:
    return Response({"success": True, "data": data, "error": None}, status=status, headers=headers)


def error_body(error: DigitornError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "success": False,
        "data": None,
        "error": error.message,
        "error_code": error.error_code,
    }
    if error.details is not None:
        body["details"] = error.details
    return body


def error_response(error: DigitornError) -> JsonResponse:
    """For plain Django views and middleware, which have no DRF renderer."""
    response = JsonResponse(error_body(error), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    return response


def ok_response(data: Any = None, status: int = 200, headers: dict[str, str] | None = None) -> JsonResponse:
    """``ok`` for plain Django views (the async endpoints)."""
    response = JsonResponse({"success": True, "data": data, "error": None}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response
