"""Purge: delete expired sessions in batches (the spec's cleanup_expired), and the set-based row delete.

Rows are deleted with plain SQL ``DELETE`` statements through the connection's cursor: no ORM
collector, which would load every message into memory, and no private QuerySet API.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import models, transaction
from django.dispatch import Signal
from django.utils import timezone

from .. import events
from ..models import ConversationSession, Message, Reply, Turn
from .errors import SessionValidationError, storage_errors

# Sent after the commit of every delete of sessions (delete, purge, an expired one replaced), with
# ``keys``: the deleted sessions' keys. The reply service cancels their running replies on it.
sessions_deleted = Signal()


def db_key(key: uuid.UUID) -> Any:
    """A session key as raw SQL takes it (SQLite stores UUIDs as hex text, PostgreSQL as uuid)."""
    return ConversationSession._meta.pk.get_db_prep_value(key, transaction.get_connection())


def delete_where(model: type[models.Model], where: str, params: list[Any]) -> int:
    """``DELETE FROM <model's table> WHERE <where>`` in one statement; return how many rows went.

    ``where`` names columns (``Model._meta.get_field(...).column``) and uses ``%s`` placeholders.
    """
    connection = transaction.get_connection()
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE {where}", params)
        return cursor.rowcount


def _unlink_children(in_ids: str, params: list[Any]) -> None:
    connection = transaction.get_connection()
    table = connection.ops.quote_name(ConversationSession._meta.db_table)
    column = connection.ops.quote_name(ConversationSession._meta.get_field("parent").column)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = NULL WHERE {column} {in_ids}", params)


def delete_rows(keys: list[uuid.UUID]) -> tuple[int, int]:
    """Delete sessions (by key) with their replies, turns and messages, in four set-based statements.

    Returns (messages, sessions) deleted. After the commit, ``sessions_deleted`` is sent.
    """
    if not keys:
        return 0, 0
    params = [db_key(key) for key in keys]
    in_ids = "IN (" + ", ".join(["%s"] * len(keys)) + ")"
    for model in (Reply, Turn):
        delete_where(model, f"{model._meta.get_field('session').column} {in_ids}", params)
    messages = delete_where(Message, f"{Message._meta.get_field('session').column} {in_ids}", params)
    # Their branches stay, without a parent (the foreign key's SET_NULL, which a plain DELETE skips).
    _unlink_children(in_ids, params)
    sessions = delete_where(ConversationSession, f"{ConversationSession._meta.pk.column} {in_ids}", params)
    transaction.on_commit(partial(sessions_deleted.send, sender=ConversationSession, keys=list(keys)))
    return messages, sessions


@dataclass
class PurgeResult:
    sessions: int = 0
    messages: int = 0


@storage_errors
def purge_sessions(keys: Iterable[uuid.UUID], *, now: dt.datetime | None = None) -> PurgeResult:
    """Delete those of the given sessions that are expired at ``now``, with their messages and turns.

    Expiry is re-checked under the row locks, so a session touched since it was picked survives;
    one locked by a writer right now is in use, so it is skipped.
    """
    now = now or timezone.now()
    result = PurgeResult()
    with transaction.atomic():
        rows = list(
            ConversationSession.objects.select_for_update(skip_locked=True)
            .filter(pk__in=list(keys), expires_at__lte=now)
            .values_list("pk", "owner_id")
        )
        ids = [pk for pk, _ in rows]
        if ids:
            result.messages, result.sessions = delete_rows(ids)
            events.emit_many(ids, events.DELETED)
            for owner_id in {owner_id for _, owner_id in rows}:
                events.library_changed(owner_id)
    return result


@storage_errors
def count_expired(*, now: dt.datetime | None = None) -> PurgeResult:
    now = now or timezone.now()
    return PurgeResult(
        sessions=ConversationSession.objects.filter(expires_at__lte=now).count(),
        messages=Message.objects.filter(session__expires_at__lte=now).count(),
    )


@storage_errors
def expired_sessions(*, now: dt.datetime | None = None, limit: int = 20) -> list[ConversationSession]:
    """The first ``limit`` sessions expired at ``now``, soonest expired first, with their owners loaded
    (what a dry run names: owner and id)."""
    now = now or timezone.now()
    qs = ConversationSession.objects.filter(expires_at__lte=now).select_related("owner")
    return list(qs.order_by("expires_at", "pk")[:limit])


@storage_errors
def purge_expired(
    *,
    now: dt.datetime | None = None,
    batch_size: int = 1000,
    progress: Callable[[PurgeResult], None] | None = None,
) -> PurgeResult:
    """Delete every session expired at ``now``, with its messages and turns (the spec's cleanup_expired).

    Works in batches of ``batch_size`` sessions, walking the expires_at index, so memory stays flat.
    Each delete re-checks expiry under the row lock, so a session touched meanwhile survives; one
    locked by a writer right now is skipped (it is being used) and left for the next run.
    """
    if batch_size < 1:
        raise SessionValidationError("batch_size must be at least 1", field="batch_size")
    now = now or timezone.now()
    result = PurgeResult()
    after: tuple[dt.datetime, uuid.UUID] | None = None
    while True:
        candidates = ConversationSession.objects.filter(expires_at__lte=now)
        if after is not None:
            candidates = candidates.filter(expires_at__gte=after[0]).exclude(expires_at=after[0], pk__lte=after[1])
        batch = list(candidates.order_by("expires_at", "pk").values_list("expires_at", "pk")[:batch_size])
        if not batch:
            break
        after = batch[-1]
        done = purge_sessions([key for _, key in batch], now=now)
        result.sessions += done.sessions
        result.messages += done.messages
        if progress is not None:
            progress(result)
    return result
