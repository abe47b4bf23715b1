"""State: a session's string variables and typed JSON data (the spec's state)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import events
from ..models import ConversationSession
from .errors import SessionValidationError, storage_errors
from .sessions import ANY_OWNER, Owner, SessionRef, lock_session
from .values import check_content, check_name, check_state, json_value, touch


def _state_write(
    session_id: SessionRef, owner: Owner, now: dt.datetime | None, change: Callable[[ConversationSession], Any]
) -> Any:
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now)
        result = change(session)
        touch(session, now)
        session.save(update_fields=["variables", "data", "updated_at", "expires_at"])
        events.emit(session.pk, events.STATE)
        events.library_changed(session.owner_id)
    return result


@storage_errors
def state_set(
    session_id: SessionRef, key: str, value: str, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None
) -> None:
    """Set a string variable (the spec's state.set)."""
    check_name("key", key)
    check_content("value", value)
    if not key:
        raise SessionValidationError("key must not be empty", field="key")

    def change(session: ConversationSession) -> None:
        session.variables[key] = value
        check_state(session.variables, session.data)

    _state_write(session_id, owner, now, change)


def state_get(session: ConversationSession, key: str) -> str | None:
    return session.variables.get(key)


@storage_errors
def state_remove(
    session_id: SessionRef, key: str, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None
) -> str | None:
    """Remove a string variable; return its value, or None when there was none (the spec's state.remove)."""
    return _state_write(session_id, owner, now, lambda s: s.variables.pop(key, None))


@storage_errors
def state_set_data(
    session_id: SessionRef, key: str, value: Any, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None
) -> Any:
    """Store any JSON value under ``key``; a value that cannot be JSON raises SerializationError, storing
    nothing (so does one nested deeper than the limit), and one that makes the state too large InputTooLarge."""
    check_name("key", key)
    if not key:
        raise SessionValidationError("key must not be empty", field="key")
    stored = json_value(value)

    def change(session: ConversationSession) -> None:
        session.data[key] = stored
        check_state(session.variables, session.data)

    _state_write(session_id, owner, now, change)
    return stored


_MISSING: Any = object()


def state_get_data(session: ConversationSession, key: str, default: Any = None) -> Any:
    return session.data.get(key, default)


def state_has_data(session: ConversationSession, key: str) -> bool:
    return key in session.data


@storage_errors
def state_remove_data(
    session_id: SessionRef, key: str, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None
) -> bool:
    """Remove a data entry; return whether there was one."""
    return _state_write(session_id, owner, now, lambda s: s.data.pop(key, _MISSING) is not _MISSING)


@storage_errors
def state_clear(session_id: SessionRef, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None) -> None:
    """Clear variables and data (the spec's state.clear)."""

    def clear(session: ConversationSession) -> None:
        session.variables, session.data = {}, {}

    _state_write(session_id, owner, now, clear)
