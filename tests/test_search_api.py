"""GET /api/v1/search: the caller's own conversations, pages by cursor, clear 4xx for bad input."""

import pytest

from sessions_app import engine

from .test_api_support import Api, api_for, assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    return api_for(user)


@pytest.fixture
def corpus(user, other_user):
    engine.session_create("trip", owner=user)
    for text in ["Pack the sleeping bag", "The tent and the sleeping bag", "Buy a stove"]:
        engine.message_append("trip", "user", text, owner=user)
    engine.session_create("trip", owner=other_user)
    engine.message_append("trip", "user", "my secret sleeping bag", owner=other_user)
    # Untitled (the library titles a conversation from its first user message): these tests are about
    # the message results; title results have tests of their own.
    for owner in (user, other_user):
        engine.session_set_library("trip", owner=owner, title="")


def test_results_have_the_documented_fields(api, corpus):
    r = api.get("/search", query={"q": '"sleeping bag"'})
    assert r.status_code == 200
    body = r.json()
    assert body["q"] == '"sleeping bag"' and body["limit"] == 20 and body["next_cursor"] is None
    assert [(item["session_id"], item["seq"]) for item in body["items"]] == [("trip", 1), ("trip", 2)]
    item = body["items"][0]
    assert set(item) == {"kind", "session_id", "title", "seq", "role", "snippet", "created_at", "rank"}
    assert item["kind"] == "message" and item["role"] == "user" and item["title"] == ""
    assert "<mark>sleeping" in item["snippet"] and "secret" not in r.content.decode()
    assert isinstance(item["rank"], float) and item["created_at"].endswith(("Z", "+00:00"))


def test_only_the_callers_conversations(other_user, corpus):
    r = api_for(other_user).get("/search", query={"q": "sleeping"})
    assert [item["snippet"] for item in r.json()["items"]] == ["my secret <mark>sleeping</mark> bag"]


def test_cursor_pages(api, corpus):
    first = api.get("/search", query={"q": "sleeping or stove", "limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = api.get("/search", query={"q": "sleeping or stove", "limit": 2, "cursor": first["next_cursor"]}).json()
    assert len(second["items"]) == 1 and second["next_cursor"] is None
    seqs = [item["seq"] for item in first["items"] + second["items"]]
    assert sorted(seqs) == [1, 2, 3]


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({}, "q: Field required"),
        ({"q": ""}, "q is empty"),
        ({"q": "  ?! "}, "no words"),
        ({"q": "-stove"}, "needs a word to find"),
        ({"q": "x" * 501}, "too long"),
        ({"q": "stove", "limit": 0}, "limit"),
        ({"q": "stove", "limit": 101}, "limit"),
        ({"q": "stove", "limit": "ten"}, "limit"),
        ({"q": "stove", "cursor": "not-a-cursor"}, "cursor is not valid"),
    ],
)
def test_bad_input_is_a_422_with_a_clear_message(api, corpus, query, detail):
    body = assert_error(api.get("/search", query=query), 422, "validation_error")
    assert detail in body["detail"]


def test_a_cursor_from_another_query(api, corpus):
    first = api.get("/search", query={"q": "sleeping", "limit": 1}).json()
    body = assert_error(api.get("/search", query={"q": "tent", "cursor": first["next_cursor"]}), 422)
    assert "another search" in body["detail"]


def test_needs_credentials():
    assert_error(Api(None).get("/search", query={"q": "stove"}), 401, "unauthorized")
