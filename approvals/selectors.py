"""Reads of approval requests; overdue pending rows are expired before answering."""

from __future__ import annotations

from approvals.models import ApprovalRequest
from approvals.services import _expire_one_if_due, approvals_expire_due
from digitorn_site.principals import ADMIN_PRINCIPAL


def approval_get(*, request_id: str) -> ApprovalRequest | None:
    _expire_one_if_due(request_id=request_id)
    return ApprovalRequest.objects.filter(request_id=request_id).first()


def approval_get_for(*, app_id: str, request_id: str, principal: str) -> ApprovalRequest | None:
    """The request if it belongs to this app and principal (admin sees every request)."""
    request = approval_get(request_id=request_id)
    if request is None or request.app_id != app_id:
        return None
    if principal != ADMIN_PRINCIPAL and request.principal != principal:
        return None
    return request


def approval_list_pending(*, app_id: str, principal: str) -> list[ApprovalRequest]:
    approvals_expire_due()
    rows = ApprovalRequest.objects.filter(app_id=app_id, status=ApprovalRequest.Status.PENDING)
    if principal != ADMIN_PRINCIPAL:
        rows = rows.filter(principal=principal)
    return list(rows.order_by("created_at", "id"))
