"""The spec's SessionError kinds, plus the two a database-backed, multi-user store needs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DatabaseError


class SessionError(Exception):
    """Base of every error the engine raises on purpose."""


class SessionNotFound(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session not found: {session_id}")
        self.session_id = session_id


class SessionAmbiguous(SessionError):
    """An id looked up for any owner (operators) names sessions of several owners."""

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"Several owners have a session with the id {session_id}: name the owner, or use the session's key."
        )
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


class InputTooLarge(SessionValidationError):
    """Input over one of the size limits (settings CONVO_MAX_*): too long a text, too large metadata
    or state. The API answers 413."""


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
