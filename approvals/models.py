from __future__ import annotations

from django.db import models


class ApprovalRequest(models.Model):
    """A tool call waiting for a human: pending → approved | denied | expired | cancelled."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        EXPIRED = "expired"
        CANCELLED = "cancelled"

    class Origin(models.TextChoices):
        AGENT = "agent"  # an agent's tool call inside a turn
        DIRECT = "direct"  # POST /tools/{name}/execute
        TASK = "task"  # a background task

    request_id = models.CharField(max_length=64, unique=True)
    app_id = models.CharField(max_length=128, db_index=True)
    session_id = models.CharField(max_length=200, null=True, blank=True)
    principal = models.CharField(max_length=100)
    agent_id = models.CharField(max_length=64, blank=True, default="")
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.AGENT)
    origin_ref = models.CharField(max_length=200, blank=True, default="", help_text="tool call id or task id")
    tool_name = models.CharField(max_length=200)
    # Shown to people: secret values masked.
    params = models.JSONField(default=dict)
    # What runs once approved; never rendered by the API or the admin.
    call_params = models.JSONField(default=dict)
    risk_level = models.CharField(max_length=10, default="medium")
    reason = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    decision_message = models.TextField(blank=True, default="")
    decided_by = models.CharField(max_length=100, blank=True, default="")
    result = models.JSONField(null=True, blank=True, help_text="result of a direct call run after approval")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return self.request_id
