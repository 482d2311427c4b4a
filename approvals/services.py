"""Approval requests: pending → approved | denied | expired | cancelled, decided once."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from approvals import selectors
from approvals.models import ApprovalRequest
from digitorn_site import signals
from digitorn_site.errors import ConflictError, NotFoundError
from digitorn_site.principals import may_see

Status = ApprovalRequest.Status


def _new_request_id() -> str:
    return f"req-{secrets.token_hex(8)}"


def _send_decided(request: ApprovalRequest) -> None:
    payload = {
        "request_id": request.request_id,
        "app_id": request.app_id,
        "session_id": request.session_id,
        "approved": request.status == Status.APPROVED,
        "message": request.decision_message,
    }
    transaction.on_commit(lambda: signals.approval_decided.send(sender=ApprovalRequest, **payload))


@transaction.atomic
def approval_request_create(
    *,
    app: Any,
    tool_name: str,
    params: dict,
    call_params: dict,
    risk_level: str,
    reason: str,
    principal: str,
    session_id: str | None,
    agent_id: str,
    origin: str,
    origin_ref: str,
) -> ApprovalRequest:
    """``params`` is what people see (secrets masked); ``call_params`` is what runs once approved,
    stored sealed (``tooling.services.seal_secrets``: no secret value at rest)."""
    now = timezone.now()
    return ApprovalRequest.objects.create(
        request_id=_new_request_id(),
        app_id=app.app_id,
        session_id=session_id,
        principal=principal,
        agent_id=agent_id or "",
        origin=origin,
        origin_ref=origin_ref or "",
        tool_name=tool_name,
        params=params,
        call_params=call_params,
        risk_level=risk_level,
        reason=reason or "",
        expires_at=now + timedelta(seconds=int(app.runtime.approval_timeout)),
    )


def _expire(request: ApprovalRequest, now) -> None:
    waited = int((request.expires_at - request.created_at).total_seconds())
    request.status = Status.EXPIRED
    request.decided_at = now
    request.decision_message = f"expired after {waited} s without a decision"
    request.save(update_fields=["status", "decided_at", "decision_message"])
    _send_decided(request)


def approvals_expire_due() -> int:
    """Auto-deny every pending request whose deadline passed; returns how many."""
    # A plain read first: the sweep runs every few seconds and on every listing, and taking the
    # write lock (IMMEDIATE transactions on SQLite) when nothing is due would serialise readers.
    if not ApprovalRequest.objects.filter(status=Status.PENDING, expires_at__lte=timezone.now()).exists():
        return 0
    return _expire_due_locked()


@transaction.atomic
def _expire_due_locked() -> int:
    now = timezone.now()
    due = list(ApprovalRequest.objects.select_for_update().filter(status=Status.PENDING, expires_at__lte=now))
    for request in due:
        _expire(request, now)
    return len(due)


def approval_expire_if_due(*, request_id: str) -> None:
    """Expire this one request if it is pending past its deadline (a plain read when it is not)."""
    if ApprovalRequest.objects.filter(
        request_id=request_id, status=Status.PENDING, expires_at__lte=timezone.now()
    ).exists():
        _expire_one_locked(request_id=request_id)


@transaction.atomic
def _expire_one_locked(*, request_id: str) -> None:
    now = timezone.now()
    request = (
        ApprovalRequest.objects.select_for_update()
        .filter(request_id=request_id, status=Status.PENDING, expires_at__lte=now)
        .first()
    )
    if request is not None:
        _expire(request, now)


def approval_current(*, request_id: str) -> ApprovalRequest | None:
    """The request as it stands now: an overdue pending one is expired (with its signal) first."""
    approval_expire_if_due(request_id=request_id)
    return selectors.approval_get(request_id=request_id)


def approval_current_for(*, app_id: str, request_id: str, principal: str) -> ApprovalRequest | None:
    """:func:`approval_current` if the request belongs to this app and principal (admin: any)."""
    approval_expire_if_due(request_id=request_id)
    return selectors.approval_get_for(app_id=app_id, request_id=request_id, principal=principal)


def approvals_pending(*, app_id: str, principal: str) -> list[ApprovalRequest]:
    """The pending list as it stands now: overdue requests are expired (with their signals) first."""
    approvals_expire_due()
    return selectors.approval_list_pending(app_id=app_id, principal=principal)


def approval_decide(
    *, app_id: str, request_id: str, approved: bool, message: str, principal: str
) -> ApprovalRequest:
    # An overdue request is expired (and committed, with its signal) before the decision is refused.
    approval_expire_if_due(request_id=request_id)
    return _decide(
        app_id=app_id, request_id=request_id, approved=approved, message=message, principal=principal
    )


@transaction.atomic
def _decide(*, app_id: str, request_id: str, approved: bool, message: str, principal: str) -> ApprovalRequest:
    request = ApprovalRequest.objects.select_for_update().filter(request_id=request_id, app_id=app_id).first()
    if request is None or not may_see(principal, request.principal):
        raise NotFoundError(f"No approval request '{request_id}' for app '{app_id}' belongs to you.")
    if request.status != Status.PENDING:
        when = f" at {request.decided_at.isoformat()}" if request.decided_at else ""
        raise ConflictError(
            f"Approval request '{request_id}' is already {request.status}{when}; a request is decided once.",
            details={"request_id": request_id, "status": request.status},
        )
    request.status = Status.APPROVED if approved else Status.DENIED
    request.decision_message = message or ""
    request.decided_by = principal
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decision_message", "decided_by", "decided_at"])
    _send_decided(request)
    return request


@transaction.atomic
def approvals_cancel(*, app_id: str, session_id: str | None = None, principal: str | None = None) -> int:
    """Cancel an app's (or one session's) pending requests, e.g. on undeploy or session deletion.

    Session ids are per owner: ``principal`` keeps another principal's session of the same id intact."""
    rows = ApprovalRequest.objects.filter(app_id=app_id, status=Status.PENDING)
    if session_id is not None:
        rows = rows.filter(session_id=session_id)
    if principal is not None:
        rows = rows.filter(principal=principal)
    return rows.update(
        status=Status.CANCELLED,
        decided_at=timezone.now(),
        decision_message="cancelled: the app was undeployed"
        if session_id is None
        else "cancelled: the session ended",
    )


@transaction.atomic
def approval_result_store(*, request_id: str, result: dict) -> ApprovalRequest:
    """Record the outcome of a direct call that ran (or was refused) after the decision."""
    request = ApprovalRequest.objects.select_for_update().get(request_id=request_id)
    request.result = result
    request.save(update_fields=["result"])
    return request


@transaction.atomic
def approval_result_claim(*, request_id: str) -> bool:
    """Mark an approved direct call as started; False when another worker already claimed it."""
    claimed = ApprovalRequest.objects.filter(
        request_id=request_id, status=Status.APPROVED, result__isnull=True
    ).update(result={"status": "running", "success": None, "data": None, "error": None})
    return claimed == 1
