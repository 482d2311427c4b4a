import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
django_asgi_app = get_asgi_application()

import asyncio  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import aclosing, closing  # noqa: E402

from asgiref.sync import SyncToAsync, ThreadSensitiveContext, sync_to_async  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up first)
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.db import connections  # noqa: E402
from django.http import StreamingHttpResponse  # noqa: E402
from django.urls import Resolver404, get_resolver, set_script_prefix  # noqa: E402


class _RequestThreads:
    """Single-thread executors that requests borrow for their thread-sensitive calls, and give back.

    Django gives each request a ThreadSensitiveContext whose executor (one thread) is made on the
    request's first thread-sensitive call (the sync receivers of ``request_started``, at least) and
    shut down at its end by yet another thread started to join it: two or three thread starts per
    request, and every sync DRF view opened a new SQLite connection in its new thread. Here the
    executors are kept: a request borrows one, so its sync calls still run one at a time on one
    thread of their own, and the thread (with its database connection, CONN_MAX_AGE=None) serves a
    later request, as in a threaded WSGI server. Used from the event loop's thread only.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.idle: list[ThreadPoolExecutor] = []

    def acquire(self) -> ThreadPoolExecutor:
        if self.idle:
            return self.idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def release(self, executor: ThreadPoolExecutor) -> None:
        if len(self.idle) < self.keep:
            self.idle.append(executor)
        else:
            executor.shutdown(wait=False)  # more than a busy moment needs: its thread exits when idle


_request_threads = _RequestThreads(keep=int(os.environ.get("DIGITORN_REQUEST_THREADS_KEPT", "8")))


class ApiASGIHandler(ASGIHandler):
    """Django's ASGI handler with settings.API_MIDDLEWARE as its chain (see that setting), and
    request threads borrowed from ``_request_threads``."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE; this runs once, at import, before any request.
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        match = _lean_match(scope)
        if match is not None:
            async with ThreadSensitiveContext():
                return await self._handle_lean(scope, receive, send, match)
        executors = SyncToAsync.context_to_thread_executor
        # A plain context (no executor= argument), as Django's own: a task the request starts that
        # outlives it (a turn) still gets a thread of its own for a thread-sensitive call, instead
        # of the RuntimeError an exited executor-context raises. The borrowed executor is put in
        # before the first call and taken out before the exit, which then has nothing to shut down.
        async with ThreadSensitiveContext() as context:
            owned = context.token is not None  # False inside an enclosing context: leave it be
            if owned:
                executors[context] = _request_threads.acquire()
            try:
                await self.handle(scope, receive, send)
            finally:
                if owned and (executor := executors.pop(context, None)) is not None:
                    _request_threads.release(executor)

    def resolve_request(self, request):
        # Every request was resolved once already, before it was made (see _lean_match): not again,
        # unless a middleware gave it a urlconf of its own.
        if not hasattr(request, "urlconf"):
            match = request.resolver_match or getattr(request, "scope", {}).get(_MATCH_KEY)
            if match is not None:
                request.resolver_match = match
                return match
        return super().resolve_request(request)

    async def _handle_lean(self, scope, receive, send, match) -> None:
        """Django's ``ASGIHandler.handle`` for a view marked ``lean_request`` (an async view whose
        database work all goes through executor threads, never the request's own thread).

        Django sends ``request_started`` and closes the response (``request_finished``) through the
        request's thread: two trips to a thread and back per request, whose receivers
        (close_old_connections, reset_queries) look after that thread's connection, which such a
        view never uses. Here they run on the event loop's thread (which has no connection), so the
        request borrows no thread at all. Everything else is Django's: the body read, the
        middleware chain, the disconnect listener, the response sent (chunked or streamed).
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                body_file.close()
                await ASGIHandler.send_response(self, error_response, send)
                error_response.close()
                return
            request.resolver_match = match

            class RequestProcessed(Exception):
                pass

            response = None
            try:
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self.listen_for_disconnect(receive))
                        response = await self.run_get_response(request)
                        if _streams_directly(response):
                            await self._send_stream(response, send)
                        else:
                            await ASGIHandler.send_response(self, response, send)
                        raise RequestProcessed
                except* (RequestProcessed, RequestAborted):
                    pass
            except BaseExceptionGroup as exception_group:
                if len(exception_group.exceptions) == 1:
                    raise exception_group.exceptions[0]
                raise
            if SyncToAsync.thread_sensitive_context.get() in SyncToAsync.context_to_thread_executor:
                # The view used a thread of its own after all: close on it, Django's way, so its
                # connection is looked after (given back to the pool on PostgreSQL).
                if response is None:
                    await signals.request_finished.asend(sender=self.__class__)
                else:
                    await sync_to_async(response.close)()
            elif response is None:
                signals.request_finished.send(sender=self.__class__)
            else:
                response.close()

    async def send_response(self, response, send):
        if not response.streaming:
            return await super().send_response(response, send)
        context = _release_request_thread()
        try:
            if _streams_directly(response):
                return await self._send_stream(response, send)
            return await super().send_response(response, send)
        finally:
            # Closing the response (request_finished's receivers) is thread-sensitive work: borrow
            # a thread again for it (unless a call during the stream already made one).
            if context is not None and context not in SyncToAsync.context_to_thread_executor:
                SyncToAsync.context_to_thread_executor[context] = _request_threads.acquire()

    async def _send_stream(self, response, send) -> None:
        """Django's ``send_response`` of a streaming response over an async generator, minus two
        layers per frame: Django's ``__aiter__`` and ``streaming_content`` wrappers (two generator
        hops, and the charset looked up in the headers and settings for every frame). Same messages:
        the start with the same headers, each part as its own body message (cut at ``chunk_size`` as
        Django cuts it), then the empty final one; the generator is closed (aclosing) when the send
        fails or the client goes away, as Django does."""
        await send({"type": "http.response.start", "status": response.status_code, "headers": _headers(response)})
        charset = response.charset  # the headers are sent: it cannot change now
        chunk_size = self.chunk_size
        async with aclosing(response._iterator) as parts:
            async for part in parts:
                if isinstance(part, str):
                    chunk = part.encode(charset)
                elif isinstance(part, (bytes, memoryview)):
                    chunk = bytes(part)
                else:
                    chunk = str(part).encode(charset)
                if len(chunk) <= chunk_size:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                else:
                    for piece, _ in self.chunk_bytes(chunk):
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body"})


def _streams_directly(response) -> bool:
    """A streaming response over an async generator (the SSE views'): sent by ``_send_stream``.
    Anything else (a sync iterator, a file) goes Django's way."""
    return (
        type(response) is StreamingHttpResponse
        and response.is_async
        and inspect.isasyncgen(getattr(response, "_iterator", None))
    )


def _headers(response) -> list[tuple[bytes, bytes]]:
    """The start message's headers, built as Django's ``send_response`` builds them."""
    headers = []
    for header, value in response.items():
        if isinstance(header, str):
            header = header.encode("ascii")
        if isinstance(value, str):
            value = value.encode("latin1")
        headers.append((bytes(header), bytes(value)))
    for c in response.cookies.values():
        headers.append((b"Set-Cookie", c.OutputString().encode("ascii")))
    return headers


def _release_request_thread() -> ThreadSensitiveContext | None:
    """Give the request's thread back before a stream starts.

    An SSE stream lasts hours: 1,000 idle streams once held 1,019 threads (issue 14). The view has
    returned here; what the stream does next goes through ``events.db`` (the loop's shared
    executor), so the context holds no executor until the stream ends.
    """
    try:
        context = SyncToAsync.thread_sensitive_context.get()
    except LookupError:
        return None
    executor = SyncToAsync.context_to_thread_executor.pop(context, None)
    if executor is not None:
        _request_threads.release(executor)
    return context


def _lean_match(scope):
    """The URL match of a request for a view marked ``lean_request``, else None (Django's way).

    Only when the signals' receivers are all synchronous (an async one would need Django's
    ``asend``), the app is served at the root (the path is then the path_info), and the event
    loop's thread holds no open database connection for the receivers to look at (it never does
    under the server; a test that runs the loop in its own thread may)."""
    if scope.get("root_path") or _has_async_receivers() or _loop_thread_connected():
        return None
    try:
        match = _resolve(get_resolver(), scope["path"])
    except Resolver404:
        return None
    if getattr(match.func, "lean_request", False):
        return match
    scope[_MATCH_KEY] = match  # Django's way, without resolving the path a second time
    return None


_MATCH_KEY = "digitorn.resolver_match"


@functools.lru_cache(maxsize=512)
def _resolve(resolver, path: str):
    """``resolver.resolve(path)``, remembered for the paths seen lately.

    Django resolves by trying the patterns in order, and every include that does not match builds
    its list of tried patterns: a chat stream's path walks four includes of /api/apps/ first, about
    a tenth of the request's handling on the loop. The answer depends only on the urlconf (the
    resolver, a new object when the urlconf changes) and the path; a path that matches nothing
    raises and is not remembered. The match is shared by the requests of one path: Django and DRF
    only read it (a view gets its own copy of the keyword arguments)."""
    return resolver.resolve(path)


def _loop_thread_connected() -> bool:
    return any(conn.connection is not None for conn in connections.all(initialized_only=True))


def _has_async_receivers() -> bool:
    return any(
        signal._live_receivers(ApiASGIHandler)[1] for signal in (signals.request_started, signals.request_finished)
    )


api_asgi_app = ApiASGIHandler()
# The daemon is the only server in front of itself: it serves the admin's CSS/JS from the apps'
# static folders (no collectstatic step, no reverse proxy needed).
site_asgi_app = ASGIStaticFilesHandler(django_asgi_app)


async def http_app(scope, receive, send):
    """/api/* through the lean API chain; the admin, the web UI and static files through the full one."""
    handler = api_asgi_app if scope["path"].startswith("/api/") else site_asgi_app
    return await handler(scope, receive, send)


application = ProtocolTypeRouter({"http": http_app})


def _daphne_leaves_bodies_to_django() -> None:
    """Twisted (under daphne) parses every multipart/urlencoded POST body itself before Django sees
    it, and answers a body its parser rejects (e.g. a multipart with no parts) with an empty 400 that
    has no Content-Type: no envelope, no message. Django parses bodies on its own, so switch
    Twisted's copy off; malformed uploads then get Django's JSON 400 like any other bad body."""
    if "daphne.server" not in sys.modules:  # served by another ASGI server (or none: a test)
        return
    from daphne.http_protocol import WebRequest

    if getattr(WebRequest, "_digitorn_no_form_parsing", False):
        return
    original_init = WebRequest.__init__

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parsePOSTFormSubmission", False)
        original_init(self, *args, **kwargs)

    WebRequest.__init__ = __init__
    WebRequest._digitorn_no_form_parsing = True


_daphne_leaves_bodies_to_django()
