import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")
django_asgi_app = get_asgi_application()

from asgiref.sync import SyncToAsync  # noqa: E402
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

    async def send_response(self, response, send):
        if response.streaming:
            _release_request_thread()
        return await super().send_response(response, send)


def _release_request_thread() -> None:
    """Let the request's sync thread go before a stream starts.

    Django runs each request in a ThreadSensitiveContext: its first thread-sensitive sync call (the
    sync receivers of ``request_started``, at the least) starts a thread of its own that lives until
    the request ends. An SSE stream lasts hours, so 1,000 idle streams held 1,019 threads (issue 14).
    The view has returned here; what the stream does next goes through ``events.db`` (the loop's
    shared executor). A thread-sensitive call after this point (closing the response) gets a fresh
    thread that the context's exit shuts down as usual.
    """
    try:
        context = SyncToAsync.thread_sensitive_context.get()
    except LookupError:
        return
    executor = SyncToAsync.context_to_thread_executor.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)  # idle: the thread exits now


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
