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


class RagDocument(models.Model):
    """One indexed source of the rag module: a workspace file or a text given in the call.

    Scoped by app, workspace folder (an app whose workspace moves does not search the old one's
    files) and knowledge base. ``size``/``mtime_ns``/``sha256`` say whether a file changed since it
    was indexed, so re-indexing only re-embeds what changed.
    """

    class Kind(models.TextChoices):
        FILE = "file"
        TEXT = "text"

    app_id = models.CharField(max_length=128)
    workspace = models.CharField(max_length=1024)
    knowledge_base = models.CharField(max_length=64, default="default")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    source_id = models.CharField(max_length=1024, help_text="workspace-relative path, or the text's id")
    size = models.BigIntegerField(default=0)
    mtime_ns = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    model = models.CharField(max_length=100, blank=True, default="", help_text="embedding model name:dim")
    chunk_count = models.PositiveIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    indexed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["app_id", "knowledge_base", "source_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["app_id", "workspace", "knowledge_base", "kind", "source_id"], name="uniq_rag_document"
            ),
        ]
        indexes = [models.Index(fields=["app_id", "workspace", "knowledge_base"])]

    def __str__(self) -> str:
        return f"{self.app_id}/{self.knowledge_base}:{self.source_id}"


class RagChunk(models.Model):
    """A piece of a document's text and its embedding (float32 little-endian bytes; empty when the
    daemon runs without an embedding model, then search is keyword-only)."""

    document = models.ForeignKey(RagDocument, on_delete=models.CASCADE, related_name="chunks")
    position = models.PositiveIntegerField()
    text = models.TextField()
    start_char = models.PositiveIntegerField(default=0)
    end_char = models.PositiveIntegerField(default=0)
    start_line = models.PositiveIntegerField(default=1)
    end_line = models.PositiveIntegerField(default=1)
    vector = models.BinaryField(default=b"")
    # The chunk's stemmed words, space-padded (" a b a "), so BM25 counts a query word with one
    # str.count per chunk instead of re-tokenising every chunk's text at each query.
    terms = models.TextField(default="", blank=True)
    term_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["document_id", "position"]
        constraints = [models.UniqueConstraint(fields=["document", "position"], name="uniq_rag_chunk")]
