"""Input and output shapes of the approvals endpoints."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from approvals.models import ApprovalRequest


class StrictBooleanField(serializers.BooleanField):
    """JSON true/false only: a decision must not hinge on how "no" or "0" is coerced."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError(f"must be true or false, got {type(data).__name__} {data!r}.")
        return data


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError(f"must be a string, got {type(data).__name__}.")
        return super().to_internal_value(data)


class DecisionSerializer(serializers.Serializer):
    request_id = StrictCharField(max_length=64)
    approved = StrictBooleanField(error_messages={"required": "is required: true to approve, false to deny."})
    message = StrictCharField(max_length=4000, required=False, allow_blank=True, default="")


def pending_item(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "request_id": request.request_id,
        "session_id": request.session_id,
        "agent_id": request.agent_id,
        "tool_name": request.tool_name,
        "params": request.params,
        "risk_level": request.risk_level,
        "reason": request.reason,
        "origin": request.origin,
        "created_at": request.created_at.isoformat(),
        "expires_at": request.expires_at.isoformat(),
    }


def request_detail(request: ApprovalRequest) -> dict[str, Any]:
    """One request in any state; ``result`` is the outcome of a direct call run after approval."""
    return {
        **pending_item(request),
        "status": request.status,
        "approved": request.status == ApprovalRequest.Status.APPROVED,
        "decision_message": request.decision_message,
        "decided_by": request.decided_by,
        "decided_at": request.decided_at.isoformat() if request.decided_at else None,
        "result": request.result,
    }


def decision_result(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "request_id": request.request_id,
        "approved": request.status == ApprovalRequest.Status.APPROVED,
        "status": request.status,
    }
