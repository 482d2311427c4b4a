"""Database work from async code: each call on an executor thread, its connection given back after.

Plumbing (no app imported), so the async views of every app and the conversation engine share one
way to reach the ORM from the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections


def db(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a sync ORM function in a worker thread; off SQLite, give its connection back after
    (to the pool on PostgreSQL: an executor thread must not keep one between calls)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            if not settings.IS_SQLITE:
                close_old_connections()

    return sync_to_async(call, thread_sensitive=False)
