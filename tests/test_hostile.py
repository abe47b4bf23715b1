"""The hostile battery: every route and method, with hostile path values, query strings, cookies and
bodies (NUL, lone surrogates as JSON escapes and as raw bytes, bad UTF-8, 10 MB bodies, deep JSON,
huge integers), as anonymous, as another user, as the owner and as an operator — and zero 5xx.
The websocket handshake and frames get the same treatment through the real ASGI stack.

Routes come from the URL resolver (every pattern, its parameters replaced) and the API's bodies
from its OpenAPI document, so a route added later is covered without editing this file. Run on
both databases: PostgreSQL is where a NUL reaching a query fails.

Every route gets every hostile value as the owner (the operator on the admin's routes). Anonymous
and the other user are turned away before a body or a parameter is used, so by default they get a
sample; ``CONVO_HOSTILE_FULL=1`` sends them everything too (about four times as long).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from urllib.parse import quote

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from convo_site.asgi import application
from sessions_app import engine, keys
from sessions_app.models import ConversationSession

pytestmark = pytest.mark.django_db(transaction=True)

FULL = os.environ.get("CONVO_HOSTILE_FULL") == "1"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
BODY_METHODS = ["POST", "PUT", "PATCH"]
TEN_MB = 10 * 1024 * 1024

# Path segments, already percent-encoded as a client would send them.
HOSTILE_SEGMENTS = {
    "nul-inside": "mine%00x",
    "surrogate": "%ED%A0%80",  # the UTF-8-style bytes of a lone surrogate
    "bad-utf8": "%FF%FEx",
    "long": "x" * 300,
    "dots": "..",
    "huge-int": "9" * 5000,
}
# Hostile text for query strings and form fields (percent-encoded bytes).
HOSTILE_QUERY_VALUES = ["a%00b", "%ED%A0%80", "%FF%FE", "9" * 5000]
QUERY_NAMES = [
    "session", "q", "before", "budget", "all", "offset", "limit", "after", "max_tokens", "expired",
    "owner__id__exact", "o", "p", "e", "next", "_changelist_filters", "created_at__gte",
]  # fmt: skip
FORM_FIELDS = [
    "session_id", "system_prompt", "max_messages", "max_tokens", "timeout_seconds", "persist_system_prompt",
    "role", "content", "name", "tool_call_id", "key", "value", "budget", "confirm", "username", "password",
    "password1", "password2", "csrfmiddlewaretoken", "action", "_selected_action", "post",
]  # fmt: skip
# A valid value for each path parameter, so that the others reach the view.
VALID_PARAMS = {"session_id": "mine", "id": "mine", "object_id": "mine", "key": "color", "n": "1", "key_id": "1"}

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_990 = "[" * 990 + "]" * 990
HUGE_INT = "1" * 5000


def _form(value: bytes) -> bytes:
    return b"&".join(name.encode() + b"=" + value for name in FORM_FIELDS)


# (content type, body): every hostile body sent to every POST, PUT and PATCH.
HOSTILE_FORMS = {
    "form-nul": _form(b"a%00b"),
    "form-surrogate-escaped": _form(b"%ED%A0%80"),
    "form-surrogate-raw": _form(b"\xed\xa0\x80"),
    "form-bad-utf8": _form(b"\xff\xfe\xc3"),
    "form-deep-json": _form(quote(DEEP).encode()),
    "form-deep-json-990": _form(quote(DEEP_990).encode()),
    "form-huge-int": _form(HUGE_INT.encode()),
    "form-10mb": b"content=" + b"x" * TEN_MB,
    "multipart-bad": b"--x\r\nContent-Disposition: form-data; name=\x00\r\n\r\n\xff\r\n--x--",
}
HOSTILE_JSON = {
    "json-nul": json.dumps({"content": "\x00", "value": "\x00", "id": "\x00"}).encode(),
    "json-surrogate-escape": b'{"role": "user", "content": "\\ud800", "value": "\\udc80"}',
    "json-surrogate-raw": b'{"role": "user", "content": "\xed\xa0\x80"}',
    "json-bad-utf8": b'{"role": "user", "content": "\xff\xfe"}',
    "json-deep": DEEP.encode(),
    "json-deep-990": DEEP_990.encode(),
    "json-huge-int": b'{"value": ' + HUGE_INT.encode() + b"}",
    "json-10mb": b'{"content": "' + b"x" * TEN_MB + b'"}',
    "json-not-json": b"\x00\x01\x02",
}
# What the API's string fields become, one at a time (the others stay valid); DataIn's value also
# becomes deep JSON and a huge integer (raw JSON text).
HOSTILE_API_VALUES = {
    "nul": json.dumps("a\x00b"),
    "surrogate": '"\\ud800"',
    "surrogate-pair-broken": '"\\udc80\\ud800"',
    "long": json.dumps("x" * 300_000),  # over every text limit, and the state's
    "deep": "[" * 990 + "]" * 990,
    "deep-65": "[" * 65 + "]" * 65,
    "huge-int": HUGE_INT,
    "big-object": json.dumps({f"k{i}": "v" * 100 for i in range(3000)}),
}
VALID_API_BODIES = {
    "SessionCreateIn": {"id": "fresh-1"},
    "SessionFieldsIn": {"system_prompt": "p"},
    "MessageIn": {"role": "user", "content": "hi"},
    "VariableIn": {"value": "v"},
    "DataIn": {"value": 1},
    "ReplyIn": {"regenerate": False},
    "BranchIn": {"at_seq": 1},
    "SessionPatchIn": {"title": "t", "pinned": True},
}


# ---------------------------------------------------------------------------------------------
# The routes.


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern)


def _template(route: str) -> str:
    """A route with its parameters as ``<name>``: regex routes are turned into the same form."""
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route)
    route = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", route)
    return "/" + route.replace("^", "").replace("$", "").replace("\\Z", "")


def routes() -> list[str]:
    return sorted({_template(r) for r in _walk(get_resolver().url_patterns)})


def _fill(template: str, values: dict[str, str]) -> str:
    return re.sub(r"<(\w+)>", lambda m: values.get(m.group(1), VALID_PARAMS.get(m.group(1), "x")), template)


def hostile_paths() -> list[str]:
    """Every route with each parameter, in turn, replaced by each hostile segment."""
    paths = []
    for template in routes():
        params = re.findall(r"<(\w+)>", template)
        for param in params:
            paths += [_fill(template, {param: segment}) for segment in HOSTILE_SEGMENTS.values()]
    return paths


# ---------------------------------------------------------------------------------------------
# The actors and their data.


@pytest.fixture
def actors(user, other_user, django_user_model, replies_env):
    """Clients for anonymous, another user, the owner and an operator (the API key in each)."""
    staff = django_user_model.objects.create_superuser("root", password="pw-root-123")
    clients = {"anonymous": Client(raise_request_exception=False)}
    for name, who in [("other", other_user), ("owner", user), ("staff", staff)]:
        _, secret = keys.create_api_key(who, "battery")
        client = Client(raise_request_exception=False, headers={"Authorization": f"Bearer {secret}"})
        client.force_login(who)
        clients[name] = client
    _ensure_sessions(user, other_user)
    return clients


def _ensure_sessions(user, other_user):
    """The sessions requests aim at (a DELETE may have removed one): the owner's and another's."""
    if ConversationSession.objects.filter(sid__in=["mine", "theirs"]).count() == 2:
        return
    if not ConversationSession.objects.filter(sid="mine").exists():
        engine.session_create("mine", owner=user, system_prompt="sys")
        engine.message_append("mine", "user", "hello")
        engine.state_set("mine", "color", "blue")
        engine.state_set_data("mine", "color", {"rgb": [0, 0, 255]})
    if not ConversationSession.objects.filter(sid="theirs").exists():
        engine.session_create("theirs", owner=other_user)


class Tally:
    """Every response's status; the 5xx ones with what caused them."""

    def __init__(self):
        self.count = 0
        self.statuses = Counter()
        self.failures = []

    def check(self, response, *what):
        self.count += 1
        self.statuses[response.status_code] += 1
        if response.status_code >= 500:
            self.failures.append((response.status_code, *what, response.content[:200]))

    def assert_no_5xx(self):
        assert not self.failures, f"{len(self.failures)} of {self.count} requests got a 5xx: {self.failures[:10]}"


def _send(client, method, path, body=b"", content_type="application/octet-stream", **extra):
    return client.generic(method, path, body, content_type=content_type, **extra)


# ---------------------------------------------------------------------------------------------
# HTTP.


def test_the_battery_covers_every_route():
    found = routes()
    for route in ["/c/<session_id>/send/", "/api/v1/sessions/<id>/state/data/<key>", "/admin/<url>", "/new/"]:
        assert route in found
    assert len(hostile_paths()) > 300


def _actors_for(template: str, actors: dict) -> dict:
    """Every actor; on the admin's routes, where any user who is not staff is sent to the login page
    like anonymous, anonymous and the operator."""
    if template.startswith("/admin/"):
        return {name: actors[name] for name in ("anonymous", "staff")}
    return actors


SAMPLE_SEGMENTS = {"mine%00x", "%ED%A0%80"}


def _methods(template: str, actor: str) -> list[str]:
    """Every method for the owner; the admin's views treat every method but POST as GET, so GET
    and POST there (and for the sample actors)."""
    if FULL or (actor == "owner" and not template.startswith("/admin/")):
        return METHODS
    return ["GET", "POST"]


def test_hostile_path_values_on_every_route_and_method_are_never_a_5xx(actors, user, other_user):
    tally = Tally()
    for template in routes():
        for param in re.findall(r"<(\w+)>", template):
            for segment in HOSTILE_SEGMENTS.values():
                path = _fill(template, {param: segment})
                for name, client in _actors_for(template, actors).items():
                    if name not in ("owner", "staff") and not FULL and segment not in SAMPLE_SEGMENTS:
                        continue
                    for method in _methods(template, name):
                        tally.check(_send(client, method, path), name, method, path)
        _ensure_sessions(user, other_user)
    tally.assert_no_5xx()
    assert tally.statuses[404] > 500


def test_hostile_query_strings_and_cookies_are_never_a_5xx(actors, user, other_user):
    tally = Tally()
    for template in routes():
        path = _fill(template, {})
        for value in HOSTILE_QUERY_VALUES:
            query = "&".join(f"{name}={value}" for name in QUERY_NAMES)
            for name, client in _actors_for(template, actors).items():
                if name in ("owner", "staff") or "%00" in value or FULL:
                    tally.check(client.get(f"{path}?{query}"), name, path, value[:10])
        _ensure_sessions(user, other_user)
    # Cookies and credentials are read the same way whatever the route: a few routes of each kind.
    for path in ["/", "/c/mine/", "/c/mine/send/", "/api/v1/sessions", "/api/v1/sessions/mine", "/admin/"]:
        # (WSGI carries header bytes as latin-1 text: "\xed\xa0\x80" is a lone surrogate's raw bytes.)
        for cookie in ["sessionid=\x00abcdefgh", "sessionid=abc%00defgh", "csrftoken=\x00", "sessionid=\xed\xa0\x80"]:
            client = Client(raise_request_exception=False, HTTP_COOKIE=cookie)
            tally.check(client.get(path), "cookie", path, cookie)
        for auth in ["Bearer \x00", "Bearer convo_\x00\x00\x00\x00\x00\x00\x00\x00", "Bearer " + "x" * 5000]:
            tally.check(Client(raise_request_exception=False, HTTP_AUTHORIZATION=auth).get(path), "auth", path)
    tally.assert_no_5xx()


def _bodies():
    for kind, body in HOSTILE_FORMS.items():
        multipart = kind.startswith("multipart")
        yield kind, body, "multipart/form-data; boundary=x" if multipart else "application/x-www-form-urlencoded"
    for kind, body in HOSTILE_JSON.items():
        yield kind, body, "application/json"


BODY_AGNOSTIC = {"/api/v1/openapi.json", "/api/v1/docs"}
FEW_BODIES = {"json-deep", "form-nul", "json-surrogate-escape"}
BIG_BODIES = {"form-10mb", "json-10mb"}  # once per route and method, as the owner (the operator on the admin)


def test_hostile_bodies_on_every_route_are_never_a_5xx(actors, user, other_user):
    """Every body to every route and body method as the owner (the operator on the admin); the
    anonymous and the other user, who are turned away before any body is read, get a few. Where the
    answer cannot depend on the body (a 405 to an empty body, the API's schema and docs) a few go."""
    tally = Tally()
    for template in routes():
        path = _fill(template, {})
        for method in BODY_METHODS:
            for name, client in _actors_for(template, actors).items():
                probe = _send(client, method, path)
                tally.check(probe, name, method, path, "empty")
                few = probe.status_code == 405 or template in BODY_AGNOSTIC
                few = few or not FULL and (name in ("anonymous", "other") or name == "staff" and method != "POST")
                for kind, body, content_type in _bodies():
                    if kind in BIG_BODIES:
                        if name != ("staff" if template.startswith("/admin/") else "owner") and not FULL:
                            continue
                    elif few and kind not in FEW_BODIES:
                        continue
                    tally.check(_send(client, method, path, body, content_type), name, method, path, kind)
                _ensure_sessions(user, other_user)
    tally.assert_no_5xx()


def _api_operations(client) -> list[tuple[str, str, str]]:
    """(method, path template, request schema name) of every API operation with a body."""
    spec = client.get("/api/v1/openapi.json").json()
    operations = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            # A body with a schema (the import's is a file of its own format: the route battery covers it).
            if content and ("$ref" in content["schema"] or "anyOf" in content["schema"]):
                schema = content["schema"]
                ref = schema.get("$ref") or next(s["$ref"] for s in schema.get("anyOf", []) if "$ref" in s)
                operations.append((method.upper(), path, ref.rsplit("/", 1)[1]))
    return operations


def test_hostile_api_bodies_field_by_field_are_4xx_and_store_nothing(actors, user, other_user):
    """Each field of each operation's body, in turn hostile (the others valid), from the OpenAPI
    document: never a 5xx; as the owner a 4xx that changed nothing (the state's `color` entries
    and the message list stay as they were)."""
    operations = _api_operations(actors["owner"])
    assert {schema for *_, schema in operations} == set(VALID_API_BODIES)
    tally = Tally()
    for method, template, schema in operations:
        path = template.replace("{id}", "mine").replace("{key}", "color")
        valid = VALID_API_BODIES[schema]
        fields = [*valid, "metadata"] if schema in ("MessageIn", "SessionCreateIn", "SessionFieldsIn") else [*valid]
        for field in fields:
            for kind, raw in HOSTILE_API_VALUES.items():
                text = json.dumps({**valid, field: "__HOSTILE__"}).replace('"__HOSTILE__"', raw)
                for name, client in actors.items():
                    before = _stored()
                    r = _send(client, method, path, text.encode(), "application/json")
                    tally.check(r, name, method, path, field, kind)
                    if name == "owner" and r.status_code < 500:
                        assert 400 <= r.status_code < 500, (method, path, field, kind, r.status_code, r.content[:200])
                        assert set(r.json()) == {"error", "detail"}
                        assert _stored() == before, (method, path, field, kind)
                _ensure_sessions(user, other_user)
    tally.assert_no_5xx()


def _stored():
    session = ConversationSession.objects.filter(sid="mine").first()
    return session and (
        session.last_seq, session.variables, session.data, session.system_prompt, session.metadata,
        session.title, session.pinned, session.archived,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The observations of issue 9 §3, one by one (each was a 500 before).


def test_a_nul_in_the_session_id_is_a_404_on_every_chat_route(actors):
    chat_routes = [r for r in routes() if r.startswith("/c/")]
    assert len(chat_routes) >= 16
    for route in chat_routes:
        for segment in ["%00", "mine%00", "a%00b"]:
            for method in ("GET", "POST"):
                r = actors["owner"].generic(method, _fill(route, {"session_id": segment}))
                assert r.status_code == 404, (route, segment, method, r.status_code)


def test_a_username_too_long_is_a_form_error_on_both_login_pages(db):
    """Django's login forms did not check the username's length: django-axes then stored it in a
    255-character column (a 500 on PostgreSQL)."""
    for url in ["/accounts/login/", "/admin/login/"]:
        r = Client(raise_request_exception=False).post(url, {"username": "u" * 300, "password": "pw"})
        assert r.status_code == 200, (url, r.status_code)
        assert "at most 150 characters" in r.content.decode()


def test_a_nul_session_id_is_not_found_in_the_engine_before_any_query(db, django_assert_num_queries):
    for bad in ["a\x00b", "\x00", "x" * 129, "\ud800", 5.5, None, ["x"]]:
        with django_assert_num_queries(0), pytest.raises(engine.SessionNotFound):
            engine.session_get(bad)
        with pytest.raises(engine.SessionNotFound):
            engine.session_delete(bad)
        with pytest.raises(engine.SessionNotFound):
            engine.message_append(bad, "user", "hi")
        with pytest.raises(engine.SessionNotFound):
            engine.state_set(bad, "k", "v")


@pytest.mark.parametrize(
    "value, message",
    [
        (DEEP_990, "nested too deeply"),
        (DEEP, "nested too deeply"),
        ("[" * 65 + "]" * 65, "nested too deeply"),
        (HUGE_INT, "more than 4300 digits"),
        ('{"n": ' + HUGE_INT + "}", "more than 4300 digits"),
        ("NaN", "not a JSON number"),
    ],
    ids=["depth-990", "depth-100000", "depth-65", "huge-int", "huge-int-inside", "nan"],
)
def test_deep_json_and_huge_integers_in_the_data_form_are_form_errors(actors, value, message):
    before = _stored()
    r = actors["owner"].post("/c/mine/state/data/", {"key": "k", "value": value}, headers={"HX-Request": "true"})
    assert r.status_code == 422
    assert message in r.content.decode()
    assert 'id="state-panel"' in r.content.decode()  # inline, in the panel the form lives in
    assert _stored() == before


def test_json_at_the_depth_limit_is_stored(actors):
    r = actors["owner"].post("/c/mine/state/data/", {"key": "k", "value": "[" * 64 + "]" * 64})
    assert r.status_code == 302
    assert engine.session_get("mine").data["k"] == json.loads("[" * 64 + "]" * 64)


def test_a_nul_in_the_admin_filter_or_change_url_is_a_4xx(actors):
    for url in [
        "/admin/sessions_app/message/?session=a%00b",
        "/admin/sessions_app/turn/?session=%00",
        "/admin/sessions_app/reply/?session=mine%00",
        "/admin/sessions_app/conversationsession/a%00b/change/",
        "/admin/sessions_app/conversationsession/%00/delete/",
        "/admin/sessions_app/conversationsession/?q=%00",
        "/admin/sessions_app/message/?q=a%00",
        "/admin/r/1/a%00b/",
    ]:
        assert actors["staff"].get(url).status_code in (400, 404), url


def test_the_admin_filter_and_object_lookup_validate_the_id(actors, rf):
    """Behind the middleware, the admin itself looks up only ids a session can have."""
    from django.contrib import admin

    from sessions_app.admin import SessionIdFilter
    from sessions_app.models import Message

    request = rf.get("/admin/sessions_app/message/")
    request.user = engine.session_get("mine").owner
    model_admin = admin.site._registry[Message]
    session_admin = admin.site._registry[ConversationSession]
    for session in ["a\x00b", "x" * 200, "\ud800"]:
        list_filter = SessionIdFilter(request, {"session": [session]}, Message, model_admin)
        assert list(list_filter.queryset(request, Message.objects.all())) == []
        assert session_admin.get_object(request, session) is None
    mine = engine.session_get("mine")
    assert session_admin.get_object(request, str(mine.pk)).sid == "mine"


def test_a_nul_in_a_url_is_refused_before_the_database(actors, django_assert_num_queries):
    client = Client(raise_request_exception=False, HTTP_COOKIE=f"{django_settings.SESSION_COOKIE_NAME}=x\x00yzabcdef")
    with django_assert_num_queries(0):
        assert client.get("/c/mine/").status_code == 400
        assert actors["anonymous"].get("/c/a%00b/").status_code == 404
        assert actors["anonymous"].get("/admin/?q=%00").status_code == 400
    r = actors["anonymous"].get("/api/v1/sessions?offset=%00")
    assert r.status_code == 400 and set(r.json()) == {"error", "detail"}


# ---------------------------------------------------------------------------------------------
# Websocket.

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")  # the handshake's own origin: its scheme (ws → http), Host and port


def _cookie_for(user):
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"


async def _handshake(path, headers):
    comm = WebsocketCommunicator(application, path, headers=[HOST, *headers])
    connected, _ = await comm.connect(timeout=5)
    return comm, connected


WS_PATHS = ["a\x00b", "\x00", "mine\x00", "\ud800", "x" * 300, "..", "mine/extra", "theirs"]


@pytest.mark.usefixtures("close_async_db")
async def test_hostile_websocket_handshakes_are_refused_without_an_error(actors, user):
    cookie = await database_sync_to_async(_cookie_for)(user)
    headers = [ORIGIN, (b"cookie", cookie.encode())]
    for segment in WS_PATHS:
        for hdrs in (headers, [ORIGIN], [ORIGIN, (b"cookie", b"sessionid=\x00abcdefgh")]):
            comm, connected = await _handshake(f"/ws/sessions/{segment}/", hdrs)
            assert not connected, segment  # (connect() re-raises an exception of the application: none)
    comm, connected = await _handshake("/ws/sessions/mine/", headers)
    assert connected  # the battery's own control
    await comm.disconnect()


@pytest.mark.usefixtures("close_async_db")
async def test_hostile_websocket_frames_are_ignored_or_close_the_socket(actors, user, settings):
    cookie = await database_sync_to_async(_cookie_for)(user)
    headers = [ORIGIN, (b"cookie", cookie.encode())]
    comm, connected = await _handshake("/ws/sessions/mine/", headers)
    assert connected
    frames = [
        DEEP[: settings.CONVO_WS_MAX_FRAME_BYTES],
        "[" * 990 + "]" * 990,
        '{"type": "hello", "last_seq": ' + HUGE_INT + "}",
        '{"type": "hello", "budget": ' + "[" * 100 + "]" * 100 + "}",
        '{"type": "budget", "budget": "\\ud800"}',
        "\ud800",
        "\x00",
        "null",
        "[]",
        '{"type": "budget", "budget": 1e999}',
    ]
    for frame in frames:
        await comm.send_to(text_data=frame)
    await comm.send_to(bytes_data=b"\xff\xfe\x00")
    assert await comm.receive_nothing(timeout=0.3)
    await comm.send_json_to({"type": "hello", "last_seq": 0, "budget": None})
    assert "hello" in await comm.receive_from(timeout=5)  # still alive, and answering
    await comm.send_to(text_data="x" * (settings.CONVO_WS_MAX_FRAME_BYTES + 1))
    closed = await comm.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 1009}
    await comm.disconnect()


@pytest.mark.usefixtures("close_async_db")
async def test_a_10mb_websocket_frame_closes_the_socket(actors, user):
    cookie = await database_sync_to_async(_cookie_for)(user)
    comm, connected = await _handshake("/ws/sessions/mine/", [ORIGIN, (b"cookie", cookie.encode())])
    assert connected
    await comm.send_to(text_data="[" * TEN_MB)
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 1009}
    await comm.disconnect()
