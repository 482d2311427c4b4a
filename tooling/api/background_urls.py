from django.urls import path

from tooling.api import background_views as views

urlpatterns = [
    path(
        "<app_id:app_id>/background-tasks",
        views.BackgroundTaskListView.as_view(),
        name="background-task-list",
    ),
    path("<app_id:app_id>/background-tasks/", views.BackgroundTaskListView.as_view()),
    path(
        "<app_id:app_id>/background-tasks/<name:task_id>",
        views.background_task_detail,
        name="background-task-detail",
    ),
    path("<app_id:app_id>/background-tasks/<name:task_id>/", views.background_task_detail),
    path(
        "<app_id:app_id>/background-tasks/<name:task_id>/wait",
        views.background_task_wait,
        name="background-task-wait",
    ),
    path("<app_id:app_id>/background-tasks/<name:task_id>/wait/", views.background_task_wait),
]
