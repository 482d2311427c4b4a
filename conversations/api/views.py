"""REST views of the conversation endpoints (the async ones live in ``conversations.sse``)."""

from __future__ import annotations

from conversations import engine, selectors, services
from conversations.api import serializers as s
from conversations.ratelimit import rate_limit_usage
from digitorn_site.api.envelope import ok
from digitorn_site.api.views import ApiView


def _app_exists(app_id: str) -> None:
    from apps_registry.selectors import app_exists

    app_exists(app_id=app_id)


class SessionListView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str):
        _app_exists(app_id)
        sessions = selectors.session_list(app_id=app_id, principal=self.principal.name)
        return ok({"sessions": sessions, "total": len(sessions)})


class SessionDetailView(ApiView):
    required_scope = {"GET": "apps:read", "DELETE": "apps:run"}

    def get(self, request, app_id: str, session_id: str):
        return ok(selectors.session_detail(app_id=app_id, session_id=session_id, principal=self.principal.name))

    def delete(self, request, app_id: str, session_id: str):
        services.session_delete(app_id=app_id, session_id=session_id, principal=self.principal.name)
        return ok({"session_id": session_id, "deleted": True})


class SessionHistoryView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str, session_id: str):
        return ok(selectors.session_history(app_id=app_id, session_id=session_id, principal=self.principal.name))


class SessionCancelView(ApiView):
    required_scope = "apps:run"

    def post(self, request, app_id: str, session_id: str):
        result = services.session_cancel(app_id=app_id, session_id=session_id, principal=self.principal.name)
        if result["status"] == "cancelled":
            # The suspended or queued turn ended here; the next queued message may start.
            session = services.session_resolve(app_id=app_id, session_id=session_id, principal=self.principal.name)
            engine.schedule_advance(session.pk)
        return ok({"session_id": session_id, **result})


class QuotaView(ApiView):
    required_scope = {"GET": "apps:read", "PUT": "apps:deploy", "DELETE": "apps:deploy"}
    request_serializer = {"PUT": s.QuotaSerializer}

    def get(self, request, app_id: str):
        _app_exists(app_id)
        return ok(rate_limit_usage(app_id=app_id).usage())

    def put(self, request, app_id: str):
        from apps_registry.services import app_rate_limit_set

        body = self.parse(s.QuotaSerializer)
        app_rate_limit_set(app_id=app_id, rpm=body["rpm"])
        return ok(rate_limit_usage(app_id=app_id).usage())

    def delete(self, request, app_id: str):
        from apps_registry.services import app_rate_limit_set

        app_rate_limit_set(app_id=app_id, rpm=None)
        return ok(rate_limit_usage(app_id=app_id).usage())


class NotificationsActiveView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str):
        _app_exists(app_id)
        session_id = request.query_params.get("session_id") or None
        return ok(
            {
                "active": selectors.notifications_active(
                    app_id=app_id, principal=self.principal.name, session_id=session_id
                )
            }
        )
