"""Thin Celery adapters for background tasks; the logic lives in tooling.background."""

from __future__ import annotations

import os

from digitorn_site.celery import app


@app.task(
    name="tooling.tasks.run_background_task",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_background_task(self, task_id: str) -> str:
    from tooling.background import background_task_run

    worker = f"{self.request.hostname or 'worker'}:{os.getpid()}"
    return background_task_run(task_id=task_id, worker=worker)


@app.task(name="tooling.tasks.sweep_background_tasks", ignore_result=True)
def sweep_background_tasks() -> dict[str, int]:
    from digitorn_site.celery import scheduler_tick
    from tooling.background import background_tasks_sweep

    scheduler_tick()
    return background_tasks_sweep()
