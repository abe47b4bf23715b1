"""Property-based fuzzing of the whole API (hypothesis), checked against its own OpenAPI schema.

Requests are drawn from the schema's operations with hostile values: arbitrary JSON of every
shape, text with NUL and lone surrogates, raw bytes, ids with path tricks, odd query strings.
Properties: never a 500; every status is one the operation documents (or a JSON 404 for a path
that routes nowhere); every body validates against the documented schema; a refused request
changes no stored session, message or turn.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from sessions_app import engine
from sessions_app.models import ConversationSession, Message, Turn

from .test_api_support import Api, api_for

pytestmark = pytest.mark.django_db

EXAMPLES = 400

# Text with everything JSON can carry: NUL, control characters, lone surrogates, astral planes.
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
plain_text = st.text(max_size=30)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
any_json = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
# Mostly well-typed values, so that requests also get past validation and change data.
texts = st.one_of(plain_text, plain_text, plain_text, any_text, any_json)
roles = st.one_of(*[st.sampled_from(["system", "user", "assistant", "tool"])] * 4, any_text)
string_maps = st.one_of(
    st.dictionaries(plain_text, plain_text, max_size=3),
    st.dictionaries(plain_text, plain_text, max_size=3),
    st.dictionaries(any_text, any_text, max_size=3),
    any_json,
)
good_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True)
# Known-nasty path segments, so that every run tries them whatever the random draw.
hostile = st.sampled_from(["\x00", "a\x00b", ".", "..", "../mine", "a/b", "%2F", "x" * 300, "\ud800", " ", "mine\n"])
session_ids = st.one_of(
    *[st.just("mine")] * 5, st.sampled_from(["old", "theirs", "nobody"]), good_ids, hostile, any_text.filter(bool)
)


def body_for(model: str):
    """Bodies near the schema (each field right, wrong or missing) and far from it."""
    fields = {
        "MessageIn": {
            "role": roles,
            "content": texts,
            "name": st.none() | texts,
            "tool_call_id": st.one_of(st.just("call_1"), st.just("call_1"), st.none(), texts),
            "metadata": string_maps,
            "respond": st.booleans() | any_json,
        },
        "ReplyIn": {"regenerate": st.booleans() | any_json},
        "BranchIn": {"at_seq": st.integers(min_value=-2, max_value=6) | st.integers() | any_json},
        "SessionCreateIn": {
            "id": st.none() | session_ids | any_json,
            "system_prompt": st.none() | texts,
            "metadata": string_maps,
            "config": st.fixed_dictionaries(
                {},
                optional={
                    "max_messages": st.integers() | any_json,
                    "max_tokens": st.integers() | any_json,
                    "timeout_seconds": st.none() | st.integers() | any_json,
                    "persist_system_prompt": st.booleans() | any_json,
                },
            )
            | any_json,
        },
        "VariableIn": {"value": texts},
        "SessionPatchIn": {
            "title": st.none() | texts,
            "pinned": st.none() | st.booleans() | any_json,
            "archived": st.none() | st.booleans() | any_json,
        },
        "SessionFieldsIn": None,
        "DataIn": {"value": any_json},
    }
    fields["SessionFieldsIn"] = {k: v for k, v in fields["SessionCreateIn"].items() if k != "id"}
    fields = fields[model]
    required = {
        "MessageIn": ["role", "content"],
        "VariableIn": ["value"],
        "DataIn": ["value"],
        "BranchIn": ["at_seq"],
    }.get(model, [])
    near = st.fixed_dictionaries(
        {k: fields[k] for k in required}, optional={k: v for k, v in fields.items() if k not in required}
    )
    near = near | st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(any_text, any_json, min_size=1, max_size=2)
    return st.one_of(near, near, near, near.flatmap(lambda d: extra.map(lambda e: {**e, **d})), any_json)


IMPORT_FILES = sorted((Path(__file__).parent / "fixtures" / "transfer").glob("*.json"))


def raw_body(model: str):
    if model == "Import":  # a file: the import fixtures (good and broken), JSON, bytes
        files = st.sampled_from(IMPORT_FILES).map(lambda path: path.read_bytes())
        return st.one_of(files, any_json.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64))
    as_json = body_for(model).map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, as_json, as_json, st.binary(max_size=64))


OPERATIONS = [
    ("POST", "/sessions", "SessionCreateIn"),
    ("PUT", "/sessions/{id}", "SessionFieldsIn"),
    ("GET", "/sessions", None),
    ("GET", "/sessions/{id}", None),
    ("PATCH", "/sessions/{id}", "SessionPatchIn"),
    ("DELETE", "/sessions/{id}", None),
    ("POST", "/sessions/{id}/clear", None),
    ("POST", "/sessions/{id}/branch", "BranchIn"),
    ("POST", "/sessions/{id}/messages", "MessageIn"),
    ("POST", "/sessions/{id}/messages", "MessageIn"),
    ("POST", "/sessions/{id}/messages", "MessageIn"),
    ("GET", "/sessions/{id}/messages", None),
    ("GET", "/sessions/{id}/context", None),
    ("GET", "/sessions/{id}/turns", None),
    ("GET", "/sessions/{id}/turns/{n}", None),
    ("GET", "/sessions/{id}/state", None),
    ("DELETE", "/sessions/{id}/state", None),
    ("GET", "/sessions/{id}/state/variables/{key}", None),
    ("PUT", "/sessions/{id}/state/variables/{key}", "VariableIn"),
    ("DELETE", "/sessions/{id}/state/variables/{key}", None),
    ("GET", "/sessions/{id}/state/data/{key}", None),
    ("PUT", "/sessions/{id}/state/data/{key}", "DataIn"),
    ("DELETE", "/sessions/{id}/state/data/{key}", None),
    ("POST", "/sessions/{id}/reply", "ReplyIn"),
    ("GET", "/sessions/{id}/reply", None),
    ("POST", "/sessions/{id}/reply/stop", None),
    ("GET", "/search", None),
    ("GET", "/sessions/{id}/export", None),
    ("GET", "/export", None),
    ("POST", "/import", "Import"),
]

query_values = st.integers(min_value=-5, max_value=600).map(str) | st.sampled_from(
    ["", "x", "1.5", "1e3", "99999999999999999999", "json", "markdown"]
)
QUERY = {
    "/sessions": ["offset", "limit"],
    "/sessions/{id}/messages": ["after", "limit", "history"],
    "/sessions/{id}/turns": ["after", "limit"],
    "/sessions/{id}/context": ["max_tokens"],
    "/search": ["q", "limit", "cursor"],
    "/sessions/{id}/export": ["format"],
}


def _segment(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def requests(draw):
    method, template, model = draw(st.sampled_from(OPERATIONS))
    path = template
    if "{id}" in path:
        path = path.replace("{id}", _segment(draw(session_ids)))
    if "{key}" in path:
        path = path.replace(
            "{key}", _segment(draw(st.sampled_from(["color", "prefs"]) | hostile | any_text.filter(bool)))
        )
    if "{n}" in path:
        path = path.replace(
            "{n}", draw(st.integers(min_value=-2, max_value=5).map(str) | any_text.filter(bool).map(_segment))
        )
    query = {}
    for name in QUERY.get(template, []):
        if draw(st.booleans()):
            query[name] = draw(query_values)
    body = draw(raw_body(model)) if model else None
    headers = {}
    if model == "MessageIn" and draw(st.booleans()):
        headers["Idempotency-Key"] = draw(
            st.sampled_from(["retry-1", "retry-2"]) | st.from_regex(r"[ -~]{0,10}", fullmatch=True)
        )
    return method, template, path, query, body, headers


@pytest.fixture
def spec(user):
    return api_for(user).get("/openapi.json").json()


def _validator(spec, schema):
    return Draft202012Validator({**schema, "components": spec["components"]})


def _snapshot():
    return (
        list(ConversationSession.objects.order_by("sid").values()),
        list(Message.objects.order_by("session_id", "seq").values()),
        list(Turn.objects.order_by("session_id", "number").values()),
    )


def _setup_state(user, other_user):
    """The sessions requests aim at, reset before each example: live, expired and someone else's."""
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    if not ConversationSession.objects.filter(sid="mine").exists():
        engine.session_create("mine", owner=user, system_prompt="sys")
        engine.message_append("mine", "user", "hello")
        engine.message_append("mine", "tool", "4", tool_call_id="c1")
        engine.state_set("mine", "color", "blue")
    if not ConversationSession.objects.filter(sid="theirs").exists():
        engine.session_create("theirs", owner=other_user)
        engine.message_append("theirs", "user", "private")
    if not ConversationSession.objects.filter(sid="old").exists():
        engine.session_create("old", owner=user)
    ConversationSession.objects.filter(sid="old").update(updated_at=past, expires_at=past)


def test_fuzz_the_api_against_its_schema(user, other_user, spec):
    api = api_for(user)
    paths = spec["paths"]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )
    @given(requests())
    def check(request):
        method, template, path, query, body, headers = request
        _setup_state(user, other_user)
        before = _snapshot()
        client = Api(api.secret)
        r = client.call(method, path, raw=body, query=query or None, headers=headers)
        if r.streaming:  # an export: its content type and (JSON) body are the documented ones
            assert r.status_code == 200, (method, path)
            declared = paths["/api/v1" + template][method.lower()]["responses"]["200"]["content"]
            content_type = r["Content-Type"].split(";")[0]
            assert content_type in declared, (method, path, content_type)
            content = b"".join(r.streaming_content)
            if content_type == "application/json":
                assert not list(_validator(spec, declared[content_type]["schema"]).iter_errors(json.loads(content)))
            return
        assert r.status_code != 500, (method, path, body, r.content[:300])
        event(f"{r.status_code} {r.json()['error'] if r.status_code >= 400 else ''}".strip())
        operation = paths["/api/v1" + template][method.lower()]
        declared = operation["responses"]
        if str(r.status_code) not in declared:
            # Only a path that routes nowhere (e.g. an id with an encoded '/') may answer otherwise.
            assert r.status_code == 404, (method, path, body, r.status_code, r.content[:300])
            schema = {"$ref": "#/components/schemas/ErrorOut"}
        elif r.status_code == 204:
            assert r.content == b""
            schema = None
        else:
            schema = declared[str(r.status_code)]["content"]["application/json"]["schema"]
        if schema is not None:
            assert r["Content-Type"].startswith("application/json")
            errors = sorted(_validator(spec, schema).iter_errors(r.json()), key=str)
            assert not errors, (method, path, r.status_code, r.json(), [e.message for e in errors[:3]])
        if r.status_code >= 400:
            assert set(r.json()) == {"error", "detail"}
            assert _snapshot() == before, (method, path, body, r.status_code)

    check()


def test_every_operation_documents_its_errors(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "401" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorOut"
                    }, (method, path, status)


def test_fuzzing_covers_every_operation(spec):
    documented = {(m.upper(), p.removeprefix("/api/v1")) for p, item in spec["paths"].items() for m in item}
    assert documented == {(m, t) for m, t, _ in OPERATIONS}
