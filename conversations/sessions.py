"""Sessions: resolve (create on first use, purge when idle too long), delete, cancel, purge.

Writes, synchronous and transactional (see ``turns/state.py`` for the one lock order: the
session row before its turns).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.services import approvals_cancel
from apps_registry.manifest.compiled import CompiledApp
from apps_registry.selectors import app_compiled
from conversations.models import Session, Turn
from conversations.turns.state import ACTIVE, cancel_runs_on_commit, lock_session, turn_finish_and_peek
from conversations.turns.wakeup import advance_on_commit
from digitorn_site import fastsql
from digitorn_site.errors import NotFoundError, ValidationError
from digitorn_site.principals import ADMIN_PRINCIPAL


def idle_seconds_for(app_id: str, compiled: CompiledApp | None = None) -> int:
    """The app's session idle timeout; ``compiled``: the app, when the caller has it already."""
    compiled = compiled or app_compiled(app_id=app_id)
    return compiled.runtime.session_idle_seconds or settings.DIGITORN_SESSION_IDLE_SECONDS


def check_runnable(app_id: str, compiled: CompiledApp) -> None:
    """background and pipeline apps compile but do not run here yet: a clear 400, not a stuck turn."""
    mode = compiled.mode
    if mode in ("background", "pipeline"):
        raise ValidationError(
            f"App '{app_id}' runs in '{mode}' mode, which this daemon does not run yet; "
            "deploy it with runtime.mode: conversation or one_shot."
        )


def _is_expired(session: Session, idle_seconds: int, now: datetime) -> bool:
    if session.last_active >= now - timedelta(seconds=idle_seconds):
        return False
    # A turn still running or waiting for a human keeps its session alive.
    return not session.turns.filter(status__in=ACTIVE).exists()


def not_found(app_id: str, session_id: str) -> NotFoundError:
    return NotFoundError(
        f"Session '{session_id}' of app '{app_id}' does not exist (it may have expired after inactivity or been deleted)."
    )


def session_lookup(app_id: str, session_id: str, principal: str) -> Session | None:
    session = fastsql.session_find(app_id, principal, session_id)
    if session is None and principal == ADMIN_PRINCIPAL:
        # The admin reaches anyone's session by its id when it has none of that id itself (the most
        # recently active one should several principals use the id).
        session = fastsql.session_find_latest(app_id, session_id)
    return session


def session_resolve(
    *, app_id: str, session_id: str, principal: str, create: bool = False, compiled: CompiledApp | None = None
) -> Session:
    """The caller's session, created on first use when ``create``; purges it when idle too long.

    Session ids are scoped to their owner: the same id used by another principal is another session,
    so no principal can block (squat) or see someone else's. The admin also reaches others' sessions.
    ``compiled``: the app, when the caller has it already.
    """
    idle = idle_seconds_for(app_id, compiled)
    now = timezone.now()
    session = session_lookup(app_id, session_id, principal)
    if session is not None and _is_expired(session, idle, now):
        # Committed before any 404 below: an expired session is purged either way.
        with transaction.atomic():
            Session.objects.filter(pk=session.pk, last_active__lt=now - timedelta(seconds=idle)).delete()
        session = None
    if session is None and not create:
        raise not_found(app_id, session_id)
    if session is None:
        # Only a creation opens a transaction: on SQLite every one takes the write lock.
        with transaction.atomic():
            try:
                with transaction.atomic():
                    session = Session.objects.create(app_id=app_id, session_id=session_id, principal=principal)
            except IntegrityError:
                # Another worker created it between our read and write (PostgreSQL only; SQLite's
                # IMMEDIATE transactions serialise the two).
                session = Session.objects.get(app_id=app_id, principal=principal, session_id=session_id)
    return session


def sessions_purge_expired(*, app_id: str) -> int:
    """Delete the app's sessions idle for longer than its idle timeout; returns how many."""
    idle = idle_seconds_for(app_id)
    cutoff = timezone.now() - timedelta(seconds=idle)
    with transaction.atomic():
        # A delegated run's session goes with its root, which stays while any of its runs is active.
        stale = (
            Session.objects.filter(app_id=app_id, last_active__lt=cutoff, parent__isnull=True)
            .exclude(turns__status__in=ACTIVE)
            .exclude(delegations__turns__status__in=ACTIVE)
        )
        count, _ = Session.objects.filter(pk__in=list(stale.values_list("pk", flat=True))).delete()
    return count


def session_delete(*, app_id: str, session_id: str, principal: str) -> None:
    """Delete the session with its transcript, turns and events, and cancel its pending approvals."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    with transaction.atomic():
        Session.objects.filter(pk=session.pk).delete()
    _approvals_cancel(app_id=app_id, session_id=session_id, principal=session.principal)


def sessions_purge_app(*, app_id: str) -> int:
    """An undeployed app loses its sessions; loops still running notice the session is gone and stop."""
    with transaction.atomic():
        Turn.objects.filter(session__app_id=app_id, status__in=ACTIVE).update(cancel_requested=True)
        count, _ = Session.objects.filter(app_id=app_id).delete()
    # Its pending approvals are cancelled by the approvals app's own undeploy receiver.
    return count


def _approvals_cancel(*, app_id: str, session_id: str | None, principal: str | None = None) -> None:
    # The owner's requests only: another principal's session of the same id is another session.
    approvals_cancel(app_id=app_id, session_id=session_id, principal=principal)



def session_cancel(*, app_id: str, session_id: str, principal: str) -> dict:
    """Stop the session's current turn at its next step boundary; a suspended or not-yet-started
    turn is finished right here, and the session's queue goes on (once committed). Its pending
    approvals are cancelled."""
    session = session_resolve(app_id=app_id, session_id=session_id, principal=principal)
    with transaction.atomic():
        lock_session(session.pk)
        head = session.turns.select_for_update(no_key=True).filter(status__in=ACTIVE).order_by("id").first()
        # Delegated runs of the session stop too (a run whose parent turn ends cancelled would be
        # stopped by it anyway; this also reaches runs spawned by an earlier, finished turn).
        runs = list(
            Turn.objects.filter(session__parent=session, status__in=ACTIVE).values_list("pk", "session_id")
        )
        cancel_runs_on_commit(runs)
        if head is None:
            if runs:
                return {"cancelled": True, "correlation_id": None, "status": "cancelling"}
            return {"cancelled": False, "correlation_id": None, "status": "idle"}
        head.cancel_requested = True
        head.save(update_fields=["cancel_requested"])
        finished_now = head.status != Turn.Status.RUNNING or head.lease_expired()
        if finished_now:
            turn_finish_and_peek(turn_pk=head.pk, content="Cancelled by the user.", cancelled=True)
    _approvals_cancel(app_id=app_id, session_id=session_id, principal=session.principal)
    if finished_now:
        # The suspended or queued turn ended here; the next queued message may start.
        advance_on_commit([session.pk])
    return {
        "cancelled": True,
        "correlation_id": head.correlation_id,
        "status": "cancelled" if finished_now else "cancelling",
    }
