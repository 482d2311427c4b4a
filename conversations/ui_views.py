"""The browser chat page at /ui/ and its two static assets.

The page is public HTML with no data in it; everything it shows comes from API calls that carry
the operator's key. Assets are served here rather than through staticfiles so the page works
under daphne with no collectstatic step and no DEBUG static serving.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from digitorn_site.api.envelope import error_response
from digitorn_site.errors import MethodNotAllowedError, NotFoundError

ASSET_DIR = Path(__file__).resolve().parent / "static" / "digitorn"
ASSETS = {"chat.js": "text/javascript; charset=utf-8", "chat.css": "text/css; charset=utf-8"}

# Only this origin's script and style, no inline code, no plugins, no framing: content that slips
# past textContent still cannot run. connect-src 'self' covers fetch() and EventSource.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _secure(response: HttpResponse) -> HttpResponse:
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response["X-Content-Type-Options"] = "nosniff"
    response["Referrer-Policy"] = "no-referrer"
    response["X-Frame-Options"] = "DENY"
    return response


def _method_not_allowed(request: HttpRequest) -> HttpResponse:
    return error_response(MethodNotAllowedError(f'Method "{request.method}" not allowed; the chat page is GET only.'))


# Read-only views: exempt from CSRF so any other method gets the JSON 405 below, not Django's HTML 403.
@csrf_exempt
def chat_page(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    response = render(request, "digitorn/chat.html", {"version": settings.VERSION})
    response["Cache-Control"] = "no-store"
    return _secure(response)


@csrf_exempt
def asset(request: HttpRequest, name: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    content_type = ASSETS.get(name)
    if content_type is None:
        return error_response(NotFoundError(f"No UI asset '{name}'; the page uses {', '.join(sorted(ASSETS))}."))
    response = HttpResponse((ASSET_DIR / name).read_bytes(), content_type=content_type)
    response["Cache-Control"] = "no-cache"
    return _secure(response)
