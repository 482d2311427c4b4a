"""The roof: includes every app's API routes under /api/apps/ plus admin, schema, docs and health."""

from django.contrib import admin
from django.urls import include, path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps_registry.api.views import AppListView
from digitorn_site import converters
from digitorn_site.api import config, metrics, views
from tooling.api.modules import ModuleListView

register_converter(converters.AppIdConverter, "app_id")
register_converter(converters.NameConverter, "name")

handler400 = "digitorn_site.api.views.bad_request"
handler403 = "digitorn_site.api.views.permission_denied"
handler404 = "digitorn_site.api.views.not_found"
handler500 = "digitorn_site.api.views.server_error"

urlpatterns = [
    path("api/health", views.health, name="health"),
    path("api/health/", views.health),
    # The original's probes (public) and metrics (admin).
    path("healthz", metrics.healthz, name="healthz"),
    # The original's functional suite also probes /health (same liveness answer).
    path("health", metrics.healthz, name="health-probe"),
    path("readyz", metrics.readyz, name="readyz"),
    path("api/metrics", metrics.MetricsView.as_view(), name="metrics"),
    path("api/metrics/prometheus", metrics.PrometheusMetricsView.as_view(), name="metrics-prometheus"),
    path("api/metrics/sessions", metrics.SessionMetricsView.as_view(), name="metrics-sessions"),
    path("api/config", config.ConfigView.as_view(), name="config"),
    path("api/modules", ModuleListView.as_view(), name="module-list"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # Clients call the list as /api/apps (no slash); APPEND_SLASH cannot redirect a POST, so both answer.
    path("api/apps", AppListView.as_view(), name="app-list-noslash"),
    # Order matters: fixed paths (deploy, …) before the catch-all {app_id} routes.
    path("api/apps/", include("apps_registry.api.urls")),
    path("api/apps/", include("tooling.api.urls")),
    path("api/apps/", include("approvals.api.urls")),
    path("api/apps/", include("conversations.api.urls")),
    path("admin/", admin.site.urls),
    path("ui/", include("conversations.ui_urls")),
]
