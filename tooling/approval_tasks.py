"""Celery adapter: run a direct ``/execute`` call once its approval request was approved.

Imported by ``ToolingConfig.ready()`` so every process that sets Django up (web and worker)
registers the task; ``tooling/tasks.py`` belongs to the background-task runner. The service
publishes it by name (``RUN_APPROVED_DIRECT_CALL_TASK``), so this adapter depends on the service
and not the reverse.
"""

from __future__ import annotations

from celery import shared_task

from tooling.services import RUN_APPROVED_DIRECT_CALL_TASK, direct_call_run


@shared_task(name=RUN_APPROVED_DIRECT_CALL_TASK, ignore_result=True)
def run_approved_direct_call(request_id: str) -> None:
    direct_call_run(request_id=request_id)
