"""The API's error responses come from one table: each operation documents the statuses of the
exceptions it raises, and the handlers answer each of those exceptions with that status and code."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import RequestDataTooBig
from django.test import RequestFactory
from ninja.errors import AuthenticationError, HttpError, ValidationError

from sessions_app.api import api
from sessions_app.api.endpoints import RAISES
from sessions_app.api.errors import (
    ERRORS,
    BodyTooLarge,
    InvalidInput,
    MalformedJSON,
    Unauthorized,
    request_errors,
    status_and_code,
)

# What the OpenAPI document listed per operation before the table (hand-kept tuples then).
DOCUMENTED = {
    ("POST", "/sessions"): {201, 400, 401, 403, 409, 413, 422},
    ("GET", "/sessions"): {200, 401, 422},
    ("PUT", "/sessions/{id}"): {200, 201, 400, 401, 403, 404, 413, 422},
    ("GET", "/sessions/{id}"): {200, 401, 404},
    ("DELETE", "/sessions/{id}"): {204, 401, 403, 404},
    ("PATCH", "/sessions/{id}"): {200, 400, 401, 403, 404, 413, 422},  # issue 11: title, pinned, archived
    ("POST", "/sessions/{id}/clear"): {200, 401, 403, 404, 410},
    ("POST", "/sessions/{id}/branch"): {201, 400, 401, 403, 404, 413, 422},
    ("POST", "/sessions/{id}/messages"): {201, 400, 401, 403, 404, 409, 410, 413, 422},
    ("GET", "/sessions/{id}/messages"): {200, 401, 404, 422},
    ("GET", "/sessions/{id}/context"): {200, 401, 404, 422},
    ("POST", "/sessions/{id}/reply"): {202, 400, 401, 403, 404, 409, 410, 413, 422},
    ("GET", "/sessions/{id}/reply"): {200, 401, 404},
    ("POST", "/sessions/{id}/reply/stop"): {200, 401, 403, 404},
    ("GET", "/sessions/{id}/export"): {200, 401, 404, 422},
    ("GET", "/export"): {200, 401},
    ("POST", "/import"): {201, 401, 403, 413, 422},
    ("GET", "/sessions/{id}/turns"): {200, 401, 404, 422},
    ("GET", "/sessions/{id}/turns/{n}"): {200, 401, 404, 422},
    ("GET", "/sessions/{id}/state"): {200, 401, 404},
    ("DELETE", "/sessions/{id}/state"): {204, 401, 403, 404, 410},
    ("GET", "/sessions/{id}/state/variables/{key}"): {200, 401, 404},
    ("PUT", "/sessions/{id}/state/variables/{key}"): {200, 400, 401, 403, 404, 410, 413, 422},
    ("DELETE", "/sessions/{id}/state/variables/{key}"): {204, 401, 403, 404, 410},
    ("GET", "/sessions/{id}/state/data/{key}"): {200, 401, 404},
    ("PUT", "/sessions/{id}/state/data/{key}"): {200, 400, 401, 403, 404, 410, 413, 422},
    ("DELETE", "/sessions/{id}/state/data/{key}"): {204, 401, 403, 404, 410},
    ("GET", "/search"): {200, 401, 422},
}
# Since issue 9 every operation counts against the caller's rate limit, so each also documents 429.
DOCUMENTED = {operation: statuses | {429} for operation, statuses in DOCUMENTED.items()}

# The exceptions the request itself raises arrive as Ninja's and Django's own.
AS_RAISED = {
    Unauthorized: AuthenticationError(message="Invalid or revoked API key."),
    MalformedJSON: HttpError(400, "Cannot parse request body"),
    InvalidInput: ValidationError([{"loc": ("query", "limit"), "msg": "too big"}]),
    BodyTooLarge: RequestDataTooBig("too big"),
}


@pytest.fixture(scope="module")
def operations():
    spec = api.get_openapi_schema()
    return {
        (method.upper(), path.removeprefix("/api/v1")): {int(status) for status in operation["responses"]}
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }


def test_every_operation_documents_the_same_statuses_as_before(operations):
    assert operations == DOCUMENTED


def test_documented_error_statuses_are_those_of_the_exceptions_raised(operations):
    assert RAISES.keys() == operations.keys()
    for operation, statuses in operations.items():
        derived = {status_and_code(exc_class)[0] for exc_class in RAISES[operation]}
        assert derived == {status for status in statuses if status >= 400}, operation


def test_every_exception_raised_is_handled_with_its_status_and_code(rf: RequestFactory):
    request = rf.get("/api/v1/sessions")
    for operation, raised in RAISES.items():
        for exc_class in raised:
            status, code = status_and_code(exc_class)
            exc = AS_RAISED.get(exc_class) or exc_class("session-1")
            response = api.on_exception(request, exc)
            assert response.status_code == status, (operation, exc_class)
            assert json.loads(response.content)["error"] == code, (operation, exc_class)


def test_every_status_in_the_table_has_a_handler(rf: RequestFactory):
    request = rf.get("/api/v1/sessions")
    for exc_class, (status, code) in ERRORS.items():
        response = api.on_exception(request, exc_class("detail"))
        assert (response.status_code, json.loads(response.content)) == (
            status,
            {"error": code, "detail": str(exc_class("detail"))},
        )


def test_request_errors_follow_from_method_and_signature():
    def read(request, id: str):
        pass

    def page(request, id: str, limit: int = 10):
        pass

    assert {status_and_code(e)[0] for e in request_errors("GET", read)} == {401, 429}
    assert {status_and_code(e)[0] for e in request_errors("DELETE", read)} == {401, 403, 429}
    assert {status_and_code(e)[0] for e in request_errors("GET", page)} == {401, 422, 429}
