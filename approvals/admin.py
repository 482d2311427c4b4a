"""Operator admin for approval requests.

Approve and deny go through ``approvals.services.approval_decide``, the service behind
``POST /approve``, so a decision taken here resumes the suspended turn or task exactly like one
taken through the API. Only ``params`` (secret values masked) is shown; ``call_params`` carries
what will really run and is never rendered.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from digitorn_site.errors import DigitornError
from digitorn_site.principals import ADMIN_PRINCIPAL


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(admin.ModelAdmin):
    list_display = (
        "request_id",
        "app_id",
        "tool_name",
        "status",
        "risk_level",
        "principal",
        "session_id",
        "origin",
        "created_at",
        "expires_at",
    )
    list_filter = ("status", "risk_level", "origin", "app_id")
    search_fields = ("request_id", "app_id", "tool_name", "session_id", "principal")
    actions = ("approve", "deny")
    fields = (
        "request_id",
        "app_id",
        "tool_name",
        "status",
        "risk_level",
        "reason",
        "params_block",
        "principal",
        "session_id",
        "agent_id",
        "origin",
        "origin_ref",
        "created_at",
        "expires_at",
        "decided_at",
        "decided_by",
        "decision_message",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ApprovalRequest | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApprovalRequest | None = None) -> bool:
        return False

    @admin.display(description="params")
    def params_block(self, obj: ApprovalRequest) -> str:
        return format_html(
            "<pre style='white-space:pre-wrap'>{}</pre>", json.dumps(obj.params, indent=2, sort_keys=True)
        )

    def _decide(self, request: HttpRequest, queryset: QuerySet[ApprovalRequest], *, approved: bool) -> None:
        verb = "approved" if approved else "denied"
        operator = request.user.get_username() or "an operator"
        decided = []
        for item in queryset:
            try:
                approval_decide(
                    app_id=item.app_id,
                    request_id=item.request_id,
                    approved=approved,
                    message=f"{verb} by {operator} in the admin",
                    principal=ADMIN_PRINCIPAL,
                )
            except DigitornError as err:
                self.message_user(request, f"Not {verb}: {item.request_id}: {err.message}", level=messages.ERROR)
            else:
                decided.append(item.request_id)
        if decided:
            self.message_user(request, f"{verb.capitalize()}: {', '.join(decided)}.", level=messages.SUCCESS)

    @admin.action(description="Approve selected requests")
    def approve(self, request: HttpRequest, queryset: QuerySet[ApprovalRequest]) -> None:
        self._decide(request, queryset, approved=True)

    @admin.action(description="Deny selected requests")
    def deny(self, request: HttpRequest, queryset: QuerySet[ApprovalRequest]) -> None:
        self._decide(request, queryset, approved=False)
