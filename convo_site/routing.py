"""Websocket routes of the project (each app adds its own)."""

from sessions_app.routing import websocket_urlpatterns as sessions_websocket_urlpatterns

websocket_urlpatterns: list = [*sessions_websocket_urlpatterns]
