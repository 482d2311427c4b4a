"""Routes of the browser chat page, mounted at /ui/ by the root urlconf."""

from django.urls import path

from conversations import ui_views

urlpatterns = [
    path("", ui_views.chat_page, name="ui-chat"),
    path("assets/<str:name>", ui_views.asset, name="ui-asset"),
]
