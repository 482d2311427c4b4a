"""Operator admin for sessions: their transcript, turns and event log, read-only.

Sessions are written only by the conversation engine; the admin shows what happened and never
edits it (an edited transcript would no longer match the event log clients replayed).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from conversations.models import Event, Message, Notification, Session, Turn


def _pretty_json(value: Any) -> str:
    return format_html("<pre style='white-space:pre-wrap'>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageInline(ReadOnlyInline):
    model = Message
    fields = ("created_at", "role", "name", "content", "tool_calls_block", "tool_call_id", "correlation_id")
    readonly_fields = fields

    @admin.display(description="tool calls")
    def tool_calls_block(self, obj: Message) -> str:
        return _pretty_json(obj.tool_calls) if obj.tool_calls else "-"


class TurnInline(ReadOnlyInline):
    model = Turn
    fields = ("correlation_id", "kind", "status", "agent_id", "turns_used", "tool_calls_count", "created_at", "finished_at")
    readonly_fields = fields


class EventInline(ReadOnlyInline):
    model = Event
    fields = ("seq", "type", "data_block", "correlation_id", "created_at")
    readonly_fields = fields

    @admin.display(description="data")
    def data_block(self, obj: Event) -> str:
        return _pretty_json(obj.data)


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("session_id", "app_id", "principal", "status", "message_count", "last_seq", "created_at", "last_active")
    list_filter = ("status", "app_id")
    search_fields = ("session_id", "app_id", "principal")
    date_hierarchy = "last_active"
    fields = ("app_id", "session_id", "principal", "status", "last_seq", "created_at", "last_active")
    readonly_fields = fields
    inlines = (MessageInline, TurnInline, EventInline)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Session]:
        return super().get_queryset(request).annotate(_message_count=Count("messages"))

    @admin.display(description="messages", ordering="_message_count")
    def message_count(self, obj: Session) -> int:
        return obj._message_count

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Session | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Session | None = None) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("task_id", "app_id", "session", "status", "created_at", "delivered_at")
    list_filter = ("status", "app_id")
    search_fields = ("task_id", "app_id")
    fields = ("session", "app_id", "task_id", "status", "summary_block", "created_at", "delivered_at")
    readonly_fields = fields

    @admin.display(description="summary")
    def summary_block(self, obj: Notification) -> str:
        return _pretty_json(obj.summary)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Notification | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Notification | None = None) -> bool:
        return False
