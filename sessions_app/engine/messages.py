"""Appending messages (the spec's add_message_obj) and turn metadata.

An append gives the message its sequence and turn numbers (which open, extend or complete a turn: turns
are read from the messages, ``context.turns``) and applies the message limit (``bookkeeping``). On PostgreSQL it goes through ``pg_append`` (one read, one write);
elsewhere, or when another writer got in between, it runs under the session's row lock here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import events
from ..models import Message, Role, Turn
from . import pg_append
from .bookkeeping import BOOKKEEPING_FIELDS, append_bookkeeping, enforce_limits
from .errors import SessionNotFound, SessionValidationError, storage_errors
from .sessions import ANY_OWNER, Owner, SessionRef, lock_session
from .values import (
    ChatMessage,
    check_content,
    check_metadata,
    check_name,
    check_size,
    check_text,
    estimate_tokens,
    lookup_session_id,
    touch,
)


@storage_errors
def message_append(
    session_id: SessionRef,
    role: str,
    content: str,
    *,
    name: str | None = None,
    tool_call_id: str | None = None,
    metadata: dict[str, str] | None = None,
    owner: Owner = ANY_OWNER,
    now: dt.datetime | None = None,
) -> Message:
    """Append a message to a live session and return it, with its ``seq`` and ``turn_number``.

    A user message opens turn n+1; a tool message attaches to the last turn; an assistant message
    completes the last turn (replacing an earlier response, which stays in the list); a system
    message opens nothing; with no turn yet, assistant and tool messages belong to none. Then the
    oldest messages after a pinned system message leave the list past max_messages.

    On PostgreSQL the append is one read and one conditional write statement (see ``pg_append``);
    elsewhere, or when another writer got in between, it runs under the session's row lock.
    """
    lookup_session_id(session_id)
    try:
        role = Role(role)
    except ValueError:
        raise SessionValidationError(f"role must be one of: {', '.join(Role.values)}", field="role") from None
    content = check_content("content", content)
    name = check_name("name", name, allow_none=True)
    tool_call_id = check_name("tool_call_id", tool_call_id, allow_none=True)
    metadata = check_metadata("metadata", metadata)
    tokens = estimate_tokens(content)
    now = now or timezone.now()
    new = Message(
        role=role,
        content=content,
        name=name,
        tool_call_id=tool_call_id,
        metadata=metadata,
        created_at=now,
        tokens=tokens,
    )

    connection = transaction.get_connection()
    # (Anything but an id or a key goes the ORM's way, which finds nothing.)
    on_postgresql = connection.vendor == "postgresql" and isinstance(session_id, str | uuid.UUID)
    written = pg_append.append(connection, new, session_id, owner, now) if on_postgresql else None
    if written is not None:
        events.emit(new.session_id, events.MESSAGE, seq=new.seq, turn=new.turn_number)
        events.library_changed(written.owner_id, activity=True)  # the sidebar's order (maybe its title)
        return new

    with transaction.atomic():
        session = lock_session(session_id, owner, now)
        append_bookkeeping(session, new)
        new.session = session
        new.save(force_insert=True)
        enforce_limits(session)
        touch(session, now)
        session.save(update_fields=BOOKKEEPING_FIELDS)
        events.emit(session.pk, events.MESSAGE, seq=new.seq, turn=new.turn_number)
        events.library_changed(session.owner_id, activity=True)
    return new


def message_append_obj(session_id: SessionRef, message: ChatMessage, **kwargs: Any) -> Message:
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


@storage_errors
def turn_set_metadata(
    session_id: SessionRef,
    number: int,
    values: dict[str, str | None],
    *,
    owner: Owner = ANY_OWNER,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """Merge ``values`` into a turn's metadata (a None value removes the key) and return the metadata;
    raise SessionNotFound when the session or the turn does not exist.

    The metadata is the one stored part of a turn: its row is written here, the first time a turn
    gets metadata (every turn from 1 to the session's current turn exists, read from its messages).
    """
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now)
        if not isinstance(number, int) or not 1 <= number <= session.turn_count:
            raise SessionNotFound(f"{session_id} turn {number}")
        row = Turn.objects.filter(session=session, number=number).first() or Turn(session=session, number=number)
        for key, value in values.items():
            check_name("metadata key", key)
            if value is None:
                row.metadata.pop(key, None)
            else:
                row.metadata[key] = check_text(f"metadata[{key!r}]", value)
        check_size("metadata", row.metadata, settings.CONVO_MAX_METADATA_BYTES)
        row.save()
        touch(session, now)
        session.save(update_fields=["updated_at", "expires_at"])
        events.emit(session.pk, events.MESSAGE, seq=session.last_seq, turn=number)
        events.library_changed(session.owner_id)
    return row.metadata
