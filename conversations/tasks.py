"""Thin Celery adapters: the same services, for contexts without an event loop."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from celery import shared_task

from conversations.models import Turn
from conversations.retention import retention_prune
from conversations.turns.scheduler import advance_session
from conversations.turns.state import ACTIVE, turns_recoverable


@shared_task(name="conversations.tasks.advance_session_task", ignore_result=True)
def advance_session_task(session_pk: int) -> None:
    async_to_sync(advance_session)(session_pk=session_pk)


@shared_task(name="conversations.tasks.recover_leases", ignore_result=True)
def recover_leases() -> int:
    """Periodic: sessions whose turn lost its worker (expired lease) or whose queue nobody runs."""
    # Every 10 s, and an idle daemon has no active turn: one indexed read instead of the two reads
    # (one of them loading every suspended turn's state) of turns_recoverable.
    if not Turn.objects.filter(status__in=ACTIVE).exists():
        return 0
    pks = turns_recoverable()
    for pk in pks:
        advance_session_task.delay(pk)
    return len(pks)


@shared_task(name="conversations.tasks.prune_retention", ignore_result=True)
def prune_retention() -> dict[str, int]:
    """Periodic: expired sessions, old events and old audit rows (see retention.retention_prune)."""
    return retention_prune()
