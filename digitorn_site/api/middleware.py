"""Request-size guard that answers 413 before a large body is read."""

from __future__ import annotations

import re
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from digitorn_site.api.envelope import error_response
from digitorn_site.errors import PayloadTooLargeError

# The endpoints that take a message: a 1 MiB message (JSON-escaped) plus up to 10 images needs more
# room than other JSON bodies; the serializers hold each part to its own cap.
MESSAGE_PATHS = re.compile(r"^/api/apps/[^/]+/(chat|chat/stream|run|sessions/[^/]+/messages)/?$")


class BodySizeLimitMiddleware:
    """Refuses bodies whose declared length exceeds the limit (uploads and messages get their own)."""

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
        elif MESSAGE_PATHS.match(request.path):
            limit = getattr(settings, "DIGITORN_MAX_MESSAGE_BODY_BYTES", limit)
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


class InlineHeadersMiddleware:
    """Django's Security, Common and X-Frame-Options middleware, run on the event loop for /api.

    Under ASGI each ``MiddlewareMixin`` hook is a hop to the worker's one sync thread and back; with
    the seven stock middlewares that was ~13 hops per request, about a fifth of an ASGI worker's CPU
    under bench_load. These three do no I/O (headers, and the Host check behind
    ``request.get_host()``), so their hooks are called directly, in the order settings.MIDDLEWARE lists them.
    Sessions, CSRF, auth and messages serve the admin and are not part of the API's chain (the API
    authenticates by key only): see ``digitorn_site.asgi``.
    """

    sync_capable = True
    async_capable = True
    wrapped = (
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    )

    def __init__(self, get_response: Callable):
        from django.utils.module_loading import import_string

        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        # get_response is never called through these instances: only their hooks are.
        self.inner = [import_string(path)(get_response) for path in self.wrapped]

    def _before(self, request: HttpRequest) -> HttpResponse | None:
        for middleware in self.inner:
            if hasattr(middleware, "process_request") and (response := middleware.process_request(request)):
                return response
        return None

    def _after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        for middleware in reversed(self.inner):
            if hasattr(middleware, "process_response"):
                response = middleware.process_response(request, response)
        return response

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self.__acall__(request)
        return self._after(request, self._before(request) or self.get_response(request))

    async def __acall__(self, request: HttpRequest):
        return self._after(request, self._before(request) or await self.get_response(request))
