"""Websocket routes of the chat UI: one socket per open conversation page."""

from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path("ws/sessions/<str:session_id>/", consumers.SessionConsumer.as_asgi(), name="ws-session"),
]
