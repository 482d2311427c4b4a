from __future__ import annotations

from django.db import models
from django.utils import timezone


class Session(models.Model):
    """A conversation with one app, owned by one principal; ids are chosen by clients.

    Ids are scoped to their owner: two principals using the same ``session_id`` get two sessions,
    neither able to block or see the other's (the admin key reads another's as a fallback).
    """

    class Status(models.TextChoices):
        IDLE = "idle"
        RUNNING = "running"
        WAITING_APPROVAL = "waiting_approval"

    app_id = models.CharField(max_length=128)
    session_id = models.CharField(max_length=200)
    principal = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.IDLE)
    # Last event seq handed out; bumped with select_for_update in the same transaction as the event.
    last_seq = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active = models.DateTimeField(auto_now_add=True, db_index=True)
    # A delegated run (agent_spawn) gets a session of its own (its own transcript and queue) whose
    # parent is the root session it was delegated from: its events go to the parent's stream, tagged
    # with ``delegation`` ({agent_id, task_id, parent_id, correlation_id}); it dies with the parent.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="delegations"
    )
    delegation = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-last_active"]
        constraints = [
            models.UniqueConstraint(fields=["app_id", "principal", "session_id"], name="uniq_app_principal_session")
        ]

    def __str__(self) -> str:
        return f"{self.app_id}/{self.session_id}"


class Message(models.Model):
    """The transcript: user, assistant (with tool_calls), tool results, system notes."""

    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True, default="")
    # assistant: [{id, name, params}]; tool: null
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=100, blank=True, default="")
    name = models.CharField(max_length=200, blank=True, default="")
    correlation_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class Turn(models.Model):
    """One queued unit of work in a session (a user message or a notification batch).

    Turns of a session run serially in ``id`` order; a worker claims the head with a lease, and an
    expired lease lets another worker resume it. All loop state lives in Message rows and here.
    """

    class Kind(models.TextChoices):
        MESSAGE = "message"
        NOTIFICATION = "notification"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        WAITING_APPROVAL = "waiting_approval"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="turns")
    correlation_id = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.MESSAGE)
    content = models.TextField(blank=True, default="")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    agent_id = models.CharField(max_length=64, blank=True, default="")
    turns_used = models.PositiveIntegerField(default=0)
    tool_calls_count = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    # Delegation: the turn whose tool call (``parent_call_id``) started this one, and how many
    # delegations deep it runs (0 for a turn a client queued).
    parent_turn = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    parent_call_id = models.CharField(max_length=120, blank=True, default="")
    depth = models.PositiveSmallIntegerField(default=0)
    # Loop bookkeeping that must survive a crash: {"started": bool, "pending": {call_id: request_id},
    # "decisions": {request_id: {"approved", "message"}}, "active_seconds": float, "compacted_upto": int,
    # "waits": {call_id: {"tasks": [task ids], ...}} (calls waiting for delegated runs)}
    state = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["session", "status"])]

    def lease_expired(self, now=None) -> bool:
        return self.lease_expires_at is None or self.lease_expires_at <= (now or timezone.now())


class Event(models.Model):
    """The durable event log a session's SSE streams replay from; ``seq`` has no gaps per session."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    type = models.CharField(max_length=40)
    data = models.JSONField(default=dict)
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["session", "seq"], name="uniq_event_seq")]


class Notification(models.Model):
    """A finished background task reported to its session, drained once."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="notifications")
    app_id = models.CharField(max_length=128)
    task_id = models.CharField(max_length=64)
    status = models.CharField(max_length=20)
    summary = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["id"]


class RateLimitHit(models.Model):
    """Sliding-window rate limiter on the embedded default (Redis sorted sets replace it at scale)."""

    app_id = models.CharField(max_length=128)
    at = models.FloatField(help_text="unix time")

    class Meta:
        indexes = [models.Index(fields=["app_id", "at"])]
