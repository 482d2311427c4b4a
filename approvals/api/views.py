"""GET /{app_id}/approvals, GET /{app_id}/approvals/{request_id}, POST /{app_id}/approve."""

from __future__ import annotations

from approvals import services
from approvals.api.serializers import DecisionSerializer, decision_result, pending_item, request_detail
from apps_registry.selectors import app_get
from digitorn_site.api.base import ApiView
from digitorn_site.api.envelope import ok
from digitorn_site.errors import NotFoundError


class ApprovalListView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str):
        app_get(app_id=app_id)
        pending = services.approvals_pending(app_id=app_id, principal=request.user.name)
        return ok({"pending": [pending_item(r) for r in pending]})


class ApprovalDetailView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str, request_id: str):
        found = services.approval_current_for(app_id=app_id, request_id=request_id, principal=request.user.name)
        if found is None:
            raise NotFoundError(f"No approval request '{request_id}' for app '{app_id}' belongs to you.")
        return ok(request_detail(found))


class ApproveView(ApiView):
    required_scope = "apps:run"
    request_serializer = DecisionSerializer

    def post(self, request, app_id: str):
        args = self.parse(DecisionSerializer)
        app_get(app_id=app_id)
        decided = services.approval_decide(
            app_id=app_id,
            request_id=args["request_id"],
            approved=args["approved"],
            message=args["message"],
            principal=request.user.name,
        )
        return ok(decision_result(decided, args["message"]))
