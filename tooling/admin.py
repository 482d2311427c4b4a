"""Operator admin for background tasks, the tool-execution log and agent memory.

All read-only: rows are written by the tool path and the Celery worker. The one write, cancelling
a task, goes through ``tooling.background`` exactly as ``DELETE /background-tasks/{id}`` does.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from digitorn_site.errors import DigitornError
from digitorn_site.principals import ADMIN_PRINCIPAL
from tooling.background import background_task_cancel
from tooling.models import BackgroundTask, MemoryEntry, ToolExecution


def _pretty_json(value: Any) -> str:
    return format_html("<pre style='white-space:pre-wrap'>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BackgroundTask)
class BackgroundTaskAdmin(ReadOnlyAdmin):
    list_display = ("task_id", "app_id", "tool", "status", "principal", "session_id", "created_at", "finished_at")
    list_filter = ("status", "app_id")
    search_fields = ("task_id", "app_id", "tool", "session_id", "principal")
    actions = ("cancel",)
    fields = (
        "task_id",
        "app_id",
        "tool",
        "status",
        "principal",
        "session_id",
        "params_block",
        "result_block",
        "error",
        "approval_request_id",
        "cancel_requested",
        "attempts",
        "worker",
        "lease_expires_at",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields

    @admin.display(description="params")
    def params_block(self, obj: BackgroundTask) -> str:
        return _pretty_json(obj.params)

    @admin.display(description="result")
    def result_block(self, obj: BackgroundTask) -> str:
        return _pretty_json(obj.result)

    @admin.action(description="Cancel selected tasks")
    def cancel(self, request: HttpRequest, queryset: QuerySet[BackgroundTask]) -> None:
        cancelled = []
        for task in queryset:
            try:
                background_task_cancel(app_id=task.app_id, task_id=task.task_id, principal=ADMIN_PRINCIPAL)
            except DigitornError as err:
                self.message_user(request, f"Cancelling {task.task_id} failed: {err.message}", level=messages.ERROR)
            else:
                cancelled.append(task.task_id)
        if cancelled:
            self.message_user(request, f"Cancel requested: {', '.join(cancelled)}.", level=messages.SUCCESS)


@admin.register(ToolExecution)
class ToolExecutionAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "app_id", "tool", "outcome", "caller", "principal", "session_id", "duration_ms")
    list_filter = ("outcome", "app_id")
    search_fields = ("app_id", "tool", "caller", "session_id", "principal")
    date_hierarchy = "created_at"


@admin.register(MemoryEntry)
class MemoryEntryAdmin(ReadOnlyAdmin):
    list_display = ("app_id", "session_id", "key", "updated_at")
    list_filter = ("app_id",)
    search_fields = ("app_id", "session_id", "key")
