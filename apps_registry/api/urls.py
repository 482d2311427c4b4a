from django.urls import path, re_path

from apps_registry.api import diagnostics, views

urlpatterns = [
    path("", views.AppListView.as_view(), name="app-list"),
    re_path(r"^deploy/?$", views.DeployView.as_view(), name="app-deploy"),
    re_path(r"^deploy/upload/?$", views.DeployUploadView.as_view(), name="app-deploy-upload"),
    path("<app_id:app_id>", views.AppDetailView.as_view(), name="app-detail"),
    path("<app_id:app_id>/deploy-status", views.DeployStatusView.as_view(), name="app-deploy-status"),
    path("<app_id:app_id>/diagnostics", diagnostics.AppDiagnosticsView.as_view(), name="app-diagnostics"),
    path("<app_id:app_id>/secrets", views.SecretListView.as_view(), name="secret-list"),
    path("<app_id:app_id>/secrets/<name:key>", views.SecretDetailView.as_view(), name="secret-detail"),
]
