"""Thin Celery adapters for background tasks; the logic lives in tooling.background.

The services publish ``run_background_task`` by name (``RUN_BACKGROUND_TASK``), so this adapter
depends on them and not the reverse.
"""

from __future__ import annotations

import os

from digitorn_site.celery import app, scheduler_tick
from tooling.background.runner import background_task_run, background_tasks_sweep
from tooling.background.services import RUN_BACKGROUND_TASK


@app.task(
    name=RUN_BACKGROUND_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_background_task(self, task_id: str) -> str:
    worker = f"{self.request.hostname or 'worker'}:{os.getpid()}"
    return background_task_run(task_id=task_id, worker=worker)


@app.task(name="tooling.tasks.sweep_background_tasks", ignore_result=True)
def sweep_background_tasks() -> dict[str, int]:
    scheduler_tick()
    return background_tasks_sweep()
