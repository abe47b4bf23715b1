"""Request and response bodies of the JSON API (/api/v1), as pydantic models via Django Ninja.

Request bodies are strict (no type coercion: "5" is not a number) and closed (an unknown field is
a 422, so a misspelt ``tool_call_id`` is reported rather than dropped). Adding an optional field
later, e.g. ``respond: bool = False`` on MessageIn, is a one-line change.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from django.conf import settings
from ninja import Schema
from pydantic import ConfigDict, Field, model_validator

from .. import engine
from ..models import ConversationSession, Message, Reply

MAX_INT = engine.MAX_INT
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
PAGE_LIMIT_MAX = 500


class StrictIn(Schema):
    model_config = ConfigDict(strict=True, extra="forbid")


# ---------------------------------------------------------------------------------------------
# Errors


class ErrorOut(Schema):
    error: str = Field(description="A stable, machine-readable code, e.g. not_found, session_expired.")
    detail: str = Field(description="What went wrong, for a human.")


# ---------------------------------------------------------------------------------------------
# Sessions


class ConfigIn(StrictIn):
    """A session's config; an omitted field takes the server's default (settings CONVO_*)."""

    max_messages: Annotated[int, Field(ge=1, le=MAX_INT)] = Field(default_factory=lambda: settings.CONVO_MAX_MESSAGES)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_INT)] = Field(default_factory=lambda: settings.CONVO_MAX_TOKENS)
    timeout_seconds: Annotated[int, Field(ge=0, le=MAX_INT)] | None = Field(
        default_factory=lambda: settings.CONVO_TIMEOUT_SECONDS,
        description="Seconds of inactivity before the session expires; null: never.",
    )
    persist_system_prompt: bool = Field(default_factory=lambda: settings.CONVO_PERSIST_SYSTEM_PROMPT)

    def to_engine(self) -> engine.SessionConfig:
        return engine.SessionConfig(
            max_messages=self.max_messages,
            max_tokens=self.max_tokens,
            timeout_seconds=self.timeout_seconds,
            persist_system_prompt=self.persist_system_prompt,
        )


class SessionFieldsIn(StrictIn):
    system_prompt: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    config: ConfigIn = Field(default_factory=ConfigIn)


class SessionCreateIn(SessionFieldsIn):
    id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="1 to 128 of A-Z a-z 0-9 . _ : - (omitted: a new UUID).",
    )


class ConfigOut(Schema):
    max_messages: int
    max_tokens: int
    timeout_seconds: int | None
    persist_system_prompt: bool


class StateOut(Schema):
    variables: dict[str, str]
    data: dict[str, Any]


class SessionOut(Schema):
    id: str
    title: str = Field(
        description="The conversation's title (from its first user message unless renamed; empty: none)."
    )
    pinned: bool
    archived: bool
    system_prompt: str | None
    config: ConfigOut
    state: StateOut
    metadata: dict[str, str]
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime | None
    expired: bool
    current_turn: int
    message_count: int
    total_tokens: int
    parent: str | None = Field(
        description="The id of the conversation this one was branched, edited or continued from; "
        "null when there is none or it was deleted."
    )
    parent_seq: int | None = Field(description="The parent's sequence number this conversation was taken at.")
    lineage: Literal["branch", "edit", "continue"] | None = Field(
        description="How this conversation came from its parent (null: it did not)."
    )


class BranchIn(StrictIn):
    at_seq: Annotated[int, Field(ge=1, le=2**63 - 1)] = Field(
        description="The sequence number of the message the branch ends with (it has the messages up to it)."
    )


class SessionSummaryOut(Schema):
    id: str
    title: str
    pinned: bool
    archived: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime | None
    expired: bool
    message_count: int
    current_turn: int


class SessionPageOut(Schema):
    items: list[SessionSummaryOut]
    count: int = Field(description="How many sessions the caller has in all.")
    offset: int
    limit: int
    next_offset: int | None = Field(description="The offset of the next page; null on the last page.")


class SessionPatchIn(StrictIn):
    """What a person keeps of a conversation (none of it changes what the model sees); omitted fields stay."""

    title: str | None = Field(
        default=None, description=f"One line, at most {engine.TITLE_MAX_CHARS} characters; empty: untitled."
    )
    pinned: bool | None = None
    archived: bool | None = None


class ImportedOut(Schema):
    id: str = Field(description="The new conversation's id.")
    requested_id: str | None = Field(description="The id the file gave it, when that one was taken (or unusable).")
    title: str
    messages: int = Field(description="Messages imported.")


class ImportOut(Schema):
    format: str = Field(description="What the file was read as: Convo export, ChatGPT export or Open WebUI export.")
    items: list[ImportedOut]
    count: int


def _parent_id(session: ConversationSession) -> str | None:
    if session.parent_id is None:
        return None
    return ConversationSession.objects.filter(pk=session.parent_id).values_list("sid", flat=True).first()


def session_out(session: ConversationSession, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": session.id,
        "title": session.title,
        "pinned": session.pinned,
        "archived": session.archived,
        "system_prompt": session.system_prompt,
        "config": {
            "max_messages": session.max_messages,
            "max_tokens": session.max_tokens,
            "timeout_seconds": session.timeout_seconds,
            "persist_system_prompt": session.persist_system_prompt,
        },
        "state": {"variables": session.variables, "data": session.data},
        "metadata": session.metadata,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "expires_at": session.expires_at,
        "expired": session.is_expired(now),
        "current_turn": session.turn_count,
        "message_count": session.message_count,
        "total_tokens": session.total_tokens,
        "parent": _parent_id(session),
        "parent_seq": session.parent_seq if session.lineage else None,
        "lineage": session.lineage or None,
    }


def session_summary_out(session: ConversationSession, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": session.id,
        "title": session.title,
        "pinned": session.pinned,
        "archived": session.archived,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "expires_at": session.expires_at,
        "expired": session.is_expired(now),
        "message_count": session.message_count,
        "current_turn": session.turn_count,
    }


# ---------------------------------------------------------------------------------------------
# Messages


Role = Literal["system", "user", "assistant", "tool"]


class MessageIn(StrictIn):
    # Lengths and sizes are the engine's limits (settings CONVO_MAX_*), checked there for every entry point.
    role: Role
    content: str = Field(description="At most CONVO_MAX_CONTENT_CHARS (default 32000) characters; 413 beyond.")
    name: str | None = Field(default=None, description="At most CONVO_MAX_NAME_CHARS (default 256) characters.")
    tool_call_id: str | None = Field(
        default=None,
        description="Required for role tool: the id of the call this message answers (at most CONVO_MAX_NAME_CHARS).",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="At most CONVO_MAX_METADATA_BYTES (default 65536) as JSON; 413 beyond."
    )
    respond: bool = Field(
        default=False,
        description="With a user message: start the assistant's reply (streamed to open pages; "
        "follow it with GET /sessions/{id}/reply). 409 while a reply is running.",
    )

    @model_validator(mode="after")
    def _tool_needs_call_id(self) -> MessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs a tool_call_id")
        if self.respond and self.role != "user":
            raise ValueError("respond is only for user messages")
        return self


class ReplyOut(Schema):
    id: int
    session_id: str
    turn: int | None
    status: str = Field(description="running, done, stopped, error or interrupted")
    regenerate: bool
    responder: str
    model: str | None
    text: str = Field(description="The reply's text so far (the whole text once finished).")
    finish_reason: str | None
    error: str | None
    tool_rounds: int
    message_seq: int | None = Field(description="Sequence number of the stored assistant message.")
    started_at: dt.datetime
    finished_at: dt.datetime | None


def reply_out(reply: Reply, session_id: str) -> dict[str, Any]:
    """A reply as the API shows it; ``session_id`` is the caller's id for its session."""
    return {
        "id": reply.pk,
        "session_id": session_id,
        "turn": reply.turn_number,
        "status": reply.status,
        "regenerate": reply.regenerate,
        "responder": reply.responder,
        "model": reply.model,
        "text": reply.text,
        "finish_reason": reply.finish_reason or None,
        "error": reply.error or None,
        "tool_rounds": reply.tool_rounds,
        "message_seq": reply.message_seq,
        "started_at": reply.started_at,
        "finished_at": reply.finished_at,
    }


class ReplyIn(StrictIn):
    regenerate: bool = Field(
        default=False, description="Answer the last turn again even if it is complete (the Regenerate button)."
    )


class ReplyStopOut(Schema):
    stopped: bool = Field(description="Whether a reply was running.")
    reply: ReplyOut | None


class MessageOut(Schema):
    seq: int
    role: Role
    content: str
    name: str | None
    tool_call_id: str | None
    metadata: dict[str, str]
    created_at: dt.datetime
    tokens: int
    turn: int | None


class MessageAppendOut(MessageOut):
    reply: ReplyOut | None = Field(default=None, description='Only with "respond": true: the reply it started.')


class MessagePageOut(Schema):
    items: list[MessageOut]
    count: int = Field(
        description="How many messages the session's list holds in all (with ?history=true: the whole history)."
    )
    after: int
    before: int | None
    limit: int
    order: str = Field(description="asc or desc, as asked.")
    next_after: int | None = Field(
        description="order=asc: pass as ?after= for the next page; null on the last page (and for desc)."
    )
    next_before: int | None = Field(
        description="order=desc: pass as ?before= for the next (older) page; null on the last page (and for asc)."
    )


class ContextOut(Schema):
    messages: list[MessageOut]
    total_tokens: int
    max_tokens: int
    cut_before_seq: int | None = Field(
        description="The newest listed message that did not fit the budget (null: nothing was cut)."
    )


def message_out(message: Message) -> dict[str, Any]:
    return {
        "seq": message.seq,
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_call_id": message.tool_call_id,
        "metadata": message.metadata,
        "created_at": message.created_at,
        "tokens": message.tokens,
        "turn": message.turn_number,
    }


# ---------------------------------------------------------------------------------------------
# Turns


class TurnOut(Schema):
    number: int
    user_message: MessageOut
    tool_calls: list[MessageOut]
    assistant_response: MessageOut | None
    started_at: dt.datetime
    completed_at: dt.datetime | None
    complete: bool
    metadata: dict[str, Any]


class TurnPageOut(Schema):
    items: list[TurnOut]
    count: int = Field(description="The session's current turn number (how many turns it has).")
    after: int
    limit: int
    next_after: int | None


def turn_out(turn: engine.TurnView) -> dict[str, Any]:
    return {
        "number": turn.number,
        "user_message": message_out(turn.user_message),
        "tool_calls": [message_out(m) for m in turn.tool_calls],
        "assistant_response": message_out(turn.assistant_response) if turn.assistant_response else None,
        "started_at": turn.started_at,
        "completed_at": turn.completed_at,
        "complete": turn.is_complete,
        "metadata": turn.metadata,
    }


# ---------------------------------------------------------------------------------------------
# State


class VariableIn(StrictIn):
    value: str


class DataIn(StrictIn):
    value: Any = Field(description="Any JSON value.")


class VariableOut(Schema):
    key: str
    value: str


class DataOut(Schema):
    key: str
    value: Any


# ---------------------------------------------------------------------------------------------
# Search


class SearchResultOut(Schema):
    kind: Literal["title", "message"] = Field(description="What matched: the conversation's title, or a message.")
    session_id: str
    title: str
    seq: int | None = Field(description="The message's sequence number (null for a title match).")
    role: str | None = Field(description="The message's role (null for a title match).")
    snippet: str = Field(
        description="HTML: the text around the match, escaped, with <mark>…</mark> around the matched words "
        "(the only markup in it)."
    )
    created_at: dt.datetime = Field(description="The message's time (a title match: the conversation's creation).")
    rank: float = Field(description="Higher is better; comparable within one response's configuration only.")


class SearchPageOut(Schema):
    items: list[SearchResultOut]
    q: str = Field(description="The query as understood: words, quoted phrases, -exclusions, or.")
    limit: int
    next_cursor: str | None = Field(
        description="Pass as ?cursor= (with the same q) for the next page; null at the end."
    )


def search_result_out(hit: Any) -> dict[str, Any]:
    return {
        "kind": hit.kind,
        "session_id": hit.session_id,
        "title": hit.title,
        "seq": hit.seq,
        "role": hit.role,
        "snippet": str(hit.snippet),
        "created_at": hit.created_at,
        "rank": hit.rank,
    }
