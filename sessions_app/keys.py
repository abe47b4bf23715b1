"""Personal API keys: creation (the secret is shown once), lookup by hash, revocation. Used by the
settings page, the admin, the create_api_key command and the API's Bearer authentication.

A key is ``convo_`` followed by 43 URL-safe characters (256 random bits). With that much entropy a
plain SHA-256 of the secret is a safe thing to store and lets a request find its key in one
indexed lookup; a slow password hash would only add latency.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from django.utils import timezone

from .models import ApiKey

KEY_PREFIX = "convo_"
PREFIX_SHOWN = len(KEY_PREFIX) + 6  # what lists show to tell keys apart
NAME_MAX_LENGTH = 100
# last_used_at is written at most this often per key, so reads do not each cost a write.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create_api_key(user: Any, name: str, *, now: dt.datetime | None = None) -> tuple[ApiKey, str]:
    """Create a key for ``user``; return it with its secret, which is not stored and cannot be shown again."""
    name = (name or "").strip() or "API key"
    if len(name) > NAME_MAX_LENGTH:
        raise ValueError(f"The name must be at most {NAME_MAX_LENGTH} characters.")
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
