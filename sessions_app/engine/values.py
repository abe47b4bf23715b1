"""Values: the session config, message builders, ids, text checks, the token estimate and expiry times.

The ``check_*`` helpers and ``json_value`` are for the engine's own modules (``__init__`` does not
re-export them): they refuse what the database cannot store faithfully.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.utils import timezone

from ..models import ConversationSession, Role
from .errors import SerializationError, SessionValidationError

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
        check_int("max_messages", self.max_messages, minimum=1)
        check_int("max_tokens", self.max_tokens, minimum=1)
        if self.timeout_seconds is not None:
            check_int("timeout_seconds", self.timeout_seconds, minimum=0)
        if not isinstance(self.persist_system_prompt, bool):
            raise SessionValidationError("persist_system_prompt must be true or false", field="persist_system_prompt")
        return self


def check_int(name: str, value: Any, *, minimum: int) -> None:
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


def check_text(name: str, value: Any, *, allow_none: bool = False, max_length: int | None = None) -> str | None:
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


def check_string_map(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SessionValidationError(f"{name} must be an object of strings", field=name)
    for key, item in value.items():
        check_text(f"{name} key", key)
        check_text(f"{name}[{key!r}]", item)
    return dict(value)


def json_value(value: Any) -> Any:
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


def touch(session: ConversationSession, now: dt.datetime) -> None:
    """Mark the session used at ``now`` (in memory): its updated_at and the expiry time that follows."""
    session.updated_at = now
    session.expires_at = expiry_time(now, session.timeout_seconds)
