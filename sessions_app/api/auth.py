"""The two ways a request to the JSON API authenticates: a personal API key
(``Authorization: Bearer <key>``) or a logged-in browser session (with CSRF on unsafe methods)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.errors import AuthenticationError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from .. import keys
from .errors import CsrfFailed


class BearerKeyAuth(HttpBearer):
    """``Authorization: Bearer <key>``. A Bearer header with a bad key is refused outright (401),
    never passed on to the session check; any other request goes on to the next method."""

    def __call__(self, request: HttpRequest) -> Any | None:
        value = request.headers.get("Authorization")
        if not value:
            return None
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        user = self.authenticate(request, token.strip())
        if user is None:
            raise AuthenticationError(message="Invalid or revoked API key.")
        return user

    def authenticate(self, request: HttpRequest, token: str) -> Any | None:
        return keys.user_for_key(token)


class BrowserSessionAuth(APIKeyCookie):
    """A logged-in browser session, with Django's CSRF check on unsafe methods. A request with no
    logged-in session is simply not authenticated (401), not refused for CSRF."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None
        if check_csrf(request):
            raise CsrfFailed("CSRF check failed: send the X-CSRFToken header with the csrftoken cookie's value.")
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any | None:
        return request.user if request.user.is_authenticated else None
