import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
django_asgi_app = get_asgi_application()

import itertools  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from asgiref.sync import SyncToAsync, ThreadSensitiveContext  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up first)
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402


class ApiASGIHandler(ASGIHandler):
    """Django's ASGI handler with settings.API_MIDDLEWARE as its chain (see that setting)."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE; this runs once, at import, before any request.
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full

    async def __call__(self, scope, receive, send):
        """Django's entry point, with the request's thread-sensitive calls on a pooled thread.

        Django runs each request in a ThreadSensitiveContext whose first thread-sensitive sync call
        (the sync receivers of ``request_started``, at the least) starts a thread of its own, joined
        by yet another thread when the request ends: two thread starts per turn showed in profiles,
        an SQLite connection was opened per request, and an SSE stream kept its thread for hours
        (1,000 idle streams held 1,019 threads, issue 14). The context stays (so the semantics of
        tasks that outlive the request are Django's), but its executor is one of a few long-lived
        single-thread executors, unhooked before the context exits so nothing is shut down.
        """
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        context = ThreadSensitiveContext()
        async with context:
            pooled = context.token is not None  # the outermost context: ours to equip
            if pooled:
                SyncToAsync.context_to_thread_executor[context] = _request_executor()
            try:
                await self.handle(scope, receive, send)
            finally:
                if pooled:
                    SyncToAsync.context_to_thread_executor.pop(context, None)


# A request's sync work (DRF views, Django's request signals) runs on one of these threads; several
# requests may share one (each call waits its turn), which bounds threads whatever the number of
# open streams. Sized for concurrent sync views, not for streams: streams hold no thread.
REQUEST_THREADS = 8
_request_executors = [
    ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"digitorn-request-{i}") for i in range(REQUEST_THREADS)
]
_next_executor = itertools.count()


def _request_executor() -> ThreadPoolExecutor:
    return _request_executors[next(_next_executor) % REQUEST_THREADS]


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
