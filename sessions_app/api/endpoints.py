"""The JSON API for agents, bots and services (/api/v1), on Django Ninja.

Every endpoint parses and checks its input, calls the session engine, and renders what the engine
returns; the engine decides everything else. Authentication: a personal API key
(``Authorization: Bearer <key>``) or a logged-in browser session (with CSRF on unsafe methods).
Sessions are scoped to the caller: another user's session is "not found", exactly like a missing one.

Every error is ``{"error": "<code>", "detail": "<message>"}``:
400 malformed_json, 401 unauthorized, 403 csrf_failed, 404 not_found, 405 method_not_allowed,
409 session_exists / idempotency_key_reused, 410 session_expired, 413 body_too_large /
content_too_large, 422 validation_error, 503 storage_error.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from ninja import Header, NinjaAPI, Query, Status, Swagger
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser

from .. import engine, replies
from . import idempotency
from .auth import BearerKeyAuth, BrowserSessionAuth
from .schemas import (
    MAX_INT,
    PAGE_LIMIT_MAX,
    ContextOut,
    DataIn,
    DataOut,
    ErrorOut,
    MessageAppendOut,
    MessageIn,
    MessagePageOut,
    ReplyIn,
    ReplyOut,
    ReplyStopOut,
    SessionCreateIn,
    SessionFieldsIn,
    SessionOut,
    SessionPageOut,
    StateOut,
    TurnOut,
    TurnPageOut,
    VariableIn,
    VariableOut,
    message_out,
    session_out,
    session_summary_out,
    turn_out,
)

logger = logging.getLogger(__name__)

BODY_METHODS = {"POST", "PUT", "PATCH"}
MAX_SEQ = 2**63 - 1  # sequence numbers are 64-bit


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def error_response(status: int, code: str, detail: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": code, "detail": detail}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


class StrictJSONParser(Parser):
    """JSON as RFC 8259 has it: UTF-8, and no NaN or Infinity (Python's json accepts those)."""

    def parse_body(self, request: HttpRequest) -> Any:
        def refuse(constant: str) -> Any:
            raise ValueError(f"{constant} is not valid JSON")

        return json.loads(request.body.decode("utf-8"), parse_constant=refuse)


class ConvoAPI(NinjaAPI):
    """NinjaAPI whose every URL answers in the API's error shape, even before Ninja runs: a body
    over the size limit (413) and a method the path does not have (405)."""

    def _get_urls(self):
        urls = super()._get_urls()
        for pattern in urls:
            if isinstance(pattern, URLPattern):
                pattern.callback = _guard(pattern.callback)
        return urls


def _guard(view):
    @functools.wraps(view)  # keeps csrf_exempt: CSRF is checked by BrowserSessionAuth
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method in BODY_METHODS:
            limit = settings.CONVO_API_MAX_BODY_BYTES
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                return _too_big(limit)
            try:
                body = request.body
            except RequestDataTooBig:
                return _too_big(limit)
            if len(body) > limit:
                return _too_big(limit)
        try:
            response = view(request, *args, **kwargs)
        except Http404:
            return error_response(404, "not_found", "No such API endpoint.")
        if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/json"):
            allowed = response.get("Allow", "")
            return error_response(
                405, "method_not_allowed", f"{request.method} is not allowed here (allowed: {allowed}).", Allow=allowed
            )
        return response

    return guarded


def _too_big(limit: int) -> JsonResponse:
    return error_response(413, "body_too_large", f"The request body is larger than {limit} bytes.")


api = ConvoAPI(
    title="Convo API",
    version="1",
    description=(
        "Conversation-state service: create or resume sessions, append messages, read the "
        "token-budgeted context window, keep per-session state. Authenticate with "
        "`Authorization: Bearer <key>` (create keys at /settings/api-keys/). Errors are "
        '`{"error": "<code>", "detail": "<message>"}`.'
    ),
    auth=[BearerKeyAuth(), BrowserSessionAuth()],
    parser=StrictJSONParser(),
    urls_namespace="api",
    docs_url="/docs",
    # Swagger UI from django-ninja's bundled static files ("ninja" in INSTALLED_APPS); no online
    # validator badge, so the page makes no request outside this server.
    docs=Swagger(settings={"validatorUrl": None, "persistAuthorization": True}),
    openapi_url="/openapi.json",
)


# ---------------------------------------------------------------------------------------------
# Errors


def _handler(status: int, code: str):
    def handle(request: HttpRequest, exc: Exception) -> HttpResponse:
        return error_response(status, code, str(exc))

    return handle


api.add_exception_handler(engine.SessionNotFound, _handler(404, "not_found"))
api.add_exception_handler(engine.SessionExpired, _handler(410, "session_expired"))
api.add_exception_handler(engine.SessionAlreadyExists, _handler(409, "session_exists"))
api.add_exception_handler(engine.SessionValidationError, _handler(422, "validation_error"))
api.add_exception_handler(engine.SerializationError, _handler(422, "validation_error"))
api.add_exception_handler(engine.StorageError, _handler(503, "storage_error"))
api.add_exception_handler(replies.ReplyInProgress, _handler(409, "reply_in_progress"))
api.add_exception_handler(replies.NothingToReply, _handler(409, "nothing_to_reply"))
api.add_exception_handler(idempotency.IdempotencyKeyReused, _handler(409, "idempotency_key_reused"))
api.add_exception_handler(idempotency.IdempotencyKeyInvalid, _handler(422, "validation_error"))


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(exc.status, exc.code, exc.detail)


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = []
    for err in exc.errors:
        # Ninja prefixes the location with the parameter name (e.g. body.payload.role): drop it.
        loc = [str(part) for part in err.get("loc", ())]
        if len(loc) > 1 and loc[0] == "body":
            loc = loc[2:] or ["body"]
        where = ".".join(loc) or "request"
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append(f"{where}: {msg}")
    return error_response(422, "validation_error", "; ".join(problems) or "Invalid request.")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc, AuthenticationError) or exc.status_code == 401:
        detail = exc.message if exc.message != "Unauthorized" else "Authentication required."
        return error_response(
            401,
            "unauthorized",
            f"{detail} Send 'Authorization: Bearer <key>' (keys: /settings/api-keys/).",
            WWW_Authenticate='Bearer realm="convo"',
        )
    if exc.status_code == 400:
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            why = "it is not UTF-8"
        elif isinstance(cause, RecursionError):
            why = "it is nested too deeply"
        else:
            why = str(cause) if cause else "unreadable"
        return error_response(400, "malformed_json", f"The request body is not valid JSON: {why}.")
    if exc.status_code == 403:
        return error_response(403, "csrf_failed", str(exc))
    return error_response(exc.status_code, "error", str(exc))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(404, "not_found", "Not found.")


@api.exception_handler(RequestDataTooBig)
def _request_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _too_big(settings.CONVO_API_MAX_BODY_BYTES)


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("Unexpected error in %s %s", request.method, request.path)
    return error_response(500, "internal_error", "Something went wrong on the server.")


@csrf_exempt
def not_found_view(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/v1/ (including ids with an encoded '/'): JSON 404, not an HTML page."""
    return error_response(404, "not_found", "No such API endpoint.")


# ---------------------------------------------------------------------------------------------
# Helpers


def _errors(*statuses: int) -> dict[int, type[ErrorOut]]:
    return dict.fromkeys((401, *statuses), ErrorOut)


def _user(request: HttpRequest) -> Any:
    return request.auth  # set by the authentication classes: the key's user or the session's


def _check_id(session_id: str) -> None:
    """An id that cannot exist (bad characters, too long, NUL...) is simply not found."""
    try:
        engine.validate_session_id(session_id)
    except engine.SessionValidationError:
        raise ApiError(404, "not_found", "Session not found.") from None


def _session(request: HttpRequest, session_id: str):
    """The caller's session, expired or not."""
    _check_id(session_id)
    return engine.session_get(session_id, owner=_user(request))


def _check_id_in_url(session_id: str) -> str:
    return engine.validate_session_id(session_id)


def _check_content(name: str, text: str | None) -> None:
    limit = settings.CONVO_MAX_CONTENT_CHARS
    if text is not None and len(text) > limit:
        raise ApiError(413, "content_too_large", f"{name} is longer than {limit} characters.")


def _now():
    return timezone.now()


# ---------------------------------------------------------------------------------------------
# Sessions


@api.post("/sessions", response={201: SessionOut, **_errors(400, 403, 409, 413, 422)}, tags=["sessions"])
def create_session(request: HttpRequest, payload: SessionCreateIn):
    """Create a session. 409 when the id is in use (by anyone)."""
    if payload.id is not None:
        _check_id_in_url(payload.id)
    _check_content("system_prompt", payload.system_prompt)
    session = engine.session_create(
        payload.id,
        owner=_user(request),
        system_prompt=payload.system_prompt,
        metadata=payload.metadata,
        config=payload.config.to_engine(),
    )
    return Status(201, session_out(session, _now()))


@api.put(
    "/sessions/{id}", response={200: SessionOut, 201: SessionOut, **_errors(400, 403, 404, 413, 422)}, tags=["sessions"]
)
def get_or_create_session(request: HttpRequest, id: str, payload: SessionFieldsIn | None = None):
    """The spec's get_or_create: 200 with the live session; 201 when it was created, or replaced
    because it had expired. The body's fields apply only to a newly created session."""
    _check_id_in_url(id)
    payload = payload or SessionFieldsIn()
    _check_content("system_prompt", payload.system_prompt)
    session, created = engine.session_get_or_create(
        id,
        owner=_user(request),
        system_prompt=payload.system_prompt,
        metadata=payload.metadata,
        config=payload.config.to_engine(),
    )
    return Status(201 if created else 200, session_out(session, _now()))


@api.get("/sessions", response={200: SessionPageOut, **_errors(422)}, tags=["sessions"])
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
    return {
        "items": [session_summary_out(s, now) for s in page],
        "count": count,
        "offset": offset,
        "limit": limit,
        "next_offset": offset + limit if offset + limit < count else None,
    }


@api.get("/sessions/{id}", response={200: SessionOut, **_errors(404)}, tags=["sessions"])
def get_session(request: HttpRequest, id: str):
    """The session, expired or not (``expired`` says which)."""
    return session_out(_session(request, id), _now())


@api.delete("/sessions/{id}", response={204: None, **_errors(403, 404)}, tags=["sessions"])
def delete_session(request: HttpRequest, id: str):
    _check_id(id)
    engine.session_delete(id, owner=_user(request))
    return Status(204, None)


@api.post("/sessions/{id}/clear", response={200: SessionOut, **_errors(403, 404, 410)}, tags=["sessions"])
def clear_session(request: HttpRequest, id: str):
    """The spec's clear_messages: every message and turn goes, except the pinned system prompt
    when persist_system_prompt; turn numbering restarts."""
    _check_id(id)
    session = engine.session_clear_messages(id, owner=_user(request))
    return session_out(session, _now())


# ---------------------------------------------------------------------------------------------
# Messages


@api.post(
    "/sessions/{id}/messages",
    response={201: MessageAppendOut, **_errors(400, 403, 404, 409, 410, 413, 422)},
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
    _check_content("content", payload.content)
    user = _user(request)

    def append() -> dict[str, Any]:
        reply = None
        if payload.respond:
            # One transaction: while a reply runs, the message is refused (409) and nothing stored.
            message, reply = replies.append_and_reply(
                id, payload.content, owner=user, name=payload.name, metadata=payload.metadata
            )
        else:
            message = engine.message_append(
                id,
                payload.role,
                payload.content,
                name=payload.name,
                tool_call_id=payload.tool_call_id,
                metadata=payload.metadata,
                owner=user,
            )
        out = message_out(message)
        if reply is not None:
            out["reply"] = replies.reply_summary(reply)
        return MessageAppendOut.model_validate(out).model_dump(mode="json", exclude_unset=True)

    if idempotency_key is None:
        return Status(201, append())
    idempotency.check_key(idempotency_key)
    result, replayed = idempotency.run_once(user, idempotency_key, id, payload.model_dump(mode="json"), append)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return Status(201, result)


@api.get("/sessions/{id}/messages", response={200: MessagePageOut, **_errors(404, 422)}, tags=["messages"])
def list_messages(
    request: HttpRequest,
    id: str,
    after: int = Query(0, ge=0, le=MAX_SEQ, description="Return messages with a sequence number above this."),
    limit: int = Query(100, ge=1, le=PAGE_LIMIT_MAX),
):
    """The session's message list, in order, from ``after`` on."""
    session = _session(request, id)
    page = engine.messages_page(session, after=after, limit=limit)
    more = len(page) == limit and page[-1].seq < session.last_seq
    return {
        "items": [message_out(m) for m in page],
        "count": session.message_count,
        "after": after,
        "limit": limit,
        "next_after": page[-1].seq if more else None,
    }


@api.get("/sessions/{id}/context", response={200: ContextOut, **_errors(404, 422)}, tags=["messages"])
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


@api.post(
    "/sessions/{id}/reply", response={202: ReplyOut, **_errors(400, 403, 404, 409, 410, 413, 422)}, tags=["replies"]
)
def start_reply(request: HttpRequest, id: str, payload: ReplyIn | None = None):
    """Start the assistant's reply to the last turn (retry an open turn, or ``regenerate`` a complete
    one: the new response completes the turn and the previous one stays in the message list).
    The reply runs in the background and streams to open chat pages; poll GET /sessions/{id}/reply."""
    _check_id(id)
    reply = replies.start_reply(id, owner=_user(request), regenerate=bool(payload and payload.regenerate))
    return Status(202, replies.reply_summary(reply))


@api.get("/sessions/{id}/reply", response={200: ReplyOut, **_errors(404)}, tags=["replies"])
def get_reply(request: HttpRequest, id: str):
    """The session's latest reply (running or finished); 404 when it has none."""
    session = _session(request, id)
    reply = replies.latest_reply(session)
    if reply is None:
        raise ApiError(404, "not_found", "This session has no reply yet.")
    return replies.reply_summary(reply)


@api.post("/sessions/{id}/reply/stop", response={200: ReplyStopOut, **_errors(403, 404)}, tags=["replies"])
def stop_reply(request: HttpRequest, id: str):
    """Stop the running reply: cancels the provider call itself and stores the partial text with
    finish reason ``stopped``. ``stopped`` is false when no reply was running."""
    _check_id(id)
    user = _user(request)
    running = replies.running_reply(engine.session_get(id, owner=user))
    stopped = replies.stop_reply(id, owner=user)
    reply = replies.wait_reply(running.pk, timeout=5) if stopped and running is not None else None
    return {"stopped": stopped, "reply": replies.reply_summary(reply) if reply else None}


# ---------------------------------------------------------------------------------------------
# Turns


@api.get("/sessions/{id}/turns", response={200: TurnPageOut, **_errors(404, 422)}, tags=["turns"])
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


@api.get("/sessions/{id}/turns/{n}", response={200: TurnOut, **_errors(404, 422)}, tags=["turns"])
def get_turn(request: HttpRequest, id: str, n: int):
    """One turn; 404 for 0 or a number past the current turn."""
    session = _session(request, id)
    turn = engine.get_turn(session, n)
    if turn is None:
        raise ApiError(404, "not_found", f"Session {id} has no turn {n} (it has {session.turn_count}).")
    return turn_out(turn)


# ---------------------------------------------------------------------------------------------
# State


@api.get("/sessions/{id}/state", response={200: StateOut, **_errors(404)}, tags=["state"])
def get_state(request: HttpRequest, id: str):
    session = _session(request, id)
    return {"variables": session.variables, "data": session.data}


@api.delete("/sessions/{id}/state", response={204: None, **_errors(403, 404, 410)}, tags=["state"])
def clear_state(request: HttpRequest, id: str):
    """Remove every variable and data entry."""
    _check_id(id)
    engine.state_clear(id, owner=_user(request))
    return Status(204, None)


@api.get("/sessions/{id}/state/variables/{key}", response={200: VariableOut, **_errors(404)}, tags=["state"])
def get_variable(request: HttpRequest, id: str, key: str):
    value = engine.state_get(_session(request, id), key)
    if value is None:
        raise ApiError(404, "not_found", f"No variable {key!r}.")
    return {"key": key, "value": value}


@api.put(
    "/sessions/{id}/state/variables/{key}",
    response={200: VariableOut, **_errors(400, 403, 404, 410, 413, 422)},
    tags=["state"],
)
def set_variable(request: HttpRequest, id: str, key: str, payload: VariableIn):
    """Set a string variable."""
    _check_id(id)
    _check_content("value", payload.value)
    engine.state_set(id, key, payload.value, owner=_user(request))
    return {"key": key, "value": payload.value}


@api.delete("/sessions/{id}/state/variables/{key}", response={204: None, **_errors(403, 404, 410)}, tags=["state"])
def delete_variable(request: HttpRequest, id: str, key: str):
    session = _session(request, id)
    if engine.state_get(session, key) is None:
        raise ApiError(404, "not_found", f"No variable {key!r}.")
    engine.state_remove(id, key, owner=_user(request))
    return Status(204, None)


@api.get("/sessions/{id}/state/data/{key}", response={200: DataOut, **_errors(404)}, tags=["state"])
def get_data(request: HttpRequest, id: str, key: str):
    session = _session(request, id)
    if not engine.state_has_data(session, key):
        raise ApiError(404, "not_found", f"No data entry {key!r}.")
    return {"key": key, "value": engine.state_get_data(session, key)}


@api.put(
    "/sessions/{id}/state/data/{key}",
    response={200: DataOut, **_errors(400, 403, 404, 410, 413, 422)},
    tags=["state"],
)
def set_data(request: HttpRequest, id: str, key: str, payload: DataIn):
    """Store any JSON value."""
    _check_id(id)
    stored = engine.state_set_data(id, key, payload.value, owner=_user(request))
    return {"key": key, "value": stored}


@api.delete("/sessions/{id}/state/data/{key}", response={204: None, **_errors(403, 404, 410)}, tags=["state"])
def delete_data(request: HttpRequest, id: str, key: str):
    session = _session(request, id)
    if not engine.state_has_data(session, key):
        raise ApiError(404, "not_found", f"No data entry {key!r}.")
    engine.state_remove_data(id, key, owner=_user(request))
    return Status(204, None)
