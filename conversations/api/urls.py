from django.urls import path

from conversations.api import async_views, sse, views

urlpatterns = [
    path("<app_id:app_id>/run", async_views.run, name="app-run"),
    path("<app_id:app_id>/chat", async_views.chat, name="chat"),
    path("<app_id:app_id>/chat/stream", sse.chat_stream, name="chat-stream"),
    path("<app_id:app_id>/sessions", views.SessionListView.as_view(), name="session-list"),
    path("<app_id:app_id>/sessions/<name:session_id>", views.SessionDetailView.as_view(), name="session-detail"),
    path(
        "<app_id:app_id>/sessions/<name:session_id>/history",
        views.SessionHistoryView.as_view(),
        name="session-history",
    ),
    path("<app_id:app_id>/sessions/<name:session_id>/events", sse.session_events, name="session-events"),
    path(
        "<app_id:app_id>/sessions/<name:session_id>/messages",
        async_views.session_messages,
        name="session-messages",
    ),
    path("<app_id:app_id>/sessions/<name:session_id>/cancel", views.SessionCancelView.as_view(), name="session-cancel"),
    # The original's session operations (abort is its name for cancel).
    path("<app_id:app_id>/sessions/<name:session_id>/abort", views.SessionAbortView.as_view(), name="session-abort"),
    path(
        "<app_id:app_id>/sessions/<name:session_id>/compact", views.SessionCompactView.as_view(), name="session-compact"
    ),
    path("<app_id:app_id>/sessions/<name:session_id>/fork", views.SessionForkView.as_view(), name="session-fork"),
    path("<app_id:app_id>/sessions/<name:session_id>/undo", views.SessionUndoView.as_view(), name="session-undo"),
    path("<app_id:app_id>/sessions/<name:session_id>/memory", views.SessionMemoryView.as_view(), name="session-memory"),
    path(
        "<app_id:app_id>/sessions/<name:session_id>/workspace",
        views.SessionWorkspaceView.as_view(),
        name="session-workspace",
    ),
    path("<app_id:app_id>/quota", views.QuotaView.as_view(), name="quota"),
    path("<app_id:app_id>/quota/user/<name:user_id>", views.UserQuotaView.as_view(), name="quota-user"),
    path("<app_id:app_id>/notifications/active", views.NotificationsActiveView.as_view(), name="notifications-active"),
    path("<app_id:app_id>/notifications", sse.notifications_drain, name="notifications-drain"),
]
