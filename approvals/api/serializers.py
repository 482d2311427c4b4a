"""Input and output shapes of the approvals endpoints."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from approvals.models import ApprovalRequest
from approvals.selectors import approval_request_payload
from digitorn_site.api.fields import StrictBooleanField, StrictCharField

MESSAGE_ALIASES = ("message", "response", "answer", "value", "reply", "user_response")


class DecisionSerializer(serializers.Serializer):
    """The original's body: ``request_id`` (or ``approval_id``), ``approved``, and the human's words under
    any of its six names (the first non-empty one wins)."""

    body_example = '{"request_id": "req-…", "approved": true}'

    request_id = StrictCharField(max_length=64, required=False)
    approval_id = StrictCharField(max_length=64, required=False, help_text="alias of request_id")
    approved = StrictBooleanField(error_messages={"required": "is required: true to approve, false to deny."})
    message = StrictCharField(max_length=4000, required=False, allow_blank=True, default="")
    response = StrictCharField(max_length=4000, required=False, allow_blank=True, help_text="alias of message")
    answer = StrictCharField(max_length=4000, required=False, allow_blank=True, help_text="alias of message")
    value = StrictCharField(max_length=4000, required=False, allow_blank=True, help_text="alias of message")
    reply = StrictCharField(max_length=4000, required=False, allow_blank=True, help_text="alias of message")
    user_response = StrictCharField(max_length=4000, required=False, allow_blank=True, help_text="alias of message")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        request_id = attrs.get("request_id") or attrs.get("approval_id")
        if not request_id:
            raise serializers.ValidationError({"request_id": ["is required (or send it as approval_id)."]})
        message = next((attrs[k] for k in MESSAGE_ALIASES if attrs.get(k)), "")
        return {"request_id": request_id, "approved": attrs["approved"], "message": message}


def _epoch(value) -> float | None:
    return value.timestamp() if value is not None else None


def pending_item(request: ApprovalRequest) -> dict[str, Any]:
    """The original's pending entry (``tool_name``, ``tool_params``, ``description``, ``user_id``, epoch
    ``created_at``); ``expires_at`` and ``origin`` are this project's additions."""
    return {**approval_request_payload(request), "origin": request.origin}


def request_detail(request: ApprovalRequest) -> dict[str, Any]:
    """One request in any state; ``result`` is the outcome of a direct call run after approval."""
    return {
        **pending_item(request),
        "status": request.status,
        "approved": request.status == ApprovalRequest.Status.APPROVED,
        "decision_message": request.decision_message,
        "decided_by": request.decided_by,
        "decided_at": _epoch(request.decided_at),
        "result": request.result,
    }


def decision_result(request: ApprovalRequest, message: str = "") -> dict[str, Any]:
    return {
        "request_id": request.request_id,
        "approved": request.status == ApprovalRequest.Status.APPROVED,
        "payload_received": bool(message),
        "status": request.status,
    }
