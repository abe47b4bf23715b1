"""Idempotency-Key for appends: a retried request returns the first result instead of adding a
duplicate message.

The key's record is inserted in the same transaction as the message. The database's unique
constraint on (user, key) does the rest: a concurrent retry's insert waits for the first
transaction and then fails, and the retry reads the committed first result. A failed append
rolls its record back with it, so retrying a failure tries again. Keys are remembered for
settings.CONVO_API_IDEMPOTENCY_TTL_SECONDS; expired ones are deleted by ``purge_expired_keys``, which
runs in every serving process's periodic sweep and in the purge_expired_sessions command, never on
the append's path (a failure after the commit must not turn a stored message into an error).

A database failure while looking a key up or replaying it is the engine's StorageError (HTTP 503
``storage_error``), like every other database failure of the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from ..engine import StorageError, storage_errors
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


@storage_errors
def _replay(user: Any, key: str, session_key: uuid.UUID, fp: str, now: dt.datetime) -> dict[str, Any] | None:
    record = ApiIdempotencyKey.objects.filter(user=user, key=key).first()
    if record is None:
        return None
    if record.created_at <= now - _ttl():
        # Expired but not purged yet: forgotten now, so the key can be used again (before the append).
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
        if stored is None:  # and then it was deleted (expired meanwhile): a retry starts afresh
            raise StorageError("The Idempotency-Key was in use by a concurrent request; retry.") from None
        return stored, True
    except DatabaseError as exc:  # the key's insert, its response, or the commit: nothing is known stored
        raise StorageError(str(exc).strip() or type(exc).__name__) from exc
    # Nothing after the commit: the message is stored, so the answer is its result.
    return result, False


@storage_errors
def expired_keys(*, now: dt.datetime | None = None) -> int:
    """How many Idempotency-Key records are older than CONVO_API_IDEMPOTENCY_TTL_SECONDS."""
    return ApiIdempotencyKey.objects.filter(created_at__lte=(now or timezone.now()) - _ttl()).count()


@storage_errors
def purge_expired_keys(*, now: dt.datetime | None = None, batch_size: int = 5000) -> int:
    """Delete Idempotency-Key records older than CONVO_API_IDEMPOTENCY_TTL_SECONDS, in batches (by the
    created_at index); return how many went."""
    cutoff = (now or timezone.now()) - _ttl()
    deleted = 0
    while True:
        ids = list(ApiIdempotencyKey.objects.filter(created_at__lte=cutoff).values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        deleted += ApiIdempotencyKey.objects.filter(pk__in=ids).delete()[0]
