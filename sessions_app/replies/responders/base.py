"""What every responder shares: the request it gets, the events it yields, cancellation, secrets.

A responder turns one request (the context window as Chat Completions messages, plus the tool
definitions) into a stream of events: ``TextDelta`` as text arrives, then any ``ToolCall``s, an
optional ``Usage`` and a ``Finish``. The reply loop (``replies.run``) executes tool calls, stores them
as tool messages and asks again; the responder never touches the database. Failures raise
``ProviderError`` with a message fit for the chat (and already free of the API key).

This module imports nothing else of ``replies``: responders build on it, the reply loop uses it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings

from sessions_app.models import Message, Role


class ProviderError(Exception):
    """The responder could not produce a reply (HTTP error, timeout, malformed stream, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


# ---------------------------------------------------------------------------------------------
# Requests and events.


@dataclass(frozen=True)
class ContextInfo:
    """Numbers about the context sent, for responders (the built-in one reports them)."""

    message_count: int
    tokens: int
    turn_number: int
    max_tokens: int


@dataclass(frozen=True)
class ProviderRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    context: ContextInfo
    session_id: str


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the model's raw JSON text


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


@dataclass(frozen=True)
class Finish:
    reason: str


Event = TextDelta | ToolCall | Usage | Finish


class Responder(Protocol):
    """What the registry (``responders.RESPONDERS``) holds: a class, configured from the settings."""

    name: str  # stored on the Reply row and in the answer's metadata
    model: str

    @classmethod
    def from_settings(cls) -> Responder:
        """The responder the CONVO_* settings describe; ImproperlyConfigured when they are wrong."""
        ...

    @classmethod
    def label(cls) -> str:
        """How the UI names it, from the settings without checking them (never a key or full URL)."""
        ...

    def stream(self, request: ProviderRequest, handle: CancelHandle) -> Iterator[Event]: ...


# ---------------------------------------------------------------------------------------------
# Cancellation: Stop must end the provider call itself, not only the display.


@dataclass
class CancelHandle:
    """Set by Stop; a responder registers how to abort its blocking I/O (e.g. shut its socket)."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    _abort: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            abort = self._abort
        if abort is not None:
            abort()

    def on_cancel(self, abort: Callable[[], None] | None) -> None:
        """Register (or with None, clear) the abort callback; runs at once if already cancelled."""
        with self._lock:
            self._abort = abort
            run_now = abort is not None and self.cancelled.is_set()
        if run_now:
            abort()

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()


def shutdown_socket(sock: socket.socket | None) -> None:
    """Wake a thread blocked reading ``sock`` (close() alone does not on Linux)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------------------------------------
# Secrets.


def redact(text: str) -> str:
    """Remove the configured API key, any piece of it of 10+ characters (servers echo parts of a
    wrong key: "sk-proj-abc…xyz"), and bearer tokens."""
    key = settings.CONVO_LLM_API_KEY
    if len(key) >= 4:
        text = text.replace(key, "[redacted]")
    if len(key) >= KEY_PIECE:
        text = _without_key_pieces(text, key)
    return re.sub(r"(?i)(bearer\s+)[^\s\"',]+", r"\1[redacted]", text)


KEY_PIECE = 10


def _without_key_pieces(text: str, key: str) -> str:
    out = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[i : j + 1] in key:
            j += 1
        if j - i >= KEY_PIECE:
            out.append("[redacted]")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Messages on the wire.

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The context window as Chat Completions messages.

    Tool messages are stored with what the assistant's call said (metadata ``arguments``, the round
    they belong to in ``tool_round``, any text the model said with the call in ``assistant_content``),
    so each run of tool messages of one round is preceded by the assistant message whose
    ``tool_calls`` they answer, as servers require. Rebuilding it from the tool messages themselves
    means trimming the context can never leave a tool message without its call.
    """
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(messages):
        msg = messages[i]
        if msg.role != Role.TOOL:
            item: dict[str, Any] = {"role": str(msg.role), "content": msg.content}
            if msg.name and _NAME_RE.fullmatch(msg.name) and msg.role != Role.SYSTEM:
                item["name"] = msg.name
            out.append(item)
            i += 1
            continue
        group_key = msg.metadata.get("tool_round", "")
        group = [msg]
        i += 1
        while (
            i < len(messages)
            and messages[i].role == Role.TOOL
            and messages[i].metadata.get("tool_round", "") == group_key
        ):
            group.append(messages[i])
            i += 1
        calls = []
        for t in group:
            calls.append(
                {
                    "id": t.tool_call_id or f"call_{t.seq}",
                    "type": "function",
                    "function": {"name": t.name or "tool", "arguments": t.metadata.get("arguments", "{}")},
                }
            )
        out.append(
            {"role": "assistant", "content": group[0].metadata.get("assistant_content", ""), "tool_calls": calls}
        )
        for t, call in zip(group, calls, strict=True):
            out.append({"role": "tool", "tool_call_id": call["id"], "content": t.content})
    return out
