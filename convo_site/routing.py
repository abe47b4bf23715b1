"""Websocket routes of the project (each app adds its own)."""

websocket_urlpatterns: list = []
