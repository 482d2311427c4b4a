"""Thin Celery adapters for approvals (the beat schedule runs ``expire_due`` every few seconds)."""

from __future__ import annotations

from celery import shared_task

from approvals.services import approvals_expire_due


@shared_task(name="approvals.tasks.expire_due", ignore_result=True)
def expire_due() -> int:
    return approvals_expire_due()
