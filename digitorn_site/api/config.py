"""``GET /api/config`` (the original's daemon configuration view) and ``PATCH /api/config``.

The answer is the daemon's effective, non-secret settings (limits, timeouts, what is enabled); no
key, path or credential. Settings come from ``DIGITORN_*`` environment variables at start, so a
PATCH cannot change them while the daemon runs: it answers 400 saying so (the original rewrote its
config file; a running multi-worker daemon here would disagree with itself).
"""

from __future__ import annotations

from django.conf import settings

from digitorn_site.api.base import ApiView
from digitorn_site.api.envelope import ok
from digitorn_site.errors import ValidationError

CONFIG_SETTINGS = (
    ("session_idle_seconds", "DIGITORN_SESSION_IDLE_SECONDS"),
    ("default_rpm", "DIGITORN_DEFAULT_RPM"),
    ("queue_depth", "DIGITORN_QUEUE_DEPTH"),
    ("sse_ping_seconds", "DIGITORN_SSE_PING_SECONDS"),
    ("lease_seconds", "DIGITORN_LEASE_SECONDS"),
    ("retention_days", "DIGITORN_RETENTION_DAYS"),
    ("max_body_bytes", "DIGITORN_MAX_BODY_BYTES"),
    ("max_upload_bytes", "DIGITORN_MAX_UPLOAD_BYTES"),
    ("task_wait_max_seconds", "DIGITORN_TASK_WAIT_MAX_SECONDS"),
)


def config_snapshot() -> dict:
    database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return {
        "server": {"auth_enabled": bool(settings.DIGITORN_API_KEY), "database": database, "debug": settings.DEBUG},
        "limits": {name: getattr(settings, setting, None) for name, setting in CONFIG_SETTINGS},
        "editable": False,
    }


class ConfigView(ApiView):
    required_scope = {"GET": "apps:read", "PATCH": "admin"}

    def get(self, request):
        return ok(config_snapshot())

    def patch(self, request):
        raise ValidationError(
            "The daemon's configuration is read-only while it runs: set the DIGITORN_* environment "
            "variables (or the .env file) and restart it.",
            details={"editable": False},
        )
