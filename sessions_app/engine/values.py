"""Values: the session config, message builders, ids, input checks and limits, the token estimate and
expiry times.

The input checks are the one validation of every entry point: the engine's writes call them, and the
UI's forms, the API and the websocket consumer call the same ones (``engine.check_content``,
``check_name``, ``check_metadata``, ``parse_json``, ``parse_frame``, ``lookup_session_id``) to answer
before anything is stored. They refuse what the database cannot store faithfully (NUL characters,
lone surrogates, integers beyond JSON's digit limit) and what is over a limit (settings CONVO_MAX_*):
a value too large raises ``InputTooLarge`` (the API's 413), anything else invalid
``SessionValidationError`` or ``SerializationError`` (422).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.utils import timezone

from ..models import ConversationSession, Role
from .errors import InputTooLarge, SerializationError, SessionNotFound, SessionValidationError

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


def lookup_session_id(session_id: Any) -> str | int | uuid.UUID:
    """The id of a session to look up: one that no session can have (wrong type or characters, NUL,
    too long) is SessionNotFound before any query (PostgreSQL refuses NUL in text). A session key (a
    UUID) passes as it is; a whole number is checked as its text."""
    if isinstance(session_id, uuid.UUID):
        return session_id
    try:
        if isinstance(session_id, int) and not isinstance(session_id, bool):
            validate_session_id(str(session_id))
            return session_id
        return validate_session_id(session_id)
    except SessionValidationError:
        shown = str(session_id)[:128].encode("unicode_escape").decode("ascii")
        raise SessionNotFound(shown) from None


def new_session_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# Input checks and limits.


def check_text(name: str, value: Any, *, allow_none: bool = False, max_length: int | None = None) -> str | None:
    """Refuse what the database cannot store faithfully: non-strings, NUL characters, lone surrogates;
    beyond ``max_length`` characters, a SessionValidationError."""
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


def check_content(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    """Text of the content kind (message content, system prompt, variable value): at most
    CONVO_MAX_CONTENT_CHARS characters, else InputTooLarge."""
    check_text(name, value, allow_none=allow_none)
    limit = settings.CONVO_MAX_CONTENT_CHARS
    if value is not None and len(value) > limit:
        raise InputTooLarge(f"{name} is too long: {len(value):,} characters, the limit is {limit:,}.", field=name)
    return value


def check_name(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    """A name (message name, tool_call_id, a variable, data or metadata key): at most
    CONVO_MAX_NAME_CHARS characters."""
    return check_text(name, value, allow_none=allow_none, max_length=settings.CONVO_MAX_NAME_CHARS)


def check_string_map(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SessionValidationError(f"{name} must be an object of strings", field=name)
    for key, item in value.items():
        check_name(f"{name} key", key)
        check_text(f"{name}[{key!r}]", item)
    return dict(value)


def check_metadata(name: str, value: Any) -> dict[str, str]:
    """String metadata (of a session, a message, a turn): names as keys, text values, and at most
    CONVO_MAX_METADATA_BYTES as JSON."""
    value = check_string_map(name, value)
    check_size(name, value, settings.CONVO_MAX_METADATA_BYTES)
    return value


def check_size(name: str, value: Any, limit: int) -> None:
    """At most ``limit`` bytes as stored (compact JSON, UTF-8), else InputTooLarge."""
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > limit:
        raise InputTooLarge(f"{name} is too large: {size:,} bytes as JSON, the limit is {limit:,}.", field=name)


def check_state(variables: dict[str, str], data: dict[str, Any]) -> None:
    """A session's whole state (variables and data): at most CONVO_MAX_STATE_BYTES as JSON."""
    check_size("state", {"variables": variables, "data": data}, settings.CONVO_MAX_STATE_BYTES)


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > settings.CONVO_MAX_JSON_DEPTH:
            break  # deep enough to refuse; a self-containing value would never end
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_depth(name: str, value: Any) -> None:
    if json_depth(value) > settings.CONVO_MAX_JSON_DEPTH:
        raise _too_deep(name)


def _too_deep(name: str) -> SessionValidationError:
    limit = settings.CONVO_MAX_JSON_DEPTH
    return SessionValidationError(f"{name} is nested too deeply: the limit is {limit} levels.", field=name)


def json_value(value: Any, name: str = "value") -> Any:
    """The value as it will read back from the database, or the spec's SerializationError; nested at
    most CONVO_MAX_JSON_DEPTH levels and at most CONVO_MAX_STATE_BYTES as JSON."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        text.encode("utf-8")  # lone surrogates cannot be stored
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(str(exc)) from None
    if "\\u0000" in text or "\x00" in text:
        raise SerializationError("JSON text must not contain NUL characters")
    if json_depth(value) > settings.CONVO_MAX_JSON_DEPTH:
        raise SerializationError(str(_too_deep(name)))
    limit = settings.CONVO_MAX_STATE_BYTES
    if len(text.encode("utf-8")) > limit:
        raise InputTooLarge(f"{name} is too large: the limit is {limit:,} bytes as JSON.", field=name)
    return json.loads(text)


def parse_json(name: str, text: str) -> Any:
    """A JSON value typed as text (the state panel's data form): at most CONVO_MAX_STATE_BYTES, nested
    at most CONVO_MAX_JSON_DEPTH levels, integers within Python's digit limit, no NaN or Infinity."""
    if not isinstance(text, str):
        raise SessionValidationError(f"{name} must be JSON text", field=name)
    limit = settings.CONVO_MAX_STATE_BYTES
    if len(text) > limit:
        raise InputTooLarge(f"{name} is too large: {len(text):,} characters, the limit is {limit:,}.", field=name)

    def refuse(constant: str) -> Any:
        raise SessionValidationError(f"Not valid JSON: {constant} is not a JSON number.", field=name)

    try:
        value = json.loads(text, parse_constant=refuse)
    except SessionValidationError:
        raise
    except json.JSONDecodeError as exc:
        raise SessionValidationError(
            f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).", field=name
        ) from None
    except RecursionError:
        raise _too_deep(name) from None
    except ValueError:  # an integer beyond Python's digit limit
        digits = sys.get_int_max_str_digits()
        raise SessionValidationError(
            f"Not valid JSON here: an integer has more than {digits} digits.", field=name
        ) from None
    check_depth(name, value)
    return value


def parse_frame(text: Any) -> dict[str, Any] | None:
    """A websocket frame from a page: a JSON object of at most CONVO_WS_MAX_FRAME_BYTES (else
    InputTooLarge), nested at most CONVO_MAX_JSON_DEPTH levels; None when it is anything else."""
    if not isinstance(text, str):
        return None
    limit = settings.CONVO_WS_MAX_FRAME_BYTES
    if len(text) > limit:
        raise InputTooLarge(f"A frame is at most {limit:,} characters.")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or json_depth(message) > settings.CONVO_MAX_JSON_DEPTH:
        return None
    return message


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


# ---------------------------------------------------------------------------------------------
# Titles (the library): one line, trimmed, at most TITLE_MAX_CHARS (the column holds 200).

TITLE_MAX_CHARS = 200
AUTO_TITLE_CHARS = 80  # a title taken from a message is cut shorter, at a word


def title_from(content: str) -> str:
    """The title a conversation gets from its first user message: its first non-blank line with the
    whitespace collapsed, cut at a word to AUTO_TITLE_CHARS (with "…")."""
    line = next((part for part in content.splitlines() if part.strip()), "")
    line = " ".join(line.replace("\x00", "").split())
    if len(line) <= AUTO_TITLE_CHARS:
        return line
    cut = line[: AUTO_TITLE_CHARS - 1]
    if " " in cut[AUTO_TITLE_CHARS // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" .,;:-") + "…"


def check_title(value: Any) -> str:
    """A title given by a person or a client: a string, made one line and trimmed; at most
    TITLE_MAX_CHARS characters; empty means untitled (the id is shown)."""
    check_text("title", value)  # a string the database can store: no NUL, no lone surrogate
    title = " ".join(value.split())
    if len(title) > TITLE_MAX_CHARS:
        raise SessionValidationError(f"title is at most {TITLE_MAX_CHARS} characters", field="title")
    return title
