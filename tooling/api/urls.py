from django.urls import include, path

# Background tasks and tool discovery are built separately; both hang under /api/apps/{app_id}/.
urlpatterns = [
    path("", include("tooling.api.background_urls")),
    path("", include("tooling.api.discovery_urls")),
]
