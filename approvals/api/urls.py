from django.urls import path

from approvals.api import views

urlpatterns = [
    path("<app_id:app_id>/approvals", views.ApprovalListView.as_view(), name="approval-list"),
    path("<app_id:app_id>/approvals/", views.ApprovalListView.as_view()),
    path(
        "<app_id:app_id>/approvals/<name:request_id>",
        views.ApprovalDetailView.as_view(),
        name="approval-detail",
    ),
    path("<app_id:app_id>/approvals/<name:request_id>/", views.ApprovalDetailView.as_view()),
    path("<app_id:app_id>/approve", views.ApproveView.as_view(), name="approve"),
    path("<app_id:app_id>/approve/", views.ApproveView.as_view()),
]
