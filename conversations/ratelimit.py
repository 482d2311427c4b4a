"""A true sliding-window rate limiter per app, shared by every worker.

Embedded default: ``RateLimitHit`` rows. The check-and-record runs in one transaction; on SQLite the
transaction is ``IMMEDIATE`` (settings), so concurrent workers serialise on the write lock before
they count, and on PostgreSQL an advisory transaction lock per app does the same. With ``REDIS_URL``
a sorted set per app is trimmed, counted and appended by one Lua script (atomic on the server).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from apps_registry.selectors import app_rate_limit
from conversations.models import RateLimitHit
from digitorn_site import fastsql
from digitorn_site.errors import RateLimitError

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateLimitState:
    app_id: str
    limit: int
    current: int
    allowed: bool
    reset_seconds: int  # until the oldest hit in the window leaves it

    @property
    def remaining(self) -> int:
        return max(self.limit - self.current, 0)

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(self.reset_seconds, 1))
        return headers

    def usage(self) -> dict:
        return {
            "app_id": self.app_id,
            "current": self.current,
            "limit": self.limit,
            "remaining": self.remaining,
            "window_seconds": WINDOW_SECONDS,
        }


_LUA = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local member = ARGV[4]
local record = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if record == 1 and count < limit then
  redis.call('ZADD', key, now, member)
  count = count + 1
  allowed = 1
end
redis.call('EXPIRE', key, math.ceil(window) + 1)
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local oldest_at = now
if oldest[2] then oldest_at = tonumber(oldest[2]) end
return {allowed, count, tostring(oldest_at)}
"""

_redis_client = None


def _redis():
    global _redis_client
    if _redis_client is None:
        import redis

        _redis_client = redis.Redis.from_url(settings.REDIS_URL)
    return _redis_client


def _reset_after(oldest_at: float | None, now: float) -> int:
    if oldest_at is None:
        return 0
    return max(int(math.ceil(oldest_at + WINDOW_SECONDS - now)), 0)


def _hit_redis(app_id: str, limit: int, record: bool) -> RateLimitState:
    now = time.time()
    allowed, count, oldest = _redis().eval(
        _LUA, 1, f"digitorn:ratelimit:{app_id}", now, WINDOW_SECONDS, limit, uuid.uuid4().hex, int(record)
    )
    oldest_at = float(oldest) if int(count) else None
    return RateLimitState(
        app_id=app_id,
        limit=limit,
        current=int(count),
        allowed=bool(allowed) if record else int(count) < limit,
        reset_seconds=_reset_after(oldest_at, now),
    )


# Rows that left the window are pruned at most this often per app and process: they no longer
# count, so deleting them on every request only added a write statement to the hot path.
PRUNE_EVERY_SECONDS = 5.0
_pruned_at: dict[str, float] = {}


def _hit_db(app_id: str, limit: int, record: bool) -> RateLimitState:
    # Writes take SQLite's write lock at BEGIN (IMMEDIATE transactions), so concurrent workers
    # serialise before they count; a read-only usage query needs no lock.
    with transaction.atomic():
        return _hit_in_transaction(app_id, limit, record)


def _hit_in_transaction(app_id: str, limit: int, record: bool) -> RateLimitState:
    """The check-and-record; the caller holds a transaction (see the module's docstring)."""
    fastsql.ratelimit_lock(app_id)
    now = time.time()
    hits = RateLimitHit.objects.filter(app_id=app_id)
    if record and now - _pruned_at.get(app_id, 0.0) >= PRUNE_EVERY_SECONDS:
        hits.filter(at__lte=now - WINDOW_SECONDS).delete()
        _pruned_at[app_id] = now
    # Raw count and insert: they run on every request, inside the write transaction, where
    # the ORM's statement compilation cost more than the statements (~0.6 ms each).
    current, oldest_at = fastsql.ratelimit_window(app_id, now - WINDOW_SECONDS)
    allowed = current < limit
    if record and not allowed:
        # A full window is the moment the table is at its largest: prune whatever the clock.
        hits.filter(at__lte=now - WINDOW_SECONDS).delete()
        _pruned_at[app_id] = now
    if record and allowed:
        fastsql.ratelimit_insert(app_id, now)
        current += 1
        oldest_at = oldest_at if oldest_at is not None else now
    return RateLimitState(
        app_id=app_id, limit=limit, current=current, allowed=allowed, reset_seconds=_reset_after(oldest_at, now)
    )


def _effective_limit(app_id: str) -> int:
    return int(app_rate_limit(app_id=app_id))


def rate_limited(state: RateLimitState) -> RateLimitError:
    """The 429 of a full window (with its X-RateLimit-* and Retry-After headers)."""
    return RateLimitError(
        f"Rate limit of {state.limit} requests per minute reached for app '{state.app_id}'; "
        f"retry in {max(state.reset_seconds, 1)} s or raise it with PUT /api/apps/{state.app_id}/quota.",
        headers=state.headers(),
    )


def rate_limit_hit(*, app_id: str) -> RateLimitState:
    """Count one request against the app's window; raises RateLimitError (429, with headers) when full."""
    limit = _effective_limit(app_id)
    state = _hit_redis(app_id, limit, True) if settings.REDIS_URL else _hit_db(app_id, limit, True)
    if not state.allowed:
        raise rate_limited(state)
    return state


def rate_limit_take(*, app_id: str, limit: int) -> RateLimitState:
    """rate_limit_hit's check-and-record with a limit the caller looked up, in the caller's
    transaction (on the database; with REDIS_URL, on Redis). It does not raise: a refused request
    gets ``allowed=False``; the caller raises :func:`rate_limited` once its transaction is over, so
    the window's prune commits and nothing else the transaction did does.

    This lets a message's request count and enqueue in one transaction: one write lock on SQLite
    instead of two. On the database, rolling the transaction back (a later 400 or QUEUE_FULL) also
    takes the hit back: a refused request is not counted, as a 429 is not. On PostgreSQL the app's
    advisory lock is then held until the caller commits (its enqueue included)."""
    if settings.REDIS_URL:
        return _hit_redis(app_id, limit, True)
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("rate_limit_take must run inside a transaction")  # pragma: no cover
    return _hit_in_transaction(app_id, limit, True)


def rate_limit_usage(*, app_id: str) -> RateLimitState:
    """The window as it stands, without counting a request."""
    limit = _effective_limit(app_id)
    return _hit_redis(app_id, limit, False) if settings.REDIS_URL else _hit_db(app_id, limit, False)
