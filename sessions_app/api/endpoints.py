"""The API's operations, one function each. Each is registered with ``@endpoint(method, path,
ok_responses, raises=(...))``, listing the exceptions its body can raise; its documented error
responses follow from those (see ``errors``). Adding an endpoint: one function here, plus its
schema in ``schemas``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Header, Query, Router, Status

from .. import engine, replies, transfer
from ..engine import search as search_engine
from . import idempotency
from .errors import NotFound, documented_statuses, request_errors
from .idempotency import IdempotencyKeyInvalid, IdempotencyKeyReused
from .schemas import (
    MAX_INT,
    PAGE_LIMIT_MAX,
    BranchIn,
    ContextOut,
    DataIn,
    DataOut,
    ErrorOut,
    ImportOut,
    MessageAppendOut,
    MessageIn,
    MessagePageOut,
    ReplyIn,
    ReplyOut,
    ReplyStopOut,
    SearchPageOut,
    SessionCreateIn,
    SessionFieldsIn,
    SessionOut,
    SessionPageOut,
    SessionPatchIn,
    StateOut,
    TurnOut,
    TurnPageOut,
    VariableIn,
    VariableOut,
    message_out,
    reply_out,
    search_result_out,
    session_out,
    session_summary_out,
    turn_out,
)

MAX_SEQ = 2**63 - 1  # sequence numbers are 64-bit

router = Router()

# (METHOD, path) → every exception the operation can answer with; its documented error statuses.
RAISES: dict[tuple[str, str], tuple[type[Exception], ...]] = {}


def endpoint(
    method: str, path: str, ok: dict[int, Any], *, raises: tuple[type[Exception], ...] = (), **options: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the view for ``method path``: ``ok`` maps its success statuses to their schemas,
    ``raises`` lists what its body can raise (the request's own errors are added from its method
    and signature); each becomes a documented error response."""

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        raised = (*request_errors(method, view), *raises)
        RAISES[method, path] = raised
        response = {**ok, **dict.fromkeys(documented_statuses(raised), ErrorOut)}
        router.add_api_operation(path, [method], view, response=response, **options)
        return view

    return register


# ---------------------------------------------------------------------------------------------
# Helpers


# What _check_id and _session raise: an id that cannot exist, or no such session of the caller's.
LOOKUP = (NotFound, engine.SessionNotFound)


def _user(request: HttpRequest) -> Any:
    return request.auth  # set by the authentication classes: the key's user or the session's


def _check_id(session_id: str) -> None:
    """An id that cannot exist (bad characters, too long, NUL...) is simply not found."""
    try:
        engine.validate_session_id(session_id)
    except engine.SessionValidationError:
        raise NotFound("Session not found.") from None


def _session(request: HttpRequest, session_id: str):
    """The caller's session, expired or not."""
    _check_id(session_id)
    return engine.session_get(session_id, owner=_user(request))


def _check_id_in_url(session_id: str) -> str:
    return engine.validate_session_id(session_id)


def _now():
    return timezone.now()


def _rendered(request: HttpRequest, data: dict[str, Any], status: int = 200) -> HttpResponse:
    """A 200 of a list endpoint, rendered as ninja renders a validated response but without validating
    every item again: the dicts are built by the schemas' own ``*_out`` functions, and the contract
    tests check each list against its documented schema. (Validation cost ~0.1 ms an item, most of a
    page's time.)"""
    from . import api  # the NinjaAPI this router is mounted on (created after this module)

    return api.create_response(request, data, status=status)


# ---------------------------------------------------------------------------------------------
# Sessions


@endpoint(
    "POST",
    "/sessions",
    {201: SessionOut},
    raises=(engine.SessionAlreadyExists, engine.SessionValidationError, engine.InputTooLarge),
    tags=["sessions"],
)
def create_session(request: HttpRequest, payload: SessionCreateIn):
    """Create a session. 409 when the id is in use (by anyone)."""
    if payload.id is not None:
        _check_id_in_url(payload.id)
    session = engine.session_create(
        payload.id,
        owner=_user(request),
        system_prompt=payload.system_prompt,
        metadata=payload.metadata,
        config=payload.config.to_engine(),
    )
    return Status(201, session_out(session, _now()))


@endpoint(
    "PUT",
    "/sessions/{id}",
    {200: SessionOut, 201: SessionOut},
    raises=(engine.SessionNotFound, engine.SessionValidationError, engine.InputTooLarge),
    tags=["sessions"],
)
def get_or_create_session(request: HttpRequest, id: str, payload: SessionFieldsIn | None = None):
    """The spec's get_or_create: 200 with the live session; 201 when it was created, or replaced
    because it had expired. The body's fields apply only to a newly created session."""
    _check_id_in_url(id)
    payload = payload or SessionFieldsIn()
    session, created = engine.session_get_or_create(
        id,
        owner=_user(request),
        system_prompt=payload.system_prompt,
        metadata=payload.metadata,
        config=payload.config.to_engine(),
    )
    return Status(201 if created else 200, session_out(session, _now()))


@endpoint("GET", "/sessions", {200: SessionPageOut}, tags=["sessions"])
def list_sessions(
    request: HttpRequest,
    offset: int = Query(0, ge=0, le=MAX_INT),
    limit: int = Query(50, ge=1, le=PAGE_LIMIT_MAX),
):
    """The caller's sessions, most recent activity first."""
    user = _user(request)
    page = engine.sessions_page_for_user(user, offset=offset, limit=limit)
    count = engine.session_count_for_user(user)
    now = _now()
    return _rendered(
        request,
        {
            "items": [session_summary_out(s, now) for s in page],
            "count": count,
            "offset": offset,
            "limit": limit,
            "next_offset": offset + limit if offset + limit < count else None,
        },
    )


@endpoint("GET", "/sessions/{id}", {200: SessionOut}, raises=LOOKUP, tags=["sessions"])
def get_session(request: HttpRequest, id: str):
    """The session, expired or not (``expired`` says which)."""
    return session_out(_session(request, id), _now())


@endpoint(
    "PATCH",
    "/sessions/{id}",
    {200: SessionOut},
    raises=(*LOOKUP, engine.SessionValidationError),
    tags=["sessions"],
)
def patch_session(request: HttpRequest, id: str, payload: SessionPatchIn):
    """Rename, pin or archive the conversation (expired or not). None of these change what the model
    sees, nor count as activity (``updated_at`` and the expiry stay)."""
    _check_id(id)
    fields = payload.model_fields_set
    title = payload.title if "title" in fields and payload.title is not None else None
    if "title" in fields and payload.title is None:
        raise engine.SessionValidationError("title must be a string (empty for none)", field="title")
    kwargs: dict[str, Any] = {"pinned": payload.pinned, "archived": payload.archived}
    if title is not None:
        kwargs["title"] = title
    session = engine.session_set_library(id, owner=_user(request), **kwargs)
    return session_out(session, _now())


@endpoint("DELETE", "/sessions/{id}", {204: None}, raises=LOOKUP, tags=["sessions"])
def delete_session(request: HttpRequest, id: str):
    _check_id(id)
    engine.session_delete(id, owner=_user(request))
    return Status(204, None)


@endpoint("POST", "/sessions/{id}/clear", {200: SessionOut}, raises=(*LOOKUP, engine.SessionExpired), tags=["sessions"])
def clear_session(request: HttpRequest, id: str):
    """The spec's clear_messages: every message and turn goes, except the pinned system prompt
    when persist_system_prompt; turn numbering restarts."""
    _check_id(id)
    session = engine.session_clear_messages(id, owner=_user(request))
    return session_out(session, _now())


@endpoint(
    "POST",
    "/sessions/{id}/branch",
    {201: SessionOut},
    raises=(*LOOKUP, engine.SessionValidationError),
    tags=["sessions"],
)
def branch_session(request: HttpRequest, id: str, payload: BranchIn):
    """A new session with this one's messages up to and including ``at_seq`` (their seqs, turns and
    metadata kept), its config and state; it records this one as its ``parent`` (lineage
    ``branch``). An expired session can be branched; the branch is live. 422 when ``at_seq`` is not
    the sequence number of one of its stored messages."""
    _check_id(id)
    session = engine.session_branch(id, payload.at_seq, owner=_user(request))
    return Status(201, session_out(session, _now()))


# ---------------------------------------------------------------------------------------------
# Messages


@endpoint(
    "POST",
    "/sessions/{id}/messages",
    {201: MessageAppendOut},
    raises=(
        *LOOKUP,
        engine.SessionExpired,
        engine.SessionValidationError,
        engine.InputTooLarge,
        replies.ReplyInProgress,
        replies.TooManyReplies,
        IdempotencyKeyInvalid,
        IdempotencyKeyReused,
    ),
    tags=["messages"],
    exclude_unset=True,  # "reply" appears only when the append started one
)
def append_message(
    request: HttpRequest,
    response: HttpResponse,
    id: str,
    payload: MessageIn,
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        description="Retrying with the same key returns the first result instead of adding a duplicate.",
    ),
):
    """Append a message. A user message opens a turn, a tool message joins the current turn, an
    assistant message completes it. 410 when the session has expired (resume it with PUT)."""
    _check_id(id)
    user = _user(request)

    def append(session: engine.SessionRef) -> dict[str, Any]:
        reply = None
        if payload.respond:
            # One transaction: while a reply runs, the message is refused (409) and nothing stored.
            message, reply = replies.append_and_reply(
                session, payload.content, owner=user, name=payload.name, metadata=payload.metadata
            )
        else:
            message = engine.message_append(
                session,
                payload.role,
                payload.content,
                name=payload.name,
                tool_call_id=payload.tool_call_id,
                metadata=payload.metadata,
                owner=user,
            )
        out = message_out(message)
        if reply is not None:
            out["reply"] = reply_out(reply, id)
        return MessageAppendOut.model_validate(out).model_dump(mode="json", exclude_unset=True)

    if idempotency_key is None:
        return Status(201, append(id))
    idempotency.check_key(idempotency_key)
    # The record and the append are for this session (its key): the id may name another one later.
    key = _session(request, id).pk
    result, replayed = idempotency.run_once(
        user, idempotency_key, key, id, payload.model_dump(mode="json"), lambda: append(key)
    )
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return Status(201, result)


@endpoint("GET", "/sessions/{id}/messages", {200: MessagePageOut}, raises=LOOKUP, tags=["messages"])
def list_messages(
    request: HttpRequest,
    id: str,
    after: int = Query(0, ge=0, le=MAX_SEQ, description="Only messages with a sequence number above this."),
    before: int | None = Query(None, ge=1, le=MAX_SEQ, description="Only messages with a sequence number below this."),
    limit: int = Query(100, ge=1, le=PAGE_LIMIT_MAX),
    order: Literal["asc", "desc"] = Query(
        "asc",
        description="asc: the page starts at the oldest message of the range, oldest first. desc: it starts "
        "at the newest, newest first (`?order=desc&limit=50` is the newest 50; follow with ?before=next_before).",
    ),
    history: bool = Query(
        False,
        description="true: the conversation's whole history, including messages that left the session's "
        "list (max_messages) and are no longer sent to the model; default: the list.",
    ),
):
    """The session's message list (or, ``?history=true``, its whole history): a page of the range
    ``after`` < seq < ``before``, taken from its start (``order=asc``) or its end (``order=desc``). One
    index range scan whatever the session's length."""
    session = _session(request, id)
    newest = order == "desc"
    page = engine.messages_page(session, after=after, before=before, limit=limit + 1, newest=newest, history=history)
    more = len(page) > limit
    if newest:
        page = page[len(page) - limit :] if more else page
        page.reverse()
    else:
        page = page[:limit]
    return _rendered(
        request,
        {
            "items": [message_out(m) for m in page],
            "count": engine.history_count(session) if history else session.message_count,
            "after": after,
            "before": before,
            "limit": limit,
            "order": order,
            "next_after": page[-1].seq if more and not newest else None,
            "next_before": page[-1].seq if more and newest else None,
        },
    )


@endpoint("GET", "/sessions/{id}/context", {200: ContextOut}, raises=LOOKUP, tags=["messages"])
def get_context(
    request: HttpRequest,
    id: str,
    max_tokens: int | None = Query(None, ge=1, le=MAX_INT, description="Token budget (default: the session's)."),
):
    """The context window to send to a model: a pinned system prompt, then the newest messages
    that fit the budget, in order."""
    session = _session(request, id)
    window = replies.reply_context_window(session, max_tokens)
    return {
        "messages": [message_out(m) for m in window.messages],
        "total_tokens": window.total_tokens,
        "max_tokens": window.max_tokens,
        "cut_before_seq": window.cut_before_seq,
    }


# ---------------------------------------------------------------------------------------------
# Assistant replies


@endpoint(
    "POST",
    "/sessions/{id}/reply",
    {202: ReplyOut},
    raises=(*LOOKUP, engine.SessionExpired, replies.ReplyInProgress, replies.TooManyReplies, replies.NothingToReply),
    tags=["replies"],
)
def start_reply(request: HttpRequest, id: str, payload: ReplyIn | None = None):
    """Start the assistant's reply to the last turn (retry an open turn, or ``regenerate`` a complete
    one: the new response completes the turn and the previous one stays in the message list).
    The reply runs in the background and streams to open chat pages; poll GET /sessions/{id}/reply."""
    _check_id(id)
    reply = replies.start_reply(id, owner=_user(request), regenerate=bool(payload and payload.regenerate))
    return Status(202, reply_out(reply, id))


@endpoint("GET", "/sessions/{id}/reply", {200: ReplyOut}, raises=LOOKUP, tags=["replies"])
def get_reply(request: HttpRequest, id: str):
    """The session's latest reply (running or finished); 404 when it has none."""
    session = _session(request, id)
    reply = replies.latest_reply(session)
    if reply is None:
        raise NotFound("This session has no reply yet.")
    return reply_out(reply, id)


@endpoint("POST", "/sessions/{id}/reply/stop", {200: ReplyStopOut}, raises=LOOKUP, tags=["replies"])
def stop_reply(request: HttpRequest, id: str):
    """Stop the running reply: cancels the provider call itself and stores the partial text with
    finish reason ``stopped``. ``stopped`` is false when no reply was running."""
    _check_id(id)
    user = _user(request)
    running = replies.running_reply(engine.session_get(id, owner=user))
    stopped = replies.stop_reply(id, owner=user)
    reply = replies.wait_reply(running.pk, timeout=5) if stopped and running is not None else None
    return {"stopped": stopped, "reply": reply_out(reply, id) if reply else None}


# ---------------------------------------------------------------------------------------------
# Turns


@endpoint("GET", "/sessions/{id}/turns", {200: TurnPageOut}, raises=LOOKUP, tags=["turns"])
def list_turns(
    request: HttpRequest,
    id: str,
    after: int = Query(0, ge=0, le=MAX_INT, description="Return turns numbered above this."),
    limit: int = Query(100, ge=1, le=PAGE_LIMIT_MAX),
):
    """Turns in order: user message, tool calls, assistant response (or null)."""
    session = _session(request, id)
    last = min(session.turn_count, after + limit)
    page = engine.turns(session, numbers=range(after + 1, last + 1)) if last > after else []
    return {
        "items": [turn_out(t) for t in page],
        "count": session.turn_count,
        "after": after,
        "limit": limit,
        "next_after": last if last < session.turn_count else None,
    }


@endpoint("GET", "/sessions/{id}/turns/{n}", {200: TurnOut}, raises=LOOKUP, tags=["turns"])
def get_turn(request: HttpRequest, id: str, n: int):
    """One turn; 404 for 0 or a number past the current turn."""
    session = _session(request, id)
    turn = engine.get_turn(session, n)
    if turn is None:
        raise NotFound(f"Session {id} has no turn {n} (it has {session.turn_count}).")
    return turn_out(turn)


# ---------------------------------------------------------------------------------------------
# State


@endpoint("GET", "/sessions/{id}/state", {200: StateOut}, raises=LOOKUP, tags=["state"])
def get_state(request: HttpRequest, id: str):
    session = _session(request, id)
    return {"variables": session.variables, "data": session.data}


@endpoint("DELETE", "/sessions/{id}/state", {204: None}, raises=(*LOOKUP, engine.SessionExpired), tags=["state"])
def clear_state(request: HttpRequest, id: str):
    """Remove every variable and data entry."""
    _check_id(id)
    engine.state_clear(id, owner=_user(request))
    return Status(204, None)


@endpoint("GET", "/sessions/{id}/state/variables/{key}", {200: VariableOut}, raises=LOOKUP, tags=["state"])
def get_variable(request: HttpRequest, id: str, key: str):
    value = engine.state_get(_session(request, id), key)
    if value is None:
        raise NotFound(f"No variable {key!r}.")
    return {"key": key, "value": value}


@endpoint(
    "PUT",
    "/sessions/{id}/state/variables/{key}",
    {200: VariableOut},
    raises=(*LOOKUP, engine.SessionExpired, engine.SessionValidationError, engine.InputTooLarge),
    tags=["state"],
)
def set_variable(request: HttpRequest, id: str, key: str, payload: VariableIn):
    """Set a string variable."""
    _check_id(id)
    engine.state_set(id, key, payload.value, owner=_user(request))
    return {"key": key, "value": payload.value}


@endpoint(
    "DELETE",
    "/sessions/{id}/state/variables/{key}",
    {204: None},
    raises=(*LOOKUP, engine.SessionExpired),
    tags=["state"],
)
def delete_variable(request: HttpRequest, id: str, key: str):
    """404 when there was no such variable, as the removal itself finds (under the session's lock)."""
    _check_id(id)
    with transaction.atomic():  # a 404 rolls back the removal's touch: a failed request changes nothing
        if engine.state_remove(id, key, owner=_user(request)) is None:
            raise NotFound(f"No variable {key!r}.")
    return Status(204, None)


@endpoint("GET", "/sessions/{id}/state/data/{key}", {200: DataOut}, raises=LOOKUP, tags=["state"])
def get_data(request: HttpRequest, id: str, key: str):
    session = _session(request, id)
    if not engine.state_has_data(session, key):
        raise NotFound(f"No data entry {key!r}.")
    return {"key": key, "value": engine.state_get_data(session, key)}


@endpoint(
    "PUT",
    "/sessions/{id}/state/data/{key}",
    {200: DataOut},
    raises=(
        *LOOKUP,
        engine.SessionExpired,
        engine.SessionValidationError,
        engine.SerializationError,
        engine.InputTooLarge,
    ),
    tags=["state"],
)
def set_data(request: HttpRequest, id: str, key: str, payload: DataIn):
    """Store any JSON value."""
    _check_id(id)
    stored = engine.state_set_data(id, key, payload.value, owner=_user(request))
    return {"key": key, "value": stored}


@endpoint(
    "DELETE", "/sessions/{id}/state/data/{key}", {204: None}, raises=(*LOOKUP, engine.SessionExpired), tags=["state"]
)
def delete_data(request: HttpRequest, id: str, key: str):
    """404 when there was no such entry, as the removal itself finds (under the session's lock)."""
    _check_id(id)
    with transaction.atomic():  # as delete_variable
        if not engine.state_remove_data(id, key, owner=_user(request)):
            raise NotFound(f"No data entry {key!r}.")
    return Status(204, None)


# ---------------------------------------------------------------------------------------------
# Search


@endpoint("GET", "/search", {200: SearchPageOut}, raises=(engine.SessionValidationError,), tags=["search"])
def search(
    request: HttpRequest,
    q: str = Query(..., description='Words (all must appear), "a phrase", -excluded, or: websearch syntax.'),
    limit: int = Query(search_engine.DEFAULT_LIMIT, ge=1, le=search_engine.MAX_LIMIT),
    cursor: str | None = Query(None, description="The next_cursor of the previous page."),
):
    """Search the caller's conversations: titles, then message content over the whole history (also the
    messages that left a session's list), best match first. 422 for a query with nothing to search
    for, a bad limit or a cursor that is not this search's."""
    page = search_engine.search(_user(request), q, limit=limit, cursor=cursor)
    return {
        "items": [search_result_out(hit) for hit in page.hits],
        "q": page.query.canonical,
        "limit": limit,
        "next_cursor": page.next_cursor,
    }


# ---------------------------------------------------------------------------------------------
# Export and import (sessions_app.transfer; the format: docs/export-format.md)


# The exports' documented bodies (the full schema of convo.export/1 is docs/convo-export-1.schema.json).
EXPORT_DOCUMENT = {
    "type": "object",
    "description": "A convo.export/1 document (docs/export-format.md).",
    "required": ["format", "id", "messages", "turns"],
    "properties": {"format": {"const": transfer.FORMAT}},
}


@endpoint(
    "GET",
    "/sessions/{id}/export",
    {200: None},
    raises=LOOKUP,
    tags=["export"],
    openapi_extra={
        "responses": {
            200: {
                "description": "The conversation, as an attachment.",
                "content": {
                    "application/json": {"schema": EXPORT_DOCUMENT},
                    "text/markdown": {"schema": {"type": "string"}},
                },
            }
        }
    },
)
def export_session(
    request: HttpRequest,
    id: str,
    format: Literal["json", "markdown"] = Query("json", description="json (convo.export/1) or markdown."),
):
    """The whole conversation (every stored message, its turns, state, config and lineage) as a
    ``convo.export/1`` JSON document or as Markdown, streamed as an attachment."""
    session = _session(request, id)
    name = transfer.filename_part(session.sid)
    if format == "markdown":
        pieces, content_type, filename = transfer.iter_markdown(session), "text/markdown; charset=utf-8", f"{name}.md"
    else:
        pieces, content_type, filename = transfer.iter_json(session), "application/json", f"{name}.json"
    return transfer.streaming_response(request, pieces, content_type=content_type, filename=filename)


@endpoint(
    "GET",
    "/export",
    {200: None},
    tags=["export"],
    openapi_extra={
        "responses": {
            200: {
                "description": "A zip with one convo.export/1 JSON file per conversation.",
                "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            }
        }
    },
)
def export_all(request: HttpRequest):
    """All of the caller's conversations as a zip of ``convo.export/1`` JSON files, streamed."""
    user = _user(request)
    filename = f"convo-export-{transfer.filename_part(user.get_username())}-{_now():%Y%m%d-%H%M%S}.zip"
    return transfer.streaming_response(
        request, transfer.iter_zip(transfer.user_sessions(user)), content_type="application/zip", filename=filename
    )


@endpoint(
    "POST",
    "/import",
    {201: ImportOut},
    raises=(transfer.ImportInvalid, transfer.ImportTooLarge),
    tags=["export"],
    openapi_extra={
        "requestBody": {
            "description": "The file: a Convo export (JSON, JSON Lines or the zip of GET /export), ChatGPT's "
            "conversations.json or an Open WebUI chat export; as the body itself, or as the multipart field 'file'.",
            "content": {
                "application/json": {"schema": {}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                },
            },
        }
    },
)
def import_sessions(request: HttpRequest):
    """Import conversations as new ones of the caller's (an id already taken gets a new one). The file
    is checked whole first: a bad one imports nothing and the error names the conversation and field."""
    result = transfer.import_bytes(_upload(request), owner=_user(request))
    items = [
        {
            "id": c.id,
            "requested_id": c.requested_id if c.renamed else None,
            "title": c.session.title,
            "messages": c.messages,
        }
        for c in result.imported
    ]
    return Status(201, {"format": result.format_name, "items": items, "count": len(items)})


def _upload(request: HttpRequest) -> bytes:
    """The uploaded file: the multipart field ``file``, or the body itself (read up to the limit)."""
    limit = settings.CONVO_IMPORT_MAX_BYTES
    if request.content_type == "multipart/form-data":
        upload = request.FILES.get("file")
        if upload is None:
            raise transfer.ImportInvalid("Send the file as the multipart field 'file' (or as the request body).")
        transfer.check_size(upload.size)
        return upload.read()
    raw = request.read(limit + 1)
    transfer.check_size(len(raw))
    if not raw:
        raise transfer.ImportInvalid("The request body is empty: send the file as the body.")
    return raw
