"""Sessions: owner scoping, the row lock, and the manager's create / get / get_or_create / update /
delete / list, and clear.

Owner scoping: ``ANY_OWNER`` (the default) is for operators and scripts; pass a user (or None for
sessions without an owner) and a session owned by someone else is not there: ids are unique per owner
(each user has a namespace, the sessions without an owner one more), so another user's id is neither
found nor taken.

A session is named by its id (a ``str``) plus the owner, or by its key (a ``uuid.UUID``, the primary
key), which Convo uses inside: replies, events and operators' tools. With ``ANY_OWNER`` an id alone
may name sessions of several owners: looking it up then raises ``SessionAmbiguous`` (use the owner,
or the key).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, TypeAlias

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from .. import events
from ..models import ConversationSession, Message, Role, Turn
from .bookkeeping import BOOKKEEPING_FIELDS, clear_bookkeeping, enforce_limits
from .errors import SessionAlreadyExists, SessionAmbiguous, SessionExpired, SessionNotFound, storage_errors
from .purge import db_key, delete_rows, delete_where
from .values import (
    SessionConfig,
    check_content,
    check_metadata,
    estimate_tokens,
    lookup_session_id,
    new_session_id,
    touch,
    validate_session_id,
)


class AnyOwner:
    """The type of ``ANY_OWNER``: no owner scoping."""

    def __repr__(self) -> str:
        return "ANY_OWNER"


ANY_OWNER = AnyOwner()

# Whose sessions a call may see: a user's, those without an owner (None), or all (ANY_OWNER).
Owner: TypeAlias = AbstractBaseUser | None | AnyOwner

# How a call names a session: its id (with the owner), or its key.
SessionRef: TypeAlias = str | uuid.UUID


def owner_pk(owner: Owner) -> Any:
    return getattr(owner, "pk", owner)


def owned_sessions(owner: Owner = ANY_OWNER) -> QuerySet[ConversationSession]:
    """The sessions ``owner`` may see."""
    qs = ConversationSession.objects.all()
    if owner is not ANY_OWNER:
        qs = qs.filter(owner=owner_pk(owner)) if owner is not None else qs.filter(owner__isnull=True)
    return qs


def find_session(
    session_id: SessionRef, owner: Owner = ANY_OWNER, *, for_update: bool = False
) -> ConversationSession | None:
    """The session ``session_id`` (an id, or a key) names among ``owner``'s, or None.

    Raises SessionAmbiguous when an id looked up for ANY_OWNER is several owners' (an owner's ids are unique).
    """
    qs = owned_sessions(owner)
    if for_update:
        qs = qs.select_for_update()
    if isinstance(session_id, uuid.UUID):
        return qs.filter(pk=session_id).first()
    if not isinstance(session_id, str):
        return None
    lookup_session_id(session_id)  # an id no session can have is not found, before any query (NUL)
    found = list(qs.filter(sid=session_id)[:2])
    if len(found) > 1:
        raise SessionAmbiguous(session_id)
    return found[0] if found else None


def lock_session(
    session_id: SessionRef, owner: Owner, now: dt.datetime, *, allow_expired: bool = False
) -> ConversationSession:
    """Load and lock a session for a write (SELECT ... FOR UPDATE); call inside atomic().

    Raises SessionNotFound, or SessionExpired unless ``allow_expired``.
    """
    session = find_session(session_id, owner, for_update=True)
    if session is None:
        raise SessionNotFound(str(session_id))
    if not allow_expired and session.is_expired(now):
        raise SessionExpired(session.sid)
    return session


# ---------------------------------------------------------------------------------------------
# The manager: create, get, get_or_create, update, delete, list.


@storage_errors
def session_create(
    session_id: str | None = None,
    *,
    owner: Owner = None,
    system_prompt: str | None = None,
    metadata: dict[str, str] | None = None,
    config: SessionConfig | None = None,
    now: dt.datetime | None = None,
) -> ConversationSession:
    """Create a session (the spec's ``create`` + ``with_*`` builders); raise SessionAlreadyExists if the
    owner already has that id (ids are per owner: another owner's sessions do not matter)."""
    session_id = new_session_id() if session_id is None else validate_session_id(session_id)
    system_prompt = check_content("system_prompt", system_prompt, allow_none=True)
    metadata = check_metadata("metadata", metadata)
    config = (config or SessionConfig.default()).validated()
    now = now or timezone.now()
    owner = None if owner is ANY_OWNER else owner
    try:
        with transaction.atomic():
            if owned_sessions(owner).filter(sid=session_id).exists():
                raise SessionAlreadyExists(session_id)
            session = _insert_session(session_id, owner, system_prompt, metadata, config, now)
            events.library_changed(session.owner_id)
            return session
    except IntegrityError:
        raise SessionAlreadyExists(session_id) from None


def _insert_session(
    session_id: str,
    owner: Owner,
    system_prompt: str | None,
    metadata: dict[str, str],
    config: SessionConfig,
    now: dt.datetime,
) -> ConversationSession:
    session = ConversationSession(
        sid=session_id,
        owner_id=owner_pk(owner),
        system_prompt=system_prompt,
        metadata=metadata,
        max_messages=config.max_messages,
        max_tokens=config.max_tokens,
        timeout_seconds=config.timeout_seconds,
        persist_system_prompt=config.persist_system_prompt,
        created_at=now,
    )
    touch(session, now)
    session.save(force_insert=True)
    if system_prompt is not None and config.persist_system_prompt:
        # with_system_prompt: the prompt becomes the first message, pinned at the front of the list.
        tokens = estimate_tokens(system_prompt)
        Message.objects.create(
            session=session, seq=1, role=Role.SYSTEM, content=system_prompt, created_at=now, tokens=tokens
        )
        session.last_seq, session.head_seq, session.low_seq, session.total_tokens = 1, 1, 2, tokens
        session.save(update_fields=BOOKKEEPING_FIELDS)
    return session


@storage_errors
def session_get(session_id: SessionRef, *, owner: Owner = ANY_OWNER) -> ConversationSession:
    """Load a session, expired or not (the spec's store.load); raise SessionNotFound (or SessionAmbiguous)."""
    session = find_session(session_id, owner)
    if session is None:
        raise SessionNotFound(str(session_id))
    return session


@storage_errors
def session_get_live(
    session_id: SessionRef, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None
) -> ConversationSession:
    """Load a session that has not expired; raise SessionNotFound or SessionExpired."""
    session = session_get(session_id, owner=owner)
    if session.is_expired(now or timezone.now()):
        raise SessionExpired(session.sid)
    return session


@storage_errors
def session_get_or_create(
    session_id: str,
    *,
    owner: Owner = ANY_OWNER,
    system_prompt: str | None = None,
    metadata: dict[str, str] | None = None,
    config: SessionConfig | None = None,
    now: dt.datetime | None = None,
) -> tuple[ConversationSession, bool]:
    """The spec's get_or_create: the live session, or a new one (replacing an expired one under the same id).

    Returns ``(session, created)``. The creation arguments apply only to a newly created session. With
    ``owner`` given, only that owner's sessions count (another owner's session with the id is not
    seen); new sessions belong to ``owner`` (none when it is ANY_OWNER). A replaced session's
    replacement has a new key: pages and replies of the old one do not follow it.
    """
    validate_session_id(session_id)
    system_prompt = check_content("system_prompt", system_prompt, allow_none=True)
    metadata = check_metadata("metadata", metadata)
    config = (config or SessionConfig.default()).validated()
    now = now or timezone.now()
    new_owner = None if owner is ANY_OWNER else owner
    for attempt in range(2):
        try:
            with transaction.atomic():
                existing = find_session(session_id, owner, for_update=True)
                if existing is not None:
                    if not existing.is_expired(now):
                        return existing, False
                    delete_rows([existing.pk])
                    events.emit(existing.pk, events.DELETED)
                session = _insert_session(session_id, new_owner, system_prompt, metadata, config, now)
                events.emit(session.pk, events.CONFIG)
                events.library_changed(session.owner_id)
                return session, True
        except IntegrityError:
            # Another process created it between our look and our insert: look again.
            if attempt:
                raise
    raise AssertionError("unreachable")


_UNSET: Any = object()


@storage_errors
def session_update(
    session_id: SessionRef,
    *,
    owner: Owner = ANY_OWNER,
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
        system_prompt = check_content("system_prompt", system_prompt, allow_none=True)
    if metadata is not None:
        metadata = check_metadata("metadata", metadata)
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
            enforce_limits(session)
        touch(session, now)
        session.save()
        events.emit(session.pk, events.CONFIG)
        events.library_changed(session.owner_id)
    return session


@storage_errors
def session_delete(session_id: SessionRef, *, owner: Owner = ANY_OWNER) -> None:
    """Delete a session with its messages, turns and replies; raise SessionNotFound.

    Its open pages are closed and its running reply is cancelled once the delete commits
    (``events.DELETED``, ``sessions_deleted``).
    """
    with transaction.atomic():
        session = find_session(session_id, owner, for_update=True)
        if session is None:
            raise SessionNotFound(str(session_id))
        delete_rows([session.pk])
        events.emit(session.pk, events.DELETED)
        events.library_changed(session.owner_id)


@storage_errors
def session_list() -> list[str]:
    """Every session id (the spec's manager.list; an id several owners have appears once per owner)."""
    return list(ConversationSession.objects.order_by("sid", "owner").values_list("sid", flat=True))


@storage_errors
def session_list_for_user(owner: Owner) -> list[str]:
    """The ids of one owner's sessions, most recent activity first (the spec's list_for_user)."""
    return list(owned_sessions(owner).order_by("-updated_at", "sid").values_list("sid", flat=True))


# What a list of sessions shows: everything but the state, metadata and system prompt (JSON and text
# that a list never needs: decoding them was most of a page's cost).
SUMMARY_FIELDS = (
    "key", "sid", "owner_id", "title", "pinned", "archived", "created_at", "updated_at", "expires_at",
    "timeout_seconds", "max_messages", "last_seq", "low_seq", "head_seq", "turn_count", "total_tokens",
)  # fmt: skip


@storage_errors
def sessions_page_for_user(owner: Owner, *, offset: int = 0, limit: int = 50) -> list[ConversationSession]:
    """A page of one owner's sessions, in session_list_for_user's order (most recent activity first),
    with their SUMMARY_FIELDS only."""
    return list(owned_sessions(owner).order_by("-updated_at", "sid").only(*SUMMARY_FIELDS)[offset : offset + limit])


@storage_errors
def session_count_for_user(owner: Owner) -> int:
    """How many sessions one owner has, expired or not."""
    return owned_sessions(owner).count()


# ---------------------------------------------------------------------------------------------
# Clear.


@storage_errors
def session_clear_messages(
    session_id: SessionRef, *, owner: Owner = ANY_OWNER, allow_expired: bool = False, now: dt.datetime | None = None
) -> ConversationSession:
    """The spec's clear_messages: remove every message and turn, keeping the pinned system message
    when persist_system_prompt; turn numbering restarts at 1 (sequence numbers go on)."""
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now, allow_expired=allow_expired)
        keep = session.head_seq if session.persist_system_prompt else None
        session_column = Message._meta.get_field("session").column
        key = db_key(session.pk)
        delete_where(Turn, f"{Turn._meta.get_field('session').column} = %s", [key])
        if keep is None:
            delete_where(Message, f"{session_column} = %s", [key])
        else:
            delete_where(Message, f"{session_column} = %s AND seq <> %s", [key, keep])
        clear_bookkeeping(session, (keep, Message.objects.get(session=session, seq=keep).tokens) if keep else None)
        touch(session, now)
        session.save(update_fields=BOOKKEEPING_FIELDS)
        events.emit(session.pk, events.CLEARED)
        events.library_changed(session.owner_id)
    return session
