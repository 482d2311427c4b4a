"""Request-size guard that answers 413 before a large body is read."""

from __future__ import annotations

from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from digitorn_site.api.envelope import error_response
from digitorn_site.errors import PayloadTooLargeError


class BodySizeLimitMiddleware:
    """Refuses bodies whose declared length exceeds the limit (uploads get their own, larger one)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _too_large(self, request: HttpRequest) -> HttpResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.DIGITORN_MAX_BODY_BYTES
        if request.content_type == "multipart/form-data":
            limit = settings.DIGITORN_MAX_UPLOAD_BYTES + 64 * 1024  # room for the multipart framing
        if length > limit:
            return error_response(
                PayloadTooLargeError(f"Request body is {length} bytes; the limit is {limit} bytes.")
            )
        return None

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self.__acall__(request)
        return self._too_large(request) or self.get_response(request)

    async def __acall__(self, request: HttpRequest):
        return self._too_large(request) or await self.get_response(request)
