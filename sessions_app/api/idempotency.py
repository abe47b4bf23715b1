"""Idempotency-Key for appends: a retried request returns the first result instead of adding a
duplicate message.

The key's record is inserted in the same transaction as the message. The database's unique
constraint on (user, key) does the rest: a concurrent retry's insert waits for the first
transaction and then fails, and the retry reads the committed first result. A failed append
rolls its record back with it, so retrying a failure tries again. Keys are remembered for
settings.CONVO_API_IDEMPOTENCY_TTL_SECONDS.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import ApiIdempotencyKey

KEY_MAX_LENGTH = 255


class IdempotencyKeyInvalid(ValueError):
    pass


class IdempotencyKeyReused(Exception):
    """The key was used before for a different request (another session or another body; a session
    deleted and created again under the same id is another session)."""


def check_key(key: str) -> str:
    if not 1 <= len(key) <= KEY_MAX_LENGTH or not key.isascii() or not key.isprintable():
        raise IdempotencyKeyInvalid(f"Idempotency-Key must be 1 to {KEY_MAX_LENGTH} printable ASCII characters.")
    return key


def fingerprint(session_id: str, body: dict[str, Any]) -> str:
    text = json.dumps([session_id, body], sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _ttl() -> dt.timedelta:
    return dt.timedelta(seconds=settings.CONVO_API_IDEMPOTENCY_TTL_SECONDS)


def _replay(user: Any, key: str, session_key: uuid.UUID, fp: str, now: dt.datetime) -> dict[str, Any] | None:
    record = ApiIdempotencyKey.objects.filter(user=user, key=key).first()
    if record is None:
        return None
    if record.created_at <= now - _ttl():
        ApiIdempotencyKey.objects.filter(pk=record.pk).delete()
        return None
    if record.fingerprint != fp or record.session_key != session_key:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used for a different request; use a new key for a new message."
        )
    return record.response


def run_once(
    user: Any,
    key: str,
    session_key: uuid.UUID,
    session_id: str,
    body: dict[str, Any],
    action: Callable[[], dict[str, Any]],
    *,
    now: dt.datetime | None = None,
) -> tuple[dict[str, Any], bool]:
    """Run ``action`` (which returns the JSON result) once per (user, key); return (result, replayed).

    ``session_key`` is the session the request is for, ``session_id`` the caller's id for it."""
    now = now or timezone.now()
    fp = fingerprint(session_id, body)
    stored = _replay(user, key, session_key, fp, now)
    if stored is not None:
        return stored, True
    try:
        with transaction.atomic():
            record = ApiIdempotencyKey.objects.create(
                user=user, key=key, session_key=session_key, fingerprint=fp, created_at=now
            )
            result = action()
            record.response = result
            record.save(update_fields=["response"])
    except IntegrityError:
        # A concurrent request with the same key committed first: its result is ours.
        stored = _replay(user, key, session_key, fp, now)
        if stored is None:
            raise
        return stored, True
    ApiIdempotencyKey.objects.filter(user=user, created_at__lte=now - _ttl()).delete()
    return result, False
