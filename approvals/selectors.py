"""Reads of approval requests, and nothing else: an overdue pending row is expired by a service
(``approvals.services.approval_current`` / ``approvals_pending`` expire it first, then read here)."""

from __future__ import annotations

from approvals.models import ApprovalRequest
from digitorn_site.principals import is_admin, may_see


def approval_get(*, request_id: str) -> ApprovalRequest | None:
    return ApprovalRequest.objects.filter(request_id=request_id).first()


def approval_get_for(*, app_id: str, request_id: str, principal: str) -> ApprovalRequest | None:
    """The request if it belongs to this app and principal (admin sees every request)."""
    request = approval_get(request_id=request_id)
    if request is None or request.app_id != app_id:
        return None
    if not may_see(principal, request.principal):
        return None
    return request


def approval_list_pending(*, app_id: str, principal: str) -> list[ApprovalRequest]:
    rows = ApprovalRequest.objects.filter(app_id=app_id, status=ApprovalRequest.Status.PENDING)
    if not is_admin(principal):
        rows = rows.filter(principal=principal)
    return list(rows.order_by("created_at", "id"))


def approval_request_payload(request: ApprovalRequest) -> dict:
    """The original's ``ApprovalRequest.to_dict()``: the `approval_request` event's payload and the
    pending list's entry (times in epoch seconds; ``tool_params`` are the masked params people see)."""
    return {
        "request_id": request.request_id,
        "session_id": request.session_id,
        "agent_id": request.agent_id,
        "user_id": request.principal,
        "app_id": request.app_id,
        "tool_name": request.tool_name,
        "tool_params": request.params,
        "risk_level": request.risk_level,
        "description": request.reason,
        "created_at": request.created_at.timestamp(),
        "expires_at": request.expires_at.timestamp() if request.expires_at else None,
    }
