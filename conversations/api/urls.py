from django.urls import path

from conversations import sse
from conversations.api import views

urlpatterns = [
    path("<app_id:app_id>/run", sse.run, name="app-run"),
    path("<app_id:app_id>/chat", sse.chat, name="chat"),
    path("<app_id:app_id>/chat/stream", sse.chat_stream, name="chat-stream"),
    path("<app_id:app_id>/sessions", views.SessionListView.as_view(), name="session-list"),
    path("<app_id:app_id>/sessions/<name:session_id>", views.SessionDetailView.as_view(), name="session-detail"),
    path(
        "<app_id:app_id>/sessions/<name:session_id>/history",
        views.SessionHistoryView.as_view(),
        name="session-history",
    ),
    path("<app_id:app_id>/sessions/<name:session_id>/events", sse.session_events, name="session-events"),
    path("<app_id:app_id>/sessions/<name:session_id>/messages", sse.session_messages, name="session-messages"),
    path("<app_id:app_id>/sessions/<name:session_id>/cancel", views.SessionCancelView.as_view(), name="session-cancel"),
    path("<app_id:app_id>/quota", views.QuotaView.as_view(), name="quota"),
    path("<app_id:app_id>/notifications/active", views.NotificationsActiveView.as_view(), name="notifications-active"),
    path("<app_id:app_id>/notifications", sse.notifications_drain, name="notifications-drain"),
]
