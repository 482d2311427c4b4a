"""Celery adapter: run a direct ``/execute`` call once its approval request was approved.

Imported by ``ToolingConfig.ready()`` so every process that sets Django up (web and worker)
registers the task; ``tooling/tasks.py`` belongs to the background-task runner.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="tooling.approval_tasks.run_approved_direct_call", ignore_result=True)
def run_approved_direct_call(request_id: str) -> None:
    from tooling.services import direct_call_run

    direct_call_run(request_id=request_id)
