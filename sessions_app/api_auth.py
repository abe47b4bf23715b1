"""Personal API keys: creation (the secret is shown once), lookup by hash, revocation, and the
two ways a request to the JSON API authenticates (a Bearer key, or a logged-in browser session).

A key is ``convo_`` followed by 43 URL-safe characters (256 random bits). With that much entropy a
plain SHA-256 of the secret is a safe thing to store and lets a request find its key in one
indexed lookup; a slow password hash would only add latency.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja.errors import AuthenticationError, HttpError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from .models import ApiKey

KEY_PREFIX = "convo_"
PREFIX_SHOWN = len(KEY_PREFIX) + 6  # what lists show to tell keys apart
# last_used_at is written at most this often per key, so reads do not each cost a write.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_api_key(user: Any, name: str, *, now: dt.datetime | None = None) -> tuple[ApiKey, str]:
    """Create a key for ``user``; return it with its secret, which is not stored and cannot be shown again."""
    name = (name or "").strip() or "API key"
    if len(name) > 100:
        raise ValueError("The name must be at most 100 characters.")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        user=user, name=name, prefix=secret[:PREFIX_SHOWN], key_hash=hash_key(secret), created_at=now or timezone.now()
    )
    return key, secret


def revoke_api_key(key: ApiKey, *, now: dt.datetime | None = None) -> bool:
    """Revoke a key (idempotent); return whether it was active until now."""
    updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now or timezone.now())
    key.refresh_from_db(fields=["revoked_at"])
    return bool(updated)


def user_for_key(secret: str, *, now: dt.datetime | None = None) -> Any | None:
    """The active user of an active key, or None; records the key's last use."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    key = ApiKey.objects.select_related("user").filter(key_hash=hash_key(secret), revoked_at__isnull=True).first()
    if key is None or not key.user.is_active:
        return None
    now = now or timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key.user


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
        return user_for_key(token)


class BrowserSessionAuth(APIKeyCookie):
    """A logged-in browser session, with Django's CSRF check on unsafe methods. A request with no
    logged-in session is simply not authenticated (401), not refused for CSRF."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None
        if check_csrf(request):
            raise HttpError(403, "CSRF check failed: send the X-CSRFToken header with the csrftoken cookie's value.")
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any | None:
        return request.user if request.user.is_authenticated else None
