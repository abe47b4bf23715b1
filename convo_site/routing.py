"""Websocket routes of the project (each app adds its own)."""

from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import re_path

from sessions_app.routing import websocket_urlpatterns as sessions_websocket_urlpatterns


class NoSuchSocket(AsyncWebsocketConsumer):
    """Any other websocket path: the handshake is refused (403), rather than the router's error."""

    async def connect(self) -> None:
        await self.close()


websocket_urlpatterns: list = [*sessions_websocket_urlpatterns, re_path(r"", NoSuchSocket.as_asgi())]
