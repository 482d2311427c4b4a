"""The Celery app.

On the embedded default the broker is kombu's SQLAlchemy transport over SQLite. Its polling
interval must be set on the transport class: the ``polling_interval`` transport option crashes the
worker, and the 1 s default makes every background task wait up to a second.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digitorn_site.settings")

try:
    from kombu.transport.sqlalchemy import Channel as _SqlaChannel

    _SqlaChannel.polling_interval = float(os.environ.get("DIGITORN_BROKER_POLL_SECONDS", "0.1"))
except ImportError:  # pragma: no cover - SQLAlchemy missing means a Redis broker
    pass

app = Celery("digitorn")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
