from __future__ import annotations

from django.db import models


class ToolExecution(models.Model):
    """One row per tool_invoke call: who ran what, how long it took, how it ended."""

    class Outcome(models.TextChoices):
        OK = "ok"
        ERROR = "error"
        BLOCKED = "blocked"
        PENDING_APPROVAL = "pending_approval"
        DENIED = "denied"

    app_id = models.CharField(max_length=128, db_index=True)
    tool = models.CharField(max_length=200)
    caller = models.CharField(max_length=200, help_text="agent:<id>, api, task:<id>")
    principal = models.CharField(max_length=100, blank=True, default="")
    session_id = models.CharField(max_length=200, null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    error = models.TextField(blank=True, default="")
    duration_ms = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["app_id", "created_at"])]


class MemoryEntry(models.Model):
    """The memory module's per-session notes."""

    app_id = models.CharField(max_length=128)
    session_id = models.CharField(max_length=200)
    key = models.CharField(max_length=200)
    value = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["app_id", "session_id", "key"]
        constraints = [
            models.UniqueConstraint(fields=["app_id", "session_id", "key"], name="uniq_memory_key"),
        ]


class BackgroundTask(models.Model):
    """A tool call run by a Celery worker; the row is the truth, the broker message only a wake-up."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        WAITING_APPROVAL = "waiting_approval"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    task_id = models.CharField(max_length=64, unique=True)
    app_id = models.CharField(max_length=128, db_index=True)
    principal = models.CharField(max_length=100)
    session_id = models.CharField(max_length=200, null=True, blank=True)
    tool = models.CharField(max_length=200)
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    approval_request_id = models.CharField(max_length=64, null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["app_id", "status"])]

    def __str__(self) -> str:
        return self.task_id
