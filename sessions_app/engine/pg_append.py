"""The PostgreSQL append: one read and one conditional write statement, no lock held in between.

It applies the same rules as the locking path in ``messages`` (``bookkeeping.append_bookkeeping``
and ``bookkeeping.enforce_limits``, in memory, on what it read); only the reading and writing of
rows is written here, in SQL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from typing import Any

from django.db import transaction

from ..models import ConversationSession, Message
from .bookkeeping import append_bookkeeping, enforce_limits
from .errors import SessionAmbiguous, SessionExpired, SessionNotFound
from .sessions import ANY_OWNER, Owner, SessionRef, owner_pk
from .values import touch

# Optimistic appends tried before falling back to the row lock (a conflict means another writer of
# the same session committed in between; under heavy contention the lock queues writers fairly).
APPEND_TRIES = 2

# The oldest listed messages read with the session row, for enforce_limits. A stored session is never
# over its limit (every write enforces it), so one append puts it over by at most one, and
# enforce_limits needs at most excess + 2 = 3 of them (``new`` is the next when fewer are listed).
OLDEST_ROWS = 3


class _OverLimit(Exception):
    """The stored session is already over its limit: only the locking path reads enough rows for that."""


def append(
    connection: Any, new: Message, session_id: SessionRef, owner: Owner, now: dt.datetime
) -> ConversationSession | None:
    """Append ``new`` in one read and one write statement, trying APPEND_TRIES times.

    Returns the session's bookkeeping as written (an unsaved instance with the columns the append
    read: key, id, owner, title and the bookkeeping), or None when another writer got in between every time (or the session is in a state the
    locking path must handle): the caller appends under the row lock then. Raises SessionNotFound /
    SessionExpired.
    """
    for _ in range(APPEND_TRIES):
        # Outside a transaction the statement commits by itself; inside one, a savepoint keeps a
        # failure from breaking the caller's transaction, as the locking path's atomic() does.
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            try:
                session = _append_once(connection, new, session_id, owner, now)
                if session is not None:
                    return session
            except _OverLimit:
                return None
    return None


def _append_sql() -> dict[str, str]:
    s, m = (model._meta.db_table for model in (ConversationSession, Message))
    # The session's bookkeeping and the oldest listed messages that enforce_limits may look at, in one
    # round trip (one row per message read, or one row of NULLs after the session's columns).
    read = f"""
        SELECT s.last_seq, s.low_seq, s.head_seq, s.turn_count, s.total_tokens, s.max_messages,
               s.timeout_seconds, s.updated_at, s.expires_at, o.seq, o.role, o.tokens, s.key, s.sid,
               s.owner_id, s.title
        FROM {s} s LEFT JOIN LATERAL (
            SELECT seq, role, tokens FROM {m}
            WHERE session_id = s.key AND seq >= s.low_seq ORDER BY seq LIMIT {OLDEST_ROWS}
        ) o ON true
        WHERE {{where}} ORDER BY o.seq"""
    # The write happens only if the session row still holds what was read (every write changes
    # updated_at or one of these columns), so no other writer got in between; the UPDATE takes the row
    # lock, so a concurrent appender waits, re-checks and finds it changed.
    write = f"""
        WITH s AS (
            UPDATE {s} SET last_seq = %s, low_seq = %s, head_seq = %s::bigint, turn_count = %s, total_tokens = %s,
                           updated_at = %s, expires_at = %s::timestamptz,
                           title = CASE WHEN title = '' THEN %s::text ELSE title END
            WHERE key = %s AND last_seq = %s AND low_seq = %s AND head_seq IS NOT DISTINCT FROM %s::bigint
              AND turn_count = %s AND total_tokens = %s AND max_messages = %s
              AND timeout_seconds IS NOT DISTINCT FROM %s::integer AND updated_at = %s
            RETURNING key
        ), m AS (
            INSERT INTO {m} (session_id, seq, role, content, name, tool_call_id, metadata, created_at, tokens,
                             turn_number)
            SELECT s.key, %s::bigint, %s::text, %s::text, %s::text, %s::text, %s::jsonb, %s::timestamptz,
                   %s::integer, %s::integer FROM s
            RETURNING id
        )
        SELECT id FROM m"""
    return {"read": read, "write": write}


_APPEND_SQL: dict[str, str] = {}


_PREPARING_CURSOR: list[type] = []


def _preparing_cursor_class() -> type:
    """A psycopg cursor that binds parameters on the server and runs each statement as a prepared one
    (parsed and planned once per connection, not on every append); Django's own cursors bind on the
    client. Built on first use: the PostgreSQL backend is imported only where it runs."""
    if not _PREPARING_CURSOR:
        from django.db.backends.postgresql.base import ServerBindingCursor

        class PreparingCursor(ServerBindingCursor):
            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                # Django turns psycopg's preparing off on its connections (threshold None); on just
                # for this statement, with a threshold no count reaches, only prepare=True prepares.
                conn = self.connection
                saved, conn.prepare_threshold = conn.prepare_threshold, 2**31 - 1
                try:
                    return super().execute(query, params, prepare=True, **kwargs)
                finally:
                    conn.prepare_threshold = saved

            def _send_query_prepared(self, name: bytes, pgq: Any, **kwargs: Any) -> None:
                self._query = pgq  # what Django's query log reads (psycopg keeps it only when not prepared)
                super()._send_query_prepared(name, pgq, **kwargs)

        _PREPARING_CURSOR.append(PreparingCursor)
    return _PREPARING_CURSOR[0]


def _prepared_cursor(connection: Any) -> Any:
    """A cursor of ``connection`` that prepares its statements, wrapped as Django wraps its own (errors
    become Django's; statements are logged and pass through execute wrappers)."""
    connection.ensure_connection()
    raw = connection.connection
    with connection.wrap_database_errors:
        cursor = _preparing_cursor_class()(raw)
        # Timestamps load in the connection's time zone, as in Django's create_cursor().
        from django.db.backends.postgresql.base import TIMESTAMPTZ_OID, Format, register_tzloader

        if connection.timezone != raw.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT).timezone:
            register_tzloader(connection.timezone, cursor)
        return connection._prepare_cursor(cursor)


def _append_once(
    connection: Any, new: Message, session_id: SessionRef, owner: Owner, now: dt.datetime
) -> ConversationSession | None:
    """Read the session's bookkeeping and oldest listed messages, apply the rules in memory, then write
    the session row and the message (its turn_number is what opens or completes a turn) in one statement that does nothing if the session row
    changed since the read. Returns None in that case (the caller tries again), else the session."""
    if not _APPEND_SQL:
        _APPEND_SQL.update(_append_sql())
    sql = _APPEND_SQL
    where, params = ("s.key = %s", [session_id]) if isinstance(session_id, uuid.UUID) else ("s.sid = %s", [session_id])
    if owner is not ANY_OWNER:
        if owner is None:
            where += " AND s.owner_id IS NULL"
        else:
            where += " AND s.owner_id = %s"
            params.append(owner_pk(owner))
    with _prepared_cursor(connection) as cursor:  # one cursor for both statements: creating one costs
        cursor.execute(sql["read"].format(where=where), params)
        rows = cursor.fetchall()
        if not rows:
            raise SessionNotFound(str(session_id))
        if len({row[12] for row in rows}) > 1:
            raise SessionAmbiguous(str(session_id))  # an id for any owner, which several owners have
        last_seq, low_seq, head_seq, turn_count, total, max_messages, timeout, updated_at, expires_at = rows[0][:9]
        key, sid, owner_id, title = rows[0][12:16]
        session = ConversationSession(
            key=key,
            sid=sid,
            owner_id=owner_id,
            title=title,
            last_seq=last_seq,
            low_seq=low_seq,
            head_seq=head_seq,
            turn_count=turn_count,
            total_tokens=total,
            max_messages=max_messages,
            timeout_seconds=timeout,
            updated_at=updated_at,
            expires_at=expires_at,
        )
        if session.is_expired(now):
            raise SessionExpired(sid)
        if session.message_count > session.max_messages:
            raise _OverLimit  # cannot happen while every write enforces the limit; OLDEST_ROWS relies on it
        append_bookkeeping(session, new)
        # The oldest listed messages as they will be once ``new`` is in: the rows read, then ``new``
        # when they were all of them.
        oldest = [row[9:12] for row in rows if row[9] is not None]
        if len(oldest) < OLDEST_ROWS:
            oldest.append((new.seq, new.role, new.tokens))
        enforce_limits(session, oldest=oldest)
        touch(session, now)

        params = [
            session.last_seq, session.low_seq, session.head_seq, session.turn_count, session.total_tokens,
            session.updated_at, session.expires_at, session.title,
            key, last_seq, low_seq, head_seq, turn_count, total, max_messages, timeout, updated_at,
            new.seq, new.role.value, new.content, new.name, new.tool_call_id, json.dumps(new.metadata),
            new.created_at, new.tokens, new.turn_number,
        ]  # fmt: skip
        cursor.execute(sql["write"], params)
        row = cursor.fetchone()
    if row is None:
        return None
    new.session_id = key
    new.pk = row[0]
    new._state.adding = False
    new._state.db = connection.alias
    return session
