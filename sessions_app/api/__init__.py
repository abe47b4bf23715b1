"""The JSON API for agents, bots and services (/api/v1), on Django Ninja.

Every endpoint parses and checks its input, calls the session engine, and renders what the engine
returns; the engine decides everything else. Authentication: a personal API key
(``Authorization: Bearer <key>``) or a logged-in browser session (with CSRF on unsafe methods).
Sessions are scoped to the caller: another user's session is "not found", exactly like a missing one.

- ``errors``: the one exception → (status, code) table (``ERRORS``), the handlers, and what each
  operation documents. Every error is ``{"error": "<code>", "detail": "<message>"}``.
- ``endpoints``: one function per operation, registered with the exceptions it raises.
- ``schemas``: request and response bodies, and the serializers of models into them.
- ``auth``: Bearer key and browser-session authentication.
- ``idempotency``: the Idempotency-Key of appends.

Here: the NinjaAPI (``api``) and the guard that answers in the error shape before Ninja runs.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI, Swagger
from ninja.operation import Operation
from ninja.parser import Parser

from .. import transfer
from .auth import BearerKeyAuth, BrowserSessionAuth
from .endpoints import router
from .errors import BODY_METHODS, ERRORS, MethodNotAllowed, NotFound, error_response, install_handlers, too_big

__all__ = ["ERRORS", "api", "not_found_view"]


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
                pattern.callback = _guard(pattern.callback, str(pattern.pattern) in OWN_BODIES)
        return urls

    def get_openapi_operation_id(self, operation: Operation) -> str:
        # The ids clients were generated with, from when the endpoints lived in sessions_app/api.py.
        return "sessions_app_api_" + operation.view_func.__name__


# Paths whose view reads its (large) body itself, under CONVO_IMPORT_MAX_BYTES: the guard only refuses a
# declared length over that (the view counts what it reads).
OWN_BODIES = {"import"}


def _guard(view, own_body: bool = False):
    @functools.wraps(view)  # keeps csrf_exempt: CSRF is checked by BrowserSessionAuth
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method in BODY_METHODS and own_body:
            try:
                transfer.check_size(int(request.META.get("CONTENT_LENGTH") or 0))
            except ValueError:
                pass
            except transfer.ImportTooLarge as exc:
                return error_response(exc)
        elif request.method in BODY_METHODS:
            limit = settings.CONVO_API_MAX_BODY_BYTES
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                return error_response(too_big())
            try:
                body = request.body
            except RequestDataTooBig:
                return error_response(too_big())
            if len(body) > limit:
                return error_response(too_big())
        try:
            response = view(request, *args, **kwargs)
        except Http404:
            return error_response(NotFound("No such API endpoint."))
        if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/json"):
            allowed = response.get("Allow", "")
            return error_response(
                MethodNotAllowed(f"{request.method} is not allowed here (allowed: {allowed})."), Allow=allowed
            )
        return response

    return guarded


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
    docs=Swagger(settings={"validatorUrl": None, "persistAuthorization": False}),
    openapi_url="/openapi.json",
)
install_handlers(api)
api.add_router("", router)


@csrf_exempt
def not_found_view(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/v1/ (including ids with an encoded '/'): JSON 404, not an HTML page."""
    return error_response(NotFound("No such API endpoint."))
