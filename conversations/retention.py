"""Retention (issue 14): expired sessions, old events and old tool-audit rows are pruned.

Without pruning a daemon that runs for months fills its disk: expired sessions stayed in the
database until someone touched them, events were never deleted and the tool audit log only grew.
One periodic task (``conversations.tasks.prune_retention``) bounds all three; every delete runs in
small batches so the SQLite write lock is never held for long.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from conversations.models import Event, Session
from conversations.sessions import idle_seconds_for
from conversations.turns.state import ACTIVE
from digitorn_site.errors import NotFoundError
from tooling.models import ToolExecution

log = logging.getLogger("digitorn.conversations")

PRUNE_BATCH = 500


def _idle_seconds_or_default(app_id: str) -> int:
    try:
        return idle_seconds_for(app_id)
    except NotFoundError:  # the app is gone (its sessions should have gone with it)
        return settings.DIGITORN_SESSION_IDLE_SECONDS


def sessions_prune_expired(*, now: datetime | None = None, batch: int = PRUNE_BATCH) -> int:
    """Delete every app's sessions idle past their app's timeout (nothing running or waiting on a
    human), with their transcript, turns, events and notifications; returns how many."""
    now = now or timezone.now()
    total = 0
    for app_id in list(Session.objects.values_list("app_id", flat=True).distinct()):
        cutoff = now - timedelta(seconds=_idle_seconds_or_default(app_id))
        while True:
            with transaction.atomic():
                stale = list(
                    Session.objects.filter(app_id=app_id, last_active__lt=cutoff)
                    .exclude(turns__status__in=ACTIVE)
                    .values_list("pk", flat=True)[:batch]
                )
                if not stale:
                    break
                Session.objects.filter(pk__in=stale, last_active__lt=cutoff).delete()
            total += len(stale)
    return total


def _first_event_id_after(cutoff: datetime) -> int | None:
    """An id below which every event was created before ``cutoff`` and from which none was (None:
    every event is older).

    Events get ids in insertion order, so their ``created_at`` grows with the id: a binary search on
    the primary key finds the boundary without an index on ``created_at`` (~40 point reads).
    """
    bounds = Event.objects.order_by().values_list("id", flat=True)
    low, high = bounds.order_by("id").first(), bounds.order_by("-id").first()
    if low is None:
        return None
    if Event.objects.filter(id=high, created_at__lt=cutoff).exists():
        return None
    while low < high:
        mid = (low + high) // 2
        probe = Event.objects.filter(id__gte=mid).order_by("id").values_list("id", "created_at").first()
        if probe is None or probe[1] >= cutoff:
            high = mid  # the boundary need not be an existing id: ids below it are all older
        else:
            low = probe[0] + 1
    return low


def events_prune_older_than(*, cutoff: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete events created before ``cutoff`` in sessions that are still alive; returns how many.
    A stream that asks to resume from a pruned seq gets a ``cursor_expired`` error first."""
    boundary = _first_event_id_after(cutoff)
    total = 0
    while True:
        with transaction.atomic():
            rows = Event.objects.order_by("id")
            rows = rows.filter(id__lt=boundary) if boundary is not None else rows
            ids = list(rows.values_list("id", flat=True)[:batch])
            if not ids:
                break
            Event.objects.filter(id__in=ids).delete()
        total += len(ids)
    return total


def audit_prune_older_than(*, cutoff: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete tool-audit rows older than ``cutoff`` whose session no longer exists (deleted, expired,
    or a one-shot run's); returns how many. Rows of live sessions stay with them."""
    live = Session.objects.filter(
        app_id=OuterRef("app_id"), principal=OuterRef("principal"), session_id=OuterRef("session_id")
    )
    total = 0
    for app_id in list(ToolExecution.objects.order_by().values_list("app_id", flat=True).distinct()):
        while True:
            with transaction.atomic():
                ids = list(
                    ToolExecution.objects.filter(app_id=app_id, created_at__lt=cutoff)
                    .exclude(Exists(live))
                    .order_by("id")
                    .values_list("id", flat=True)[:batch]
                )
                if not ids:
                    break
                ToolExecution.objects.filter(id__in=ids).delete()
            total += len(ids)
    return total


def retention_prune(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic pruning: expired sessions always; events and audit rows older than
    ``DIGITORN_RETENTION_DAYS`` (0 keeps them forever)."""
    now = now or timezone.now()
    counts = {"sessions": sessions_prune_expired(now=now), "events": 0, "tool_executions": 0}
    days = settings.DIGITORN_RETENTION_DAYS
    if days > 0:
        cutoff = now - timedelta(days=days)
        counts["events"] = events_prune_older_than(cutoff=cutoff)
        counts["tool_executions"] = audit_prune_older_than(cutoff=cutoff)
    if any(counts.values()):
        log.info("retention: pruned %s", counts)
    return counts
