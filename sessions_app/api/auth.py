"""The two ways a request to the JSON API authenticates: a personal API key
(``Authorization: Bearer <key>``) or a logged-in browser session (with CSRF on unsafe methods).

A database failure while looking the key (or the browser session's user) up is the engine's
StorageError: 503 ``storage_error``, never a 500 nor a 401 that would tell the client its key is bad."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest
from ninja.errors import AuthenticationError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from .. import keys, throttle
from ..engine import StorageError, storage_errors
from .errors import CsrfFailed, RateLimited


def count_request(who: str) -> None:
    """Count one request of a key (or browser user) against CONVO_API_RATE_LIMIT a minute; past
    it, RateLimited (429 with Retry-After). The counters are shared by every process with Redis."""
    limit = settings.CONVO_API_RATE_LIMIT
    retry_after = throttle.hit("api", who, limit=limit, window=60)
    if retry_after is not None:
        raise RateLimited(
            f"Rate limit exceeded: at most {limit} requests a minute with this key; retry in {retry_after} s.",
            {"Retry-After": str(retry_after)},
        )


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
        user = storage_errors(keys.user_for_key)(token)
        if user is not None:
            count_request("key:" + keys.hash_key(token))
        return user


class BrowserSessionAuth(APIKeyCookie):
    """A logged-in browser session, with Django's CSRF check on unsafe methods. A request with no
    logged-in session is simply not authenticated (401), not refused for CSRF."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        if not _is_authenticated(request):
            return None
        if check_csrf(request):
            raise CsrfFailed("CSRF check failed: send the X-CSRFToken header with the csrftoken cookie's value.")
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any | None:
        if not _is_authenticated(request):
            return None
        count_request(f"user:{request.user.pk}")
        return request.user


def _is_authenticated(request: HttpRequest) -> bool:
    """Whether the browser session is logged in (loading it reads the session and user rows)."""
    try:
        return request.user.is_authenticated
    except DatabaseError as exc:
        raise StorageError(str(exc).strip() or type(exc).__name__) from exc
