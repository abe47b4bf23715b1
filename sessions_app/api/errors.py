"""The API's errors: the one table of exception → (HTTP status, error code), the handlers that
answer with it, and the error responses each operation documents.

Every error is ``{"error": "<code>", "detail": "<message>"}``; the detail is the exception's text.
An endpoint lists the exceptions its body can raise (``raises=``); the ones its request can raise
before it runs (no credentials, a CSRF failure, an unreadable or too large body, an invalid
parameter) follow from its method and signature (``request_errors``). Its documented responses
are the statuses of both, looked up here.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from pydantic import BaseModel

from .. import engine, replies, transfer
from .idempotency import IdempotencyKeyInvalid, IdempotencyKeyReused

logger = logging.getLogger(__name__)

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}  # where a browser session must pass CSRF
BODY_METHODS = {"POST", "PUT", "PATCH"}


class ApiError(Exception):
    """An error the API finds itself (the engine raises its own); ``str(exc)`` is the detail."""

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.headers = dict(headers or {})


class MalformedJSON(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class CsrfFailed(ApiError):
    pass


class NotFound(ApiError):
    pass


class MethodNotAllowed(ApiError):
    pass


class BodyTooLarge(ApiError):
    pass


class InvalidInput(ApiError):
    pass


class RateLimited(ApiError):
    """More requests than CONVO_API_RATE_LIMIT a minute with one key (headers: Retry-After)."""


class InternalError(ApiError):
    pass


# The one table. A class's entry covers its subclasses (the most specific entry wins).
ERRORS: dict[type[Exception], tuple[int, str]] = {
    MalformedJSON: (400, "malformed_json"),
    Unauthorized: (401, "unauthorized"),
    CsrfFailed: (403, "csrf_failed"),
    NotFound: (404, "not_found"),
    engine.SessionNotFound: (404, "not_found"),
    MethodNotAllowed: (405, "method_not_allowed"),
    engine.SessionAlreadyExists: (409, "session_exists"),
    replies.ReplyInProgress: (409, "reply_in_progress"),
    replies.NothingToReply: (409, "nothing_to_reply"),
    replies.TooManyReplies: (409, "too_many_replies"),
    IdempotencyKeyReused: (409, "idempotency_key_reused"),
    engine.SessionExpired: (410, "session_expired"),
    BodyTooLarge: (413, "body_too_large"),
    engine.InputTooLarge: (413, "content_too_large"),
    transfer.ImportTooLarge: (413, "import_too_large"),
    transfer.ImportInvalid: (422, "import_invalid"),
    InvalidInput: (422, "validation_error"),
    RateLimited: (429, "rate_limited"),
    engine.SessionValidationError: (422, "validation_error"),
    engine.SerializationError: (422, "validation_error"),
    IdempotencyKeyInvalid: (422, "validation_error"),
    # Any endpoint can meet these, so no operation lists them (nor documents them). A database that
    # cannot be reached is a 503 wherever it shows (the engine wraps its own failures in StorageError;
    # a lost connection met outside the engine, e.g. loading the login session, is the same failure).
    InternalError: (500, "internal_error"),
    engine.StorageError: (503, "storage_error"),
    OperationalError: (503, "storage_error"),
    InterfaceError: (503, "storage_error"),
}


def status_and_code(exc_class: type[Exception]) -> tuple[int, str]:
    for cls in exc_class.__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    raise LookupError(f"{exc_class.__name__} is not in the API's error table.")


def error_response(exc: Exception, **headers: str) -> JsonResponse:
    """The error's JSON response: status and code from the table, ``str(exc)`` as the detail."""
    status, code = status_and_code(type(exc))
    response = JsonResponse({"error": code, "detail": str(exc)}, status=status)
    own = exc.headers if isinstance(exc, ApiError) else {}
    for name, value in {**own, **headers}.items():
        response[name.replace("_", "-")] = value
    return response


def too_big() -> BodyTooLarge:
    limit = settings.CONVO_API_MAX_BODY_BYTES
    return BodyTooLarge(f"The request body is larger than {limit} bytes.")


# ---------------------------------------------------------------------------------------------
# What each operation documents


def request_errors(method: str, view: Callable[..., Any]) -> list[type[Exception]]:
    """The exceptions a request can raise before the endpoint runs: every operation needs
    credentials and counts against the caller's rate limit; an unsafe method passes CSRF (browser
    sessions); a JSON body can be unreadable, too large or invalid; any parameter that is not a
    plain string can be invalid."""
    raised: list[type[Exception]] = [Unauthorized, RateLimited]
    if method in UNSAFE_METHODS:
        raised.append(CsrfFailed)
    hints = typing.get_type_hints(view)
    parameters = [hint for name, hint in hints.items() if name not in ("request", "response", "return")]
    if any(_is_body(hint) for hint in parameters):
        raised += [MalformedJSON, BodyTooLarge, InvalidInput]
    elif any(hint is not str for hint in parameters):
        raised.append(InvalidInput)
    return raised


def _is_body(hint: Any) -> bool:
    options = typing.get_args(hint) or (hint,)
    return any(isinstance(option, type) and issubclass(option, BaseModel) for option in options)


def documented_statuses(raises: Iterable[type[Exception]]) -> list[int]:
    return sorted({status_and_code(exc_class)[0] for exc_class in raises})


# ---------------------------------------------------------------------------------------------
# Handlers


def install_handlers(api: NinjaAPI) -> None:
    """Answer every exception in the API's error shape: the table's classes as they are, Django's
    and Ninja's own translated into the table's."""
    for exc_class in ERRORS:
        api.add_exception_handler(exc_class, _answer)
    api.add_exception_handler(ValidationError, lambda request, exc: error_response(_invalid_input(exc)))
    api.add_exception_handler(HttpError, _http_error)
    api.add_exception_handler(Http404, lambda request, exc: error_response(NotFound("Not found.")))
    api.add_exception_handler(RequestDataTooBig, lambda request, exc: error_response(too_big()))
    api.add_exception_handler(Exception, _unexpected)


def _answer(request: HttpRequest, exc: Exception) -> HttpResponse:
    return error_response(exc)


def _invalid_input(exc: ValidationError) -> InvalidInput:
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
    return InvalidInput("; ".join(problems) or "Invalid request.")


def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    """Ninja's own errors: no valid credentials (401) and a body it cannot parse (400)."""
    if isinstance(exc, AuthenticationError) or exc.status_code == 401:
        detail = exc.message if exc.message != "Unauthorized" else "Authentication required."
        return error_response(
            Unauthorized(
                f"{detail} Send 'Authorization: Bearer <key>' (keys: /settings/api-keys/).",
                {"WWW-Authenticate": 'Bearer realm="convo"'},
            )
        )
    if exc.status_code == 400:
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            why = "it is not UTF-8"
        elif isinstance(cause, RecursionError):
            why = "it is nested too deeply"
        else:
            why = str(cause) if cause else "unreadable"
        return error_response(MalformedJSON(f"The request body is not valid JSON: {why}."))
    return JsonResponse({"error": "error", "detail": str(exc)}, status=exc.status_code)  # none raised today


def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("Unexpected error in %s %s", request.method, request.path)
    return error_response(InternalError("Something went wrong on the server."))
