"""The session engine: every rule of the specification (conversation_session.rs), on the database.

This module is the one home for the rules: the token estimate, turn bookkeeping, message limits, the
context window, state, expiry, clear, and the manager's create / get_or_create / update / delete /
list / cleanup. Views, the API, websocket consumers, the admin and management commands call it and
decide nothing themselves.

Writes run in a transaction holding the session's row lock (SELECT ... FOR UPDATE), which is what
keeps sequence and turn numbers gap-free and unique when several processes append at once. Each
write queues a change notification that is sent only after the commit (``events``).

Times: functions that depend on the clock take ``now=`` (default: the current time), so callers and
tests can pass it explicitly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from . import events
from .models import ConversationSession, Message, Reply, Role, Turn

# ---------------------------------------------------------------------------------------------
# Errors: the spec's SessionError kinds, plus the two a database-backed, multi-user store needs.


class SessionError(Exception):
    """Base of every error the engine raises on purpose."""


class SessionNotFound(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session not found: {session_id}")
        self.session_id = session_id


class SessionExpired(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session expired: {session_id}")
        self.session_id = session_id


class StorageError(SessionError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"Storage error: {detail}")


class SerializationError(SessionError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"Serialization error: {detail}")


class SessionValidationError(SessionError, ValueError):
    """Input the engine refuses (bad id, bad config value, text the database cannot store)."""

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class SessionAlreadyExists(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session already exists: {session_id}")
        self.session_id = session_id


F = TypeVar("F", bound=Callable[..., Any])


def storage_errors(func: F) -> F:
    """Turn database failures into the spec's StorageError (deliberate errors pass through)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SessionError:
            raise
        except DatabaseError as exc:
            raise StorageError(str(exc).strip() or exc.__class__.__name__) from exc

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Values: config, ids, text, tokens.

MAX_INT = 2_147_483_647  # the database's integer columns
SESSION_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class SessionConfig:
    """The spec's SessionConfig. ``timeout_seconds=None`` means the session never expires."""

    max_messages: int = 100
    max_tokens: int = 8192
    timeout_seconds: int | None = 3600
    persist_system_prompt: bool = True

    @classmethod
    def default(cls) -> SessionConfig:
        """The project-wide defaults (settings CONVO_MAX_MESSAGES, ... CONVO_PERSIST_SYSTEM_PROMPT)."""
        return cls(
            max_messages=settings.CONVO_MAX_MESSAGES,
            max_tokens=settings.CONVO_MAX_TOKENS,
            timeout_seconds=settings.CONVO_TIMEOUT_SECONDS,
            persist_system_prompt=settings.CONVO_PERSIST_SYSTEM_PROMPT,
        )

    @classmethod
    def of(cls, session: ConversationSession) -> SessionConfig:
        return cls(
            max_messages=session.max_messages,
            max_tokens=session.max_tokens,
            timeout_seconds=session.timeout_seconds,
            persist_system_prompt=session.persist_system_prompt,
        )

    def validated(self) -> SessionConfig:
        _check_int("max_messages", self.max_messages, minimum=1)
        _check_int("max_tokens", self.max_tokens, minimum=1)
        if self.timeout_seconds is not None:
            _check_int("timeout_seconds", self.timeout_seconds, minimum=0)
        if not isinstance(self.persist_system_prompt, bool):
            raise SessionValidationError("persist_system_prompt must be true or false", field="persist_system_prompt")
        return self


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SessionValidationError(f"{name} must be a whole number", field=name)
    if not minimum <= value <= MAX_INT:
        raise SessionValidationError(f"{name} must be between {minimum} and {MAX_INT}", field=name)


def estimate_tokens(content: str) -> int:
    """The spec's ``estimated_tokens``: ``content.len() / 4 + 1``, where Rust's len() counts UTF-8 bytes."""
    return len(content.encode("utf-8")) // 4 + 1


def validate_session_id(session_id: Any) -> str:
    if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
        raise SessionValidationError(
            "A session id is 1 to 128 characters: letters, digits, '-', '_', '.' and ':'.", field="id"
        )
    if set(session_id) == {"."}:
        # "." and ".." are URL dot-segments: clients rewrite them away, so the session could never be addressed.
        raise SessionValidationError("A session id cannot be only dots.", field="id")
    return session_id


def new_session_id() -> str:
    return str(uuid.uuid4())


def _check_text(name: str, value: Any, *, allow_none: bool = False, max_length: int | None = None) -> str | None:
    """Refuse what the database cannot store faithfully: non-strings, NUL characters, lone surrogates."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise SessionValidationError(f"{name} must be a string", field=name)
    if "\x00" in value:
        raise SessionValidationError(f"{name} must not contain NUL characters", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SessionValidationError(f"{name} is not valid Unicode text (lone surrogate)", field=name) from None
    if max_length is not None and len(value) > max_length:
        raise SessionValidationError(f"{name} must be at most {max_length} characters", field=name)
    return value


def _check_string_map(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SessionValidationError(f"{name} must be an object of strings", field=name)
    for key, item in value.items():
        _check_text(f"{name} key", key)
        _check_text(f"{name}[{key!r}]", item)
    return dict(value)


def _json_value(value: Any) -> Any:
    """The value as it will read back from the database, or the spec's SerializationError."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # lone surrogates cannot be stored
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(str(exc)) from None
    if "\\u0000" in text or "\x00" in text:
        raise SerializationError("JSON text must not contain NUL characters")
    return json.loads(text)


# ---------------------------------------------------------------------------------------------
# Message builders (the spec's ChatMessage::user(...).with_name(...).with_metadata(...)).


@dataclass
class ChatMessage:
    """A message not yet appended to a session."""

    role: str
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def system(cls, content: str) -> ChatMessage:
        return cls(Role.SYSTEM, content)

    @classmethod
    def user(cls, content: str) -> ChatMessage:
        return cls(Role.USER, content)

    @classmethod
    def assistant(cls, content: str) -> ChatMessage:
        return cls(Role.ASSISTANT, content)

    @classmethod
    def tool(cls, content: str, tool_call_id: str) -> ChatMessage:
        return cls(Role.TOOL, content, tool_call_id=tool_call_id)

    def with_name(self, name: str) -> ChatMessage:
        return replace(self, name=name)

    def with_metadata(self, key: str, value: str) -> ChatMessage:
        return replace(self, metadata={**self.metadata, key: value})

    def estimated_tokens(self) -> int:
        return estimate_tokens(self.content)


# ---------------------------------------------------------------------------------------------
# Time.


def expiry_time(updated_at: dt.datetime, timeout_seconds: int | None) -> dt.datetime | None:
    """When a session touched at ``updated_at`` becomes expired.

    The spec counts whole seconds: expired when ``now_s - updated_s > timeout`` with both truncated
    to seconds, i.e. from the second ``updated_s + timeout + 1`` on. That instant is stored.
    """
    if timeout_seconds is None:
        return None
    return updated_at.replace(microsecond=0) + dt.timedelta(seconds=timeout_seconds + 1)


def is_expired(session: ConversationSession, now: dt.datetime | None = None) -> bool:
    return session.is_expired(now or timezone.now())


def age(session: ConversationSession, now: dt.datetime | None = None) -> dt.timedelta:
    """The spec's age(): whole seconds since the session was created."""
    now = now or timezone.now()
    return dt.timedelta(seconds=int(now.timestamp()) - int(session.created_at.timestamp()))


def _touch(session: ConversationSession, now: dt.datetime) -> None:
    session.updated_at = now
    session.expires_at = expiry_time(now, session.timeout_seconds)


# ---------------------------------------------------------------------------------------------
# Owner scoping. ANY_OWNER (the default) is for operators and scripts; pass a user (or None for
# sessions without an owner) and a session owned by someone else is reported as not found.


class _AnyOwner:
    def __repr__(self) -> str:
        return "ANY_OWNER"


ANY_OWNER: Any = _AnyOwner()


def _owner_pk(owner: Any) -> Any:
    return getattr(owner, "pk", owner)


def _sessions(owner: Any = ANY_OWNER):
    qs = ConversationSession.objects.all()
    if owner is not ANY_OWNER:
        qs = qs.filter(owner=_owner_pk(owner)) if owner is not None else qs.filter(owner__isnull=True)
    return qs


def lock_session(session_id: str, owner: Any, now: dt.datetime, *, allow_expired: bool = False) -> ConversationSession:
    """Load and lock a session for a write (SELECT ... FOR UPDATE); call inside atomic()."""
    session = _sessions(owner).select_for_update().filter(pk=session_id).first()
    if session is None:
        raise SessionNotFound(session_id)
    if not allow_expired and session.is_expired(now):
        raise SessionExpired(session_id)
    return session


_BOOKKEEPING = ["last_seq", "low_seq", "head_seq", "turn_count", "total_tokens", "updated_at", "expires_at"]


# ---------------------------------------------------------------------------------------------
# The manager: create, get, get_or_create, update, delete, list, cleanup.


@storage_errors
def session_create(
    session_id: str | None = None,
    *,
    owner: Any = None,
    system_prompt: str | None = None,
    metadata: dict[str, str] | None = None,
    config: SessionConfig | None = None,
    now: dt.datetime | None = None,
) -> ConversationSession:
    """Create a session (the spec's ``create`` + ``with_*`` builders); raise SessionAlreadyExists if the id is taken."""
    session_id = new_session_id() if session_id is None else validate_session_id(session_id)
    system_prompt = _check_text("system_prompt", system_prompt, allow_none=True)
    metadata = _check_string_map("metadata", metadata)
    config = (config or SessionConfig.default()).validated()
    now = now or timezone.now()
    try:
        with transaction.atomic():
            if ConversationSession.objects.filter(pk=session_id).exists():
                raise SessionAlreadyExists(session_id)
            return _insert_session(session_id, owner, system_prompt, metadata, config, now)
    except IntegrityError:
        raise SessionAlreadyExists(session_id) from None


def _insert_session(
    session_id: str,
    owner: Any,
    system_prompt: str | None,
    metadata: dict[str, str],
    config: SessionConfig,
    now: dt.datetime,
) -> ConversationSession:
    session = ConversationSession(
        id=session_id,
        owner_id=_owner_pk(owner),
        system_prompt=system_prompt,
        metadata=metadata,
        max_messages=config.max_messages,
        max_tokens=config.max_tokens,
        timeout_seconds=config.timeout_seconds,
        persist_system_prompt=config.persist_system_prompt,
        created_at=now,
    )
    _touch(session, now)
    session.save(force_insert=True)
    if system_prompt is not None and config.persist_system_prompt:
        # with_system_prompt: the prompt becomes the first message, pinned at the front of the list.
        tokens = estimate_tokens(system_prompt)
        Message.objects.create(
            session=session, seq=1, role=Role.SYSTEM, content=system_prompt, created_at=now, tokens=tokens
        )
        session.last_seq, session.head_seq, session.low_seq, session.total_tokens = 1, 1, 2, tokens
        session.save(update_fields=_BOOKKEEPING)
    return session


@storage_errors
def session_get(session_id: str, *, owner: Any = ANY_OWNER) -> ConversationSession:
    """Load a session, expired or not (the spec's store.load); raise SessionNotFound."""
    if not isinstance(session_id, str):
        raise SessionNotFound(str(session_id))
    session = _sessions(owner).filter(pk=session_id).first()
    if session is None:
        raise SessionNotFound(session_id)
    return session


@storage_errors
def session_get_live(session_id: str, *, owner: Any = ANY_OWNER, now: dt.datetime | None = None) -> ConversationSession:
    """Load a session that has not expired; raise SessionNotFound or SessionExpired."""
    session = session_get(session_id, owner=owner)
    if session.is_expired(now or timezone.now()):
        raise SessionExpired(session_id)
    return session


@storage_errors
def session_get_or_create(
    session_id: str,
    *,
    owner: Any = ANY_OWNER,
    system_prompt: str | None = None,
    metadata: dict[str, str] | None = None,
    config: SessionConfig | None = None,
    now: dt.datetime | None = None,
) -> tuple[ConversationSession, bool]:
    """The spec's get_or_create: the live session, or a new one (replacing an expired one under the same id).

    Returns ``(session, created)``. The creation arguments apply only to a newly created session. With
    ``owner`` given, a session with that id owned by someone else is reported as not found; new sessions
    belong to ``owner`` (none when it is ANY_OWNER).
    """
    validate_session_id(session_id)
    system_prompt = _check_text("system_prompt", system_prompt, allow_none=True)
    metadata = _check_string_map("metadata", metadata)
    config = (config or SessionConfig.default()).validated()
    now = now or timezone.now()
    new_owner = None if owner is ANY_OWNER else owner
    for attempt in range(2):
        try:
            with transaction.atomic():
                existing = ConversationSession.objects.select_for_update().filter(pk=session_id).first()
                if existing is not None:
                    if owner is not ANY_OWNER and existing.owner_id != _owner_pk(owner):
                        raise SessionNotFound(session_id)
                    if not existing.is_expired(now):
                        return existing, False
                    _delete_rows([session_id])
                    events.emit(session_id, events.DELETED)
                session = _insert_session(session_id, new_owner, system_prompt, metadata, config, now)
                events.emit(session_id, events.CONFIG)
                return session, True
        except IntegrityError:
            # Another process created it between our look and our insert: look again.
            if attempt:
                raise
    raise AssertionError("unreachable")


_UNSET: Any = object()


@storage_errors
def session_update(
    session_id: str,
    *,
    owner: Any = ANY_OWNER,
    system_prompt: str | None = _UNSET,
    config: SessionConfig | None = None,
    metadata: dict[str, str] | None = None,
    allow_expired: bool = False,
    now: dt.datetime | None = None,
) -> ConversationSession:
    """Edit a session's system prompt, config or metadata (the spec's manager.update).

    A new system prompt replaces the text of the pinned system message when the session has one.
    A lower max_messages applies at once; a new timeout moves the expiry time.
    """
    if system_prompt is not _UNSET:
        system_prompt = _check_text("system_prompt", system_prompt, allow_none=True)
    if metadata is not None:
        metadata = _check_string_map("metadata", metadata)
    if config is not None:
        config.validated()
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now, allow_expired=allow_expired)
        if system_prompt is not _UNSET:
            session.system_prompt = system_prompt
            if session.head_seq is not None and system_prompt is not None:
                head = Message.objects.get(session=session, seq=session.head_seq)
                tokens = estimate_tokens(system_prompt)
                session.total_tokens += tokens - head.tokens
                head.content, head.tokens = system_prompt, tokens
                head.save(update_fields=["content", "tokens"])
        if metadata is not None:
            session.metadata = metadata
        if config is not None:
            session.max_messages = config.max_messages
            session.max_tokens = config.max_tokens
            session.timeout_seconds = config.timeout_seconds
            session.persist_system_prompt = config.persist_system_prompt
            _enforce_limits(session)
        _touch(session, now)
        session.save()
        events.emit(session_id, events.CONFIG)
    return session


@storage_errors
def session_delete(session_id: str, *, owner: Any = ANY_OWNER) -> None:
    """Delete a session with its messages and turns; raise SessionNotFound."""
    with transaction.atomic():
        if not _sessions(owner).select_for_update().filter(pk=session_id).exists():
            raise SessionNotFound(session_id)
        _delete_rows([session_id])
        events.emit(session_id, events.DELETED)


def _delete_rows(session_ids: list[str]) -> tuple[int, int]:
    """Delete sessions with their turns and messages, in three set-based statements.

    No ORM collector: it would load every message into memory. Returns (messages, sessions) deleted.
    """
    db = transaction.get_connection().alias
    Reply.objects.filter(session_id__in=session_ids)._raw_delete(db)
    Turn.objects.filter(session_id__in=session_ids)._raw_delete(db)
    messages = Message.objects.filter(session_id__in=session_ids)._raw_delete(db)
    sessions = ConversationSession.objects.filter(pk__in=session_ids)._raw_delete(db)
    return messages, sessions


@storage_errors
def session_list() -> list[str]:
    """Every session id (the spec's manager.list)."""
    return list(ConversationSession.objects.order_by("id").values_list("id", flat=True))


@storage_errors
def session_list_for_user(owner: Any) -> list[str]:
    """The ids of one owner's sessions, most recent activity first (the spec's list_for_user)."""
    return list(_sessions(owner).order_by("-updated_at", "id").values_list("id", flat=True))


@storage_errors
def sessions_page_for_user(owner: Any, *, offset: int = 0, limit: int = 50) -> list[ConversationSession]:
    """A page of one owner's sessions, in session_list_for_user's order (most recent activity first)."""
    return list(_sessions(owner).order_by("-updated_at", "id")[offset : offset + limit])


@storage_errors
def session_count_for_user(owner: Any) -> int:
    """How many sessions one owner has, expired or not."""
    return _sessions(owner).count()


# ---------------------------------------------------------------------------------------------
# Appending messages: turn bookkeeping and limits (the spec's add_message_obj).


@storage_errors
def message_append(
    session_id: str,
    role: str,
    content: str,
    *,
    name: str | None = None,
    tool_call_id: str | None = None,
    metadata: dict[str, str] | None = None,
    owner: Any = ANY_OWNER,
    now: dt.datetime | None = None,
) -> Message:
    """Append a message to a live session and return it, with its ``seq`` and ``turn_number``.

    A user message opens turn n+1; a tool message attaches to the last turn; an assistant message
    completes the last turn (replacing an earlier response, which stays in the list); a system
    message opens nothing; with no turn yet, assistant and tool messages belong to none. Then the
    oldest messages after a pinned system message leave the list past max_messages.

    On PostgreSQL the append is one read and one conditional write statement (see
    ``_append_in_one_statement``); elsewhere, or when another writer got in between, it runs under the
    session's row lock.
    """
    try:
        role = Role(role)
    except ValueError:
        raise SessionValidationError(f"role must be one of: {', '.join(Role.values)}", field="role") from None
    content = _check_text("content", content)
    name = _check_text("name", name, allow_none=True, max_length=256)
    tool_call_id = _check_text("tool_call_id", tool_call_id, allow_none=True, max_length=256)
    metadata = _check_string_map("metadata", metadata)
    tokens = estimate_tokens(content)
    now = now or timezone.now()
    new = Message(
        session_id=session_id,
        role=role,
        content=content,
        name=name,
        tool_call_id=tool_call_id,
        metadata=metadata,
        created_at=now,
        tokens=tokens,
    )

    connection = transaction.get_connection()
    # (A non-string id goes the ORM's way, which compares it as text.)
    if connection.vendor == "postgresql" and isinstance(session_id, str):
        for _ in range(_APPEND_TRIES):
            # Outside a transaction the statement commits by itself; inside one, a savepoint keeps a
            # failure from breaking the caller's transaction, as the locking path's atomic() does.
            with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
                if _append_in_one_statement(connection, new, owner, now):
                    events.emit(session_id, events.MESSAGE, seq=new.seq, turn=new.turn_number)
                    return new

    with transaction.atomic():
        session = lock_session(session_id, owner, now)
        _append_bookkeeping(session, new)
        new.session = session
        new.save(force_insert=True)
        if role == Role.USER:
            Turn.objects.create(session=session, number=new.turn_number, user_message=new, started_at=now)
        elif role == Role.ASSISTANT and new.turn_number is not None:
            Turn.objects.filter(session=session, number=new.turn_number).update(
                assistant_response=new, completed_at=now
            )
        _enforce_limits(session)
        _touch(session, now)
        session.save(update_fields=_BOOKKEEPING)
        events.emit(session_id, events.MESSAGE, seq=new.seq, turn=new.turn_number)
    return new


# Optimistic appends tried before falling back to the row lock (a conflict means another writer of
# the same session committed in between; under heavy contention the lock queues writers fairly).
_APPEND_TRIES = 2


def _append_bookkeeping(session: ConversationSession, new: Message) -> None:
    """Give ``new`` its sequence and turn numbers and count it in the session's bookkeeping (in memory)."""
    was_empty = session.message_count == 0
    new.seq = session.last_seq + 1
    if new.role == Role.USER:
        new.turn_number = session.turn_count + 1
        session.turn_count = new.turn_number
    elif new.role in (Role.ASSISTANT, Role.TOOL) and session.turn_count:
        new.turn_number = session.turn_count
    else:
        new.turn_number = None
    session.last_seq = new.seq
    session.total_tokens += new.tokens
    if was_empty and new.role == Role.SYSTEM:
        # The first message of the list is a system message: it is pinned from now on.
        session.head_seq, session.low_seq = new.seq, new.seq + 1


def _append_sql() -> dict[str, str]:
    s, m, t = (model._meta.db_table for model in (ConversationSession, Message, Turn))
    # The session's bookkeeping and, when the new message will push the list past max_messages, the
    # oldest listed messages that _enforce_limits looks at (excess + 2 of them), in one round trip.
    count = "(GREATEST(s.last_seq - s.low_seq + 1, 0) + (s.head_seq IS NOT NULL)::int + 1 - s.max_messages)"
    read = f"""
        SELECT s.last_seq, s.low_seq, s.head_seq, s.turn_count, s.total_tokens, s.max_messages,
               s.timeout_seconds, s.updated_at, s.expires_at, o.seq, o.role, o.tokens
        FROM {s} s LEFT JOIN LATERAL (
            SELECT seq, role, tokens FROM {m}
            WHERE session_id = s.id AND seq >= s.low_seq ORDER BY seq
            LIMIT CASE WHEN {count} > 0 THEN {count} + 2 ELSE 0 END
        ) o ON true
        WHERE s.id = %s{{owner}} ORDER BY o.seq"""
    # The write happens only if the session row still holds what was read (every write changes
    # updated_at or one of these columns), so no other writer got in between; the UPDATE takes the row
    # lock, so a concurrent appender waits, re-checks and finds it changed.
    write = f"""
        WITH s AS (
            UPDATE {s} SET last_seq = %s, low_seq = %s, head_seq = %s, turn_count = %s, total_tokens = %s,
                           updated_at = %s, expires_at = %s
            WHERE id = %s AND last_seq = %s AND low_seq = %s AND head_seq IS NOT DISTINCT FROM %s
              AND turn_count = %s AND total_tokens = %s AND max_messages = %s
              AND timeout_seconds IS NOT DISTINCT FROM %s AND updated_at = %s
            RETURNING id
        ), m AS (
            INSERT INTO {m} (session_id, seq, role, content, name, tool_call_id, metadata, created_at, tokens,
                             turn_number)
            SELECT s.id, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s FROM s
            RETURNING id
        ){{turn}}
        SELECT id FROM m"""
    open_turn = f""", t AS (
            INSERT INTO {t} (session_id, number, user_message_id, assistant_response_id, started_at, completed_at,
                             metadata)
            SELECT %s, %s, m.id, NULL, %s, NULL, '{{}}'::jsonb FROM m
        )"""
    complete_turn = f""", t AS (
            UPDATE {t} SET assistant_response_id = m.id, completed_at = %s FROM m
            WHERE {t}.session_id = %s AND {t}.number = %s
        )"""
    return {"read": read, "write": write, "open_turn": open_turn, "complete_turn": complete_turn}


_APPEND_SQL: dict[str, str] = {}


def _append_in_one_statement(connection: Any, new: Message, owner: Any, now: dt.datetime) -> bool:
    """Append ``new`` with one read and one write statement, without holding a lock in between.

    Reads the session's bookkeeping (and the oldest listed messages when the list will overflow),
    applies the same rules as the locking path in memory, then writes the session row, the message
    and its turn in one statement that does nothing if the session row changed since the read.
    Returns False in that case (the caller tries again); raises SessionNotFound / SessionExpired.
    """
    if not _APPEND_SQL:
        _APPEND_SQL.update(_append_sql())
    sql = _APPEND_SQL
    session_id = new.session_id
    owner_sql, params = "", [session_id]
    if owner is not ANY_OWNER:
        if owner is None:
            owner_sql = " AND s.owner_id IS NULL"
        else:
            owner_sql, params = " AND s.owner_id = %s", [session_id, _owner_pk(owner)]
    with connection.cursor() as cursor:  # one cursor for both statements: creating one costs
        cursor.execute(sql["read"].format(owner=owner_sql), params)
        rows = cursor.fetchall()
        if not rows:
            raise SessionNotFound(session_id)
        last_seq, low_seq, head_seq, turn_count, total, max_messages, timeout, updated_at, expires_at = rows[0][:9]
        session = ConversationSession(
            id=session_id,
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
            raise SessionExpired(session_id)
        _append_bookkeeping(session, new)
        # The oldest listed messages as they will be once ``new`` is in: the rows read, then ``new``.
        oldest = [row[9:] for row in rows if row[9] is not None]
        oldest.append((new.seq, new.role, new.tokens))
        _enforce_limits(session, oldest=oldest)
        _touch(session, now)

        params = [
            session.last_seq, session.low_seq, session.head_seq, session.turn_count, session.total_tokens,
            session.updated_at, session.expires_at,
            session_id, last_seq, low_seq, head_seq, turn_count, total, max_messages, timeout, updated_at,
            new.seq, new.role.value, new.content, new.name, new.tool_call_id, json.dumps(new.metadata),
            new.created_at, new.tokens, new.turn_number,
        ]  # fmt: skip
        if new.role == Role.USER:
            turn_sql = sql["open_turn"]
            params += [session_id, new.turn_number, now]
        elif new.role == Role.ASSISTANT and new.turn_number is not None:
            turn_sql = sql["complete_turn"]
            params += [now, session_id, new.turn_number]
        else:
            turn_sql = ""
        cursor.execute(sql["write"].format(turn=turn_sql), params)
        row = cursor.fetchone()
    if row is None:
        return False
    new.pk = row[0]
    new._state.adding = False
    new._state.db = connection.alias
    return True


def message_append_obj(session_id: str, message: ChatMessage, **kwargs: Any) -> Message:
    """Append a built message (the spec's add_message_obj)."""
    return message_append(
        session_id,
        message.role,
        message.content,
        name=message.name,
        tool_call_id=message.tool_call_id,
        metadata=message.metadata,
        **kwargs,
    )


def _enforce_limits(session: ConversationSession, *, oldest: list[tuple[int, str, int]] | None = None) -> None:
    """The spec's enforce_limits: while the list is too long, drop its first message, or its second
    when the first is a system message. Dropped messages stay in the database (their turns show them).

    Keeps the invariant that with no pinned head, the first listed message is not a system message.
    ``oldest``: the (seq, role, tokens) of the oldest listed messages when the caller already has them
    (at least ``excess + 2``, or all); read from the database otherwise.
    """
    excess = session.message_count - session.max_messages
    if excess <= 0:
        return
    # The oldest listed messages after the head, in order: enough to remove ``excess`` of them,
    # pin one system message on the way, and look at the message that ends up first.
    if oldest is None:
        oldest = list(
            Message.objects.filter(session=session, seq__gte=session.low_seq)
            .order_by("seq")
            .values_list("seq", "role", "tokens")[: excess + 2]
        )
    rows = iter(oldest)
    while session.message_count > session.max_messages:
        seq, role, tokens = next(rows)
        if session.head_seq is None and role == Role.SYSTEM:
            session.head_seq = seq  # it is first now: pinned, and the next one goes instead
        else:
            session.total_tokens -= tokens
        session.low_seq = seq + 1
    if session.head_seq is None:
        first = next(rows, None)
        if first is not None and first[1] == Role.SYSTEM:
            session.head_seq, session.low_seq = first[0], first[0] + 1


# ---------------------------------------------------------------------------------------------
# Reading: the message list, the context window, turns.


def listed_messages(session: ConversationSession):
    """The session's message list (the spec's ``messages``) as a queryset in order."""
    return Message.objects.filter(session=session).filter(session.in_list_q()).order_by("seq")


@storage_errors
def messages_all(session: ConversationSession) -> list[Message]:
    """The spec's get_all_messages."""
    return list(listed_messages(session))


@storage_errors
def messages_recent(session: ConversationSession, n: int) -> list[Message]:
    """The spec's get_recent(n): the last n messages of the list, in order."""
    if n <= 0:
        return []
    newest = list(Message.objects.filter(session=session, seq__gte=session.low_seq).order_by("-seq")[:n])
    if len(newest) < n and session.head_seq is not None:
        newest.append(Message.objects.get(session=session, seq=session.head_seq))
    newest.reverse()
    return newest


@storage_errors
def messages_by_role(session: ConversationSession, role: str) -> list[Message]:
    """The spec's get_by_role."""
    return list(listed_messages(session).filter(role=role))


@storage_errors
def messages_page(
    session: ConversationSession, *, after: int = 0, before: int | None = None, limit: int = 50, newest: bool = False
) -> list[Message]:
    """A page of the message list in order: the first ``limit`` after ``after``, or (``newest``) the last
    ``limit`` before ``before``. An index range scan whatever the session's length."""
    qs = listed_messages(session).filter(seq__gt=after)
    if before is not None:
        qs = qs.filter(seq__lt=before)
    if newest:
        page = list(qs.order_by("-seq")[:limit])
        page.reverse()
        return page
    return list(qs[:limit])


@dataclass
class ContextWindow:
    messages: list[Message]
    max_tokens: int
    total_tokens: int
    # The sequence number of the newest listed message that did not fit (None when nothing was cut).
    cut_before_seq: int | None


@storage_errors
def context_window(
    session: ConversationSession, max_tokens: int | None = None, *, exclude_seqs: Iterable[int] = ()
) -> ContextWindow:
    """The spec's get_context, with the numbers around it.

    ``exclude_seqs``: listed messages left out before the budget is counted (a regenerated reply does
    not send the turn's earlier responses, and they take no room in the budget).

    The first listed message is pinned when it is a system message, even over budget; then the
    listed messages from newest to oldest, later system messages skipped, stopping at the first that
    does not fit; returned in chronological order. Usually one query: the pinned message and the
    newest rows, as many as the session's average message size says will fill the budget (plus a
    margin); a further, larger chunk only when those all fit. The cost follows the window, not the
    session.
    """
    budget = session.max_tokens if max_tokens is None else max_tokens
    excluded = frozenset(exclude_seqs)
    head = None
    used = 0
    chosen: list[Message] = []
    cut = None
    upper = None  # the next chunk starts below this sequence number
    # Rows to read at first: what should fill the budget at the session's average size, plus a margin.
    average = session.total_tokens / session.message_count if session.message_count else 1
    chunk = int(max(budget, 0) / max(average, 1) * 1.25) + 8
    head_seq = session.head_seq
    while True:
        # Every message costs at least one token: more than what is left plus one never fit.
        limit = min(chunk, max(budget - used, 0) + 1)
        rows = _context_rows(session, head_seq, upper, limit)
        if head_seq is not None:
            head = next((m for m in rows if m.seq == head_seq), None)
            rows = [m for m in rows if m.seq != head_seq]
            if head is not None:
                used = head.tokens
            head_seq = None  # read once
        rows.sort(key=lambda m: m.seq, reverse=True)
        for message in rows:
            if message.seq in excluded:
                continue
            if used + message.tokens > budget:
                cut = message.seq
                break
            used += message.tokens
            chosen.append(message)
        if cut is not None or len(rows) < limit:
            break
        upper = rows[-1].seq
        chunk *= 4
    chosen.reverse()
    if head is not None:
        chosen.insert(0, head)
    return ContextWindow(messages=chosen, max_tokens=budget, total_tokens=used, cut_before_seq=cut)


def _context_rows(session: ConversationSession, head_seq: int | None, upper: int | None, limit: int) -> list[Message]:
    """The pinned message (when ``head_seq``) and the newest ``limit`` listed non-system messages below
    ``upper``, in one query."""
    table = Message._meta.db_table
    newest = f"SELECT * FROM {table} WHERE session_id = %s AND seq >= %s AND role <> %s"
    params: list[Any] = [session.pk, session.low_seq, Role.SYSTEM.value]
    if upper is not None:
        newest += " AND seq < %s"
        params.append(upper)
    sql = f"SELECT * FROM ({newest} ORDER BY seq DESC LIMIT %s) AS newest"
    params.append(limit)
    if head_seq is not None:
        sql = f"SELECT * FROM {table} WHERE session_id = %s AND seq = %s UNION ALL {sql}"
        params = [session.pk, head_seq, *params]
    return list(Message.objects.raw(sql, params))


def get_context(session: ConversationSession, max_tokens: int | None = None) -> list[Message]:
    """Exactly the spec's get_context: the messages only."""
    return context_window(session, max_tokens).messages


def current_turn(session: ConversationSession) -> int:
    return session.turn_count


@storage_errors
def turns(
    session: ConversationSession, *, numbers: Iterable[int] | None = None, newest: int | None = None
) -> list[Turn]:
    """Turns in order, each with ``tool_calls`` (its tool messages) attached. Three queries in all.

    ``numbers`` picks turns; ``newest`` takes only the last n.
    """
    qs = Turn.objects.filter(session=session).select_related("user_message", "assistant_response")
    if numbers is not None:
        qs = qs.filter(number__in=list(numbers))
    if newest is not None:
        result = list(qs.order_by("-number")[:newest])
        result.reverse()
    else:
        result = list(qs.order_by("number"))
    if not result:
        return result
    tools: dict[int, list[Message]] = {t.number: [] for t in result}
    for msg in Message.objects.filter(
        session=session,
        role=Role.TOOL,
        turn_number__gte=result[0].number,
        turn_number__lte=result[-1].number,
    ).order_by("seq"):
        if msg.turn_number in tools:
            tools[msg.turn_number].append(msg)
    for turn in result:
        turn.tool_calls = tools[turn.number]
    return result


def get_turn(session: ConversationSession, number: int) -> Turn | None:
    """The spec's get_turn: None for 0 or past the end."""
    if number < 1 or number > session.turn_count:
        return None
    found = turns(session, numbers=[number])
    return found[0] if found else None


def last_turn(session: ConversationSession) -> Turn | None:
    return get_turn(session, session.turn_count)


@storage_errors
def turn_set_metadata(
    session_id: str,
    number: int,
    values: dict[str, str | None],
    *,
    owner: Any = ANY_OWNER,
    now: dt.datetime | None = None,
) -> Turn:
    """Merge ``values`` into a turn's metadata (a None value removes the key); raise SessionNotFound
    when the session or the turn does not exist."""
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now)
        turn = Turn.objects.filter(session=session, number=number).first()
        if turn is None:
            raise SessionNotFound(f"{session_id} turn {number}")
        for key, value in values.items():
            _check_text("metadata key", key)
            if value is None:
                turn.metadata.pop(key, None)
            else:
                turn.metadata[key] = _check_text(f"metadata[{key!r}]", value)
        turn.save(update_fields=["metadata"])
        _touch(session, now)
        session.save(update_fields=["updated_at", "expires_at"])
        events.emit(session_id, events.MESSAGE, seq=session.last_seq, turn=number)
    return turn


def total_tokens(session: ConversationSession) -> int:
    return session.total_tokens


# ---------------------------------------------------------------------------------------------
# State: string variables and typed JSON data.


def _state_write(
    session_id: str, owner: Any, now: dt.datetime | None, change: Callable[[ConversationSession], Any]
) -> Any:
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now)
        result = change(session)
        _touch(session, now)
        session.save(update_fields=["variables", "data", "updated_at", "expires_at"])
        events.emit(session_id, events.STATE)
    return result


@storage_errors
def state_set(session_id: str, key: str, value: str, *, owner: Any = ANY_OWNER, now: dt.datetime | None = None) -> None:
    """Set a string variable (the spec's state.set)."""
    _check_text("key", key)
    _check_text("value", value)
    if not key:
        raise SessionValidationError("key must not be empty", field="key")
    _state_write(session_id, owner, now, lambda s: s.variables.__setitem__(key, value))


def state_get(session: ConversationSession, key: str) -> str | None:
    return session.variables.get(key)


@storage_errors
def state_remove(session_id: str, key: str, *, owner: Any = ANY_OWNER, now: dt.datetime | None = None) -> str | None:
    """Remove a string variable; return its value, or None when there was none (the spec's state.remove)."""
    return _state_write(session_id, owner, now, lambda s: s.variables.pop(key, None))


@storage_errors
def state_set_data(
    session_id: str, key: str, value: Any, *, owner: Any = ANY_OWNER, now: dt.datetime | None = None
) -> Any:
    """Store any JSON value under ``key``; a value that cannot be JSON raises SerializationError, storing nothing."""
    _check_text("key", key)
    if not key:
        raise SessionValidationError("key must not be empty", field="key")
    stored = _json_value(value)
    _state_write(session_id, owner, now, lambda s: s.data.__setitem__(key, stored))
    return stored


_MISSING: Any = object()


def state_get_data(session: ConversationSession, key: str, default: Any = None) -> Any:
    return session.data.get(key, default)


def state_has_data(session: ConversationSession, key: str) -> bool:
    return key in session.data


@storage_errors
def state_remove_data(session_id: str, key: str, *, owner: Any = ANY_OWNER, now: dt.datetime | None = None) -> bool:
    """Remove a data entry; return whether there was one."""
    return _state_write(session_id, owner, now, lambda s: s.data.pop(key, _MISSING) is not _MISSING)


@storage_errors
def state_clear(session_id: str, *, owner: Any = ANY_OWNER, now: dt.datetime | None = None) -> None:
    """Clear variables and data (the spec's state.clear)."""

    def clear(session: ConversationSession) -> None:
        session.variables, session.data = {}, {}

    _state_write(session_id, owner, now, clear)


# ---------------------------------------------------------------------------------------------
# Clear and purge.


@storage_errors
def session_clear_messages(
    session_id: str, *, owner: Any = ANY_OWNER, allow_expired: bool = False, now: dt.datetime | None = None
) -> ConversationSession:
    """The spec's clear_messages: remove every message and turn, keeping the pinned system message
    when persist_system_prompt; turn numbering restarts at 1 (sequence numbers go on)."""
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now, allow_expired=allow_expired)
        keep = session.head_seq if session.persist_system_prompt else None
        db = transaction.get_connection().alias
        Turn.objects.filter(session=session)._raw_delete(db)
        Message.objects.filter(session=session).exclude(seq=keep)._raw_delete(db)
        session.head_seq = keep
        session.low_seq = session.last_seq + 1
        session.turn_count = 0
        session.total_tokens = Message.objects.get(session=session, seq=keep).tokens if keep else 0
        _touch(session, now)
        session.save(update_fields=_BOOKKEEPING)
        events.emit(session_id, events.CLEARED)
    return session


@dataclass
class PurgeResult:
    sessions: int = 0
    messages: int = 0


@storage_errors
def purge_sessions(session_ids: Iterable[str], *, now: dt.datetime | None = None) -> PurgeResult:
    """Delete those of the given sessions that are expired at ``now``, with their messages and turns.

    Expiry is re-checked under the row locks, so a session touched since it was picked survives;
    one locked by a writer right now is in use, so it is skipped.
    """
    now = now or timezone.now()
    result = PurgeResult()
    with transaction.atomic():
        ids = list(
            ConversationSession.objects.select_for_update(skip_locked=True)
            .filter(pk__in=list(session_ids), expires_at__lte=now)
            .values_list("id", flat=True)
        )
        if ids:
            result.messages, result.sessions = _delete_rows(ids)
            events.emit_many(ids, events.DELETED)
    return result


@storage_errors
def count_expired(*, now: dt.datetime | None = None) -> PurgeResult:
    now = now or timezone.now()
    return PurgeResult(
        sessions=ConversationSession.objects.filter(expires_at__lte=now).count(),
        messages=Message.objects.filter(session__expires_at__lte=now).count(),
    )


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
    after: tuple[dt.datetime, str] | None = None
    while True:
        candidates = ConversationSession.objects.filter(expires_at__lte=now)
        if after is not None:
            candidates = candidates.filter(expires_at__gte=after[0]).exclude(expires_at=after[0], id__lte=after[1])
        batch = list(candidates.order_by("expires_at", "id").values_list("expires_at", "id")[:batch_size])
        if not batch:
            break
        after = batch[-1]
        done = purge_sessions([sid for _, sid in batch], now=now)
        result.sessions += done.sessions
        result.messages += done.messages
        if progress is not None:
            progress(result)
    return result
