"""REST views of the conversation endpoints (the async ones: ``async_views`` and ``conversations.api.sse``)."""

from __future__ import annotations

from collections.abc import Callable

from apps_registry.selectors import app_exists
from apps_registry.services import app_rate_limit_set
from conversations import selectors, session_ops, sessions
from conversations.api import serializers as s
from conversations.ratelimit import rate_limit_usage
from digitorn_site.api.base import ApiView
from digitorn_site.api.envelope import ok


class SessionListView(ApiView):
    required_scope = "apps:read"
    query_serializer = s.SessionListQuerySerializer

    def get(self, request, app_id: str):
        app_exists(app_id=app_id)
        query = self.parse(s.SessionListQuerySerializer, request.query_params.dict())
        return ok(selectors.session_list(app_id=app_id, principal=self.principal.name, **query))


class SessionDetailView(ApiView):
    required_scope = {"GET": "apps:read", "DELETE": "apps:run"}

    def get(self, request, app_id: str, session_id: str):
        return ok(selectors.session_detail(app_id=app_id, session_id=session_id, principal=self.principal.name))

    def delete(self, request, app_id: str, session_id: str):
        sessions.session_delete(app_id=app_id, session_id=session_id, principal=self.principal.name)
        return ok({"session_id": session_id, "deleted": True})


class SessionHistoryView(ApiView):
    required_scope = "apps:read"
    query_serializer = s.HistoryQuerySerializer

    def get(self, request, app_id: str, session_id: str):
        query = self.parse(s.HistoryQuerySerializer, request.query_params.dict())
        return ok(
            selectors.session_history(app_id=app_id, session_id=session_id, principal=self.principal.name, **query)
        )


class SessionCancelView(ApiView):
    required_scope = "apps:run"

    def post(self, request, app_id: str, session_id: str):
        result = sessions.session_cancel(app_id=app_id, session_id=session_id, principal=self.principal.name)
        return ok({"session_id": session_id, **result})


class SessionAbortView(SessionCancelView):
    """The original's name for cancel; answers its fields (``was_active``, ``aborted``) too."""

    def post(self, request, app_id: str, session_id: str):
        response = super().post(request, app_id, session_id)
        data = response.data["data"]
        data["was_active"] = data["status"] != "idle"
        data["aborted"] = data["cancelled"]
        return response


def _session_operation(name: str, method: str, scope: str, operation: Callable[..., dict]) -> type[ApiView]:
    """A view that answers ``operation(app_id, session_id, principal)`` under one method and scope: the
    original's session operations all have that shape. ``name`` is the class name the OpenAPI
    operationId is derived from (``SessionCompactView`` → ``session_compact_post``)."""

    def handler(self, request, app_id: str, session_id: str):
        return ok(operation(app_id=app_id, session_id=session_id, principal=self.principal.name))

    return type(name, (ApiView,), {"required_scope": scope, method: handler, "__module__": __name__})


SessionCompactView = _session_operation("SessionCompactView", "post", "apps:run", session_ops.session_compact)
SessionForkView = _session_operation("SessionForkView", "post", "apps:run", session_ops.session_fork)
SessionUndoView = _session_operation("SessionUndoView", "post", "apps:run", session_ops.session_undo)
SessionMemoryView = _session_operation("SessionMemoryView", "get", "apps:read", selectors.session_memory)
SessionWorkspaceView = _session_operation("SessionWorkspaceView", "get", "apps:read", session_ops.session_workspace)


class QuotaView(ApiView):
    required_scope = {"GET": "apps:read", "PUT": "apps:deploy", "DELETE": "apps:deploy"}
    request_serializer = {"PUT": s.QuotaSerializer}

    def get(self, request, app_id: str):
        app_exists(app_id=app_id)
        return ok(rate_limit_usage(app_id=app_id).usage())

    def put(self, request, app_id: str):
        body = self.parse(s.QuotaSerializer)
        app_rate_limit_set(app_id=app_id, rpm=body["rpm"])
        return ok(rate_limit_usage(app_id=app_id).usage())

    def delete(self, request, app_id: str):
        app_rate_limit_set(app_id=app_id, rpm=None)
        return ok(rate_limit_usage(app_id=app_id).usage())


class UserQuotaView(ApiView):
    """The original's ``GET /quota/user/{user_id}``. Limits here are per app (every user of the app
    shares its window), so the user's effective limit is the app's and no per-user override exists."""

    required_scope = "apps:deploy"

    def get(self, request, app_id: str, user_id: str):
        app_exists(app_id=app_id)
        usage = rate_limit_usage(app_id=app_id).usage()
        return ok(
            {
                "app_id": app_id,
                "user_id": user_id,
                "scope": "user",
                "quota": None,
                "effective": {"requests": {"per_minute": usage["limit"]}},
                "usage": usage,
                "updated_at": None,
                "updated_by": None,
            }
        )


class NotificationsActiveView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str):
        # Never 404 (CLIs poll it): an unknown app simply has nothing pending.
        session_id = request.query_params.get("session_id") or None
        return ok(
            {
                "active": selectors.notifications_active(
                    app_id=app_id, principal=self.principal.name, session_id=session_id
                )
            }
        )
