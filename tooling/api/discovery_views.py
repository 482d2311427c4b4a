"""Tool discovery and direct execution under /api/apps/{app_id}/ (DESIGN §7 shapes)."""

from __future__ import annotations

from rest_framework.response import Response

from apps_registry.selectors import app_compiled, app_runtime
from conversations.ratelimit import rate_limit_hit
from digitorn_site.api.base import ApiView
from digitorn_site.api.envelope import ok
from digitorn_site.errors import ForbiddenError
from tooling import selectors
from tooling.api.serializers import CategoryPageSerializer, ExecuteSerializer, SearchQuerySerializer
from tooling.services import tool_invoke


class ToolSearchView(ApiView):
    required_scope = "apps:read"
    query_serializer = SearchQuerySerializer

    def get(self, request, app_id: str):
        args = self.parse(SearchQuerySerializer, request.query_params)
        app = app_compiled(app_id=app_id)
        return ok(selectors.tool_search_result(app, query=args["query"], max_results=args["max_results"]))


class ToolCategoriesView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str):
        return ok(selectors.tool_categories_result(app_compiled(app_id=app_id)))


class ToolCategoryView(ApiView):
    required_scope = "apps:read"
    query_serializer = CategoryPageSerializer

    def get(self, request, app_id: str, category: str):
        args = self.parse(CategoryPageSerializer, request.query_params)
        return ok(
            selectors.tool_category_result(app_compiled(app_id=app_id), category=category, page=args["page"])
        )


class ToolDetailView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str, tool_name: str):
        return ok(selectors.tool_detail_result(app_compiled(app_id=app_id), tool_name=tool_name))


class ToolExecuteView(ApiView):
    required_scope = "apps:run"
    request_serializer = ExecuteSerializer

    def post(self, request, app_id: str, tool_name: str):
        args = self.parse(ExecuteSerializer)
        app = app_runtime(app_id=app_id)
        # The same per-app sliding window as chat: a direct call spends the app's budget too
        # (429 with Retry-After and X-RateLimit-* when the window is full).
        limit = rate_limit_hit(app_id=app_id)
        outcome = tool_invoke(
            app=app,
            tool_name=tool_name,
            params=args["params"],
            caller="api",
            principal=request.user.name,
            origin="direct",
        )
        if outcome.status == "blocked":
            raise ForbiddenError(outcome.error, details={"tool": outcome.tool})
        if outcome.status == "pending_approval":
            return ok(
                {
                    "request_id": outcome.request_id,
                    "status": "pending",
                    "tool": outcome.tool,
                    "message": f"Approve it with POST /api/apps/{app_id}/approve; the result will be at "
                    f"GET /api/apps/{app_id}/approvals/{outcome.request_id}.",
                },
                status=202,
                headers=limit.headers(),
            )
        # The original flattens the tool's ActionResult into the envelope: a tool that failed is
        # `success: false` at the top with HTTP 200 (the request itself was fine), `data` its data.
        body = {"success": outcome.success, "data": outcome.data, "error": outcome.error}
        if not outcome.success:
            body["error_code"] = "TOOL_FAILED"
        return Response(body, status=200, headers=limit.headers())


class ToolIndexView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str):
        return ok(selectors.tool_index_result(app_compiled(app_id=app_id)))
