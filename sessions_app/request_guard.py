"""Refuse requests carrying a NUL character where Convo never accepts one, before any view, session
or database work: PostgreSQL cannot store or even compare text containing NUL, so such a value would
end in a database error (a 500) wherever it reached a query.

A NUL in the URL path names nothing: 404 (except under /api/, whose endpoints check their own path
parameters and answer with their documented errors: an id is not found, a key is invalid). In the
query string or a cookie: 400. Under /api/ the answer has the API's error shape,
``{"error": ..., "detail": ...}``. Form and JSON bodies are checked where they are parsed: the forms
and the engine refuse NUL with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse

API_PREFIX = "/api/"


class NulRequestMiddleware:
    # Sync and async: under ASGI it runs on the event loop (a sync middleware would hold a thread that
    # waits on the loop for the rest of the request, which blocks a server's shutdown).
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        refused = self._check(request)
        if iscoroutinefunction(self):
            return self._acall(request, refused)
        return refused or self.get_response(request)

    async def _acall(self, request: HttpRequest, refused: HttpResponse | None) -> HttpResponse:
        return refused or await self.get_response(request)

    def _check(self, request: HttpRequest) -> HttpResponse | None:
        api = request.path.startswith(API_PREFIX)
        if not api and "\x00" in request.path:
            return self._refuse(request, 404, "not_found", "No such page: the URL contains a NUL character.")
        query = request.META.get("QUERY_STRING", "")
        if b"\x00" in unquote_to_bytes(query.replace("+", " ")):
            return self._refuse(request, 400, "bad_request", "The query string contains a NUL character.")
        if "\x00" in request.META.get("HTTP_COOKIE", ""):
            return self._refuse(request, 400, "bad_request", "A cookie contains a NUL character.")
        return None

    @staticmethod
    def _refuse(request: HttpRequest, status: int, code: str, detail: str) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            return JsonResponse({"error": code, "detail": detail}, status=status)
        return HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")


class NulScopeGuard:
    """The websocket side of NulRequestMiddleware (ASGI): a handshake whose path, query string or
    cookie carries a NUL is refused before the session middleware looks the cookie up."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and _has_nul(scope):
            from channels.security.websocket import WebsocketDenier

            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


def _has_nul(scope) -> bool:
    if "\x00" in scope.get("path", "") or b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
        return True
    return any(name == b"cookie" and b"\x00" in value for name, value in scope.get("headers", ()))
