"""API-key authentication and scope checks.

Keys travel as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; ``?token=`` only on SSE GETs
(EventSource cannot set headers), which call :func:`authenticate_request` themselves. The bootstrap
admin key comes from ``DIGITORN_API_KEY`` or the data dir's ``admin.key``; every other key is an
``apps_registry.ApiKey`` row stored as a SHA-256 hash.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from apps_registry.selectors import api_key_lookup
from digitorn_site.errors import ForbiddenError, UnauthorizedError
from digitorn_site.principals import ADMIN_PRINCIPAL, SCOPES, Principal, principal_for

__all__ = ["ADMIN_PRINCIPAL", "SCOPES", "Principal", "authenticate_request", "principal_for_key"]


_admin_key_cache: dict[str, tuple[float, str]] = {}


def bootstrap_admin_key() -> str:
    """The admin key from the environment, else from the data dir file ('' when neither exists)."""
    if settings.DIGITORN_API_KEY:
        return settings.DIGITORN_API_KEY
    path = settings.ADMIN_KEY_FILE
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return ""
    cached = _admin_key_cache.get(str(path))
    if cached and cached[0] == mtime:
        return cached[1]
    key = path.read_text().strip()
    _admin_key_cache[str(path)] = (mtime, key)
    return key


def _bootstrap_admin(raw_key: str) -> Principal | None:
    """The admin when ``raw_key`` is the bootstrap admin key (no database), else None."""
    admin_key = bootstrap_admin_key()
    if raw_key and admin_key and hmac.compare_digest(raw_key.encode(), admin_key.encode()):
        return Principal(name=ADMIN_PRINCIPAL, scopes=frozenset({"admin"}))
    return None


def principal_for_key(raw_key: str) -> Principal | None:
    if not raw_key:
        return None
    if (admin := _bootstrap_admin(raw_key)) is not None:
        return admin
    key = api_key_lookup(raw_key=raw_key)
    if key is None:
        return None
    return principal_for(owner=key.owner, scopes=key.scopes, key_id=key.pk)


def bootstrap_principal(request, *, allow_query_token: bool = False) -> Principal | None:
    """The admin when the request carries the bootstrap admin key, else None (not an answer: the
    key may still be a stored one). No database: the async views call it on the event loop and
    skip the trip to a thread that :func:`authenticate_request` costs (the admin holds every scope).
    The key file's stat, when the key is not in the environment, is the only I/O (as a log write)."""
    return _bootstrap_admin(raw_key_from(request, allow_query_token=allow_query_token))


def raw_key_from(request, *, allow_query_token: bool = False) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if value := request.META.get("HTTP_X_API_KEY", "").strip():
        return value
    if allow_query_token:
        return request.GET.get("token", "").strip()
    return ""


def authenticate_request(request, *, allow_query_token: bool = False, scope: str = "apps:read") -> Principal:
    """For plain (non-DRF) views such as the SSE streams."""
    raw = raw_key_from(request, allow_query_token=allow_query_token)
    if not raw:
        raise UnauthorizedError()
    principal = principal_for_key(raw)
    if principal is None:
        raise UnauthorizedError("Invalid or revoked API key.")
    if not principal.has_scope(scope):
        raise ForbiddenError(f"This API key lacks the '{scope}' scope.")
    return principal


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        raw = raw_key_from(request)
        if not raw:
            if request.GET.get("token"):
                raise UnauthorizedError("?token= is accepted on SSE streams only; send the key in a header.")
            return None
        principal = principal_for_key(raw)
        if principal is None:
            raise UnauthorizedError("Invalid or revoked API key.")
        return principal, raw

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="digitorn"'


class HasScope(BasePermission):
    """Views declare ``required_scope`` (a string, or a dict keyed by HTTP method).

    Without a declaration, safe methods need ``apps:read`` and the others ``admin``, so a
    forgotten declaration fails closed.
    """

    def has_permission(self, request, view) -> bool:
        principal = request.user
        if not isinstance(principal, Principal):
            raise UnauthorizedError()
        declared = getattr(view, "required_scope", None)
        scope = declared.get(request.method) if isinstance(declared, dict) else declared
        if scope is None:
            scope = "apps:read" if request.method in ("GET", "HEAD", "OPTIONS") else "admin"
        if not principal.has_scope(scope):
            raise ForbiddenError(f"This API key lacks the '{scope}' scope.")
        return True
