"""The JSON API's contract (/api/v1), endpoint by endpoint, with every error case and cross-user isolation."""

from __future__ import annotations

import datetime as dt

import pytest

from sessions_app import engine
from sessions_app.models import ConversationSession, Message

from .test_api_support import Api, api_for, assert_error

pytestmark = pytest.mark.django_db

MESSAGE_FIELDS = {"seq", "role", "content", "name", "tool_call_id", "metadata", "created_at", "tokens", "turn"}
SESSION_FIELDS = {
    "id",
    "title",
    "pinned",
    "archived",
    "system_prompt",
    "config",
    "state",
    "metadata",
    "created_at",
    "updated_at",
    "expires_at",
    "expired",
    "current_turn",
    "message_count",
    "total_tokens",
    "parent",
    "parent_seq",
    "lineage",
}


@pytest.fixture
def api(user):
    return api_for(user)


@pytest.fixture
def other_api(other_user):
    return api_for(other_user)


@pytest.fixture
def chat(api):
    """Session "chat": system prompt, one complete turn with a tool call, and one open turn."""
    assert api.post("/sessions", {"id": "chat", "system_prompt": "Be brief."}).status_code == 201
    for body in [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "tool", "content": "4", "tool_call_id": "call_1", "name": "calculator"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "Thanks"},
    ]:
        assert api.post("/sessions/chat/messages", body).status_code == 201
    return "chat"


def _expire(session_id: str) -> None:
    """Make a session expired (its expiry time in the past), as time passing would."""
    ConversationSession.objects.filter(sid=session_id).update(
        expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC), updated_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    )


def _snapshot():
    return (
        list(ConversationSession.objects.order_by("sid").values()),
        list(Message.objects.order_by("session_id", "seq").values()),
    )


# ---------------------------------------------------------------------------------------------
# POST /sessions


def test_create_returns_the_session(api, user):
    r = api.post(
        "/sessions",
        {
            "id": "s-1",
            "system_prompt": "You are helpful",
            "metadata": {"app": "bot"},
            "config": {"max_messages": 10, "max_tokens": 500, "timeout_seconds": None, "persist_system_prompt": True},
        },
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == SESSION_FIELDS
    assert body["id"] == "s-1"
    assert body["system_prompt"] == "You are helpful"
    assert body["config"] == {
        "max_messages": 10,
        "max_tokens": 500,
        "timeout_seconds": None,
        "persist_system_prompt": True,
    }
    assert body["state"] == {"variables": {}, "data": {}}
    assert body["metadata"] == {"app": "bot"}
    assert body["expires_at"] is None and body["expired"] is False
    assert body["message_count"] == 1 and body["current_turn"] == 0 and body["total_tokens"] == 4
    assert engine.session_get("s-1").owner == user


def test_create_without_id_generates_one_and_uses_default_config(api, settings):
    settings.CONVO_MAX_MESSAGES = 42
    r = api.post("/sessions", {})
    assert r.status_code == 201
    body = r.json()
    assert len(body["id"]) == 36
    assert body["config"]["max_messages"] == 42
    assert body["config"]["timeout_seconds"] == settings.CONVO_TIMEOUT_SECONDS
    assert body["expires_at"] is not None


def test_create_with_partial_config_keeps_the_other_defaults(api, settings):
    r = api.post("/sessions", {"config": {"max_tokens": 77}})
    assert r.status_code == 201
    assert r.json()["config"] == {
        "max_messages": settings.CONVO_MAX_MESSAGES,
        "max_tokens": 77,
        "timeout_seconds": settings.CONVO_TIMEOUT_SECONDS,
        "persist_system_prompt": settings.CONVO_PERSIST_SYSTEM_PROMPT,
    }


def test_create_with_an_id_in_use_is_409_only_for_your_own_ids(api, other_api, user, other_user):
    """Ids are per owner (issue 9): another user's id is not there for you, so creating it succeeds."""
    assert api.post("/sessions", {"id": "taken"}).status_code == 201
    assert_error(api.post("/sessions", {"id": "taken"}), 409, "session_exists")
    assert other_api.post("/sessions", {"id": "taken"}).status_code == 201
    assert_error(other_api.post("/sessions", {"id": "taken"}), 409, "session_exists")
    mine, theirs = engine.session_get("taken", owner=user), engine.session_get("taken", owner=other_user)
    assert mine.pk != theirs.pk


@pytest.mark.parametrize(
    "body",
    [
        {"id": "has space"},
        {"id": "a/b"},
        {"id": ""},
        {"id": "x" * 129},
        {"id": ".."},
        {"id": 5},
        {"system_prompt": 5},
        {"metadata": {"a": 1}},
        {"metadata": ["a"]},
        {"config": {"max_messages": 0}},
        {"config": {"max_messages": "5"}},
        {"config": {"max_tokens": 2**31}},
        {"config": {"timeout_seconds": -1}},
        {"config": {"persist_system_prompt": "yes"}},
        {"config": {"max_messages": 1.5}},
        {"config": None},
        {"unknown": 1},
        {"system_prompt": "nul\x00"},
        {"system_prompt": "lone \ud800 surrogate"},
        {"metadata": {"k": "\x00"}},
        [],
        "text",
        None,
    ],
)
def test_create_refuses_bad_input_with_422(api, body):
    before = _snapshot()
    assert_error(api.post("/sessions", body, raw=None if body is not None else "null"), 422, "validation_error")
    assert _snapshot() == before


def test_create_refuses_a_too_long_system_prompt_with_413(api, settings):
    settings.CONVO_MAX_CONTENT_CHARS = 10
    assert_error(api.post("/sessions", {"id": "big", "system_prompt": "x" * 11}), 413, "content_too_large")
    assert not ConversationSession.objects.filter(sid="big").exists()
    assert api.post("/sessions", {"id": "ok", "system_prompt": "x" * 10}).status_code == 201


# ---------------------------------------------------------------------------------------------
# PUT /sessions/{id}


def test_put_creates_then_returns_the_live_session(api):
    r = api.put("/sessions/p1", {"system_prompt": "First", "config": {"max_messages": 3}})
    assert r.status_code == 201
    assert r.json()["system_prompt"] == "First" and r.json()["config"]["max_messages"] == 3
    api.post("/sessions/p1/messages", {"role": "user", "content": "hello"})
    again = api.put("/sessions/p1", {"system_prompt": "Other", "config": {"max_messages": 9}})
    assert again.status_code == 200
    body = again.json()
    assert body["system_prompt"] == "First" and body["config"]["max_messages"] == 3  # body applies only when new
    assert body["message_count"] == 2


def test_put_without_body_uses_defaults(api):
    r = api.put("/sessions/nobody")
    assert r.status_code == 201
    assert r.json()["system_prompt"] is None


def test_put_replaces_an_expired_session_with_201(api):
    api.put("/sessions/old", {"system_prompt": "v1"})
    api.post("/sessions/old/messages", {"role": "user", "content": "before"})
    _expire("old")
    r = api.put("/sessions/old", {"system_prompt": "v2"})
    assert r.status_code == 201
    body = r.json()
    assert body["expired"] is False and body["system_prompt"] == "v2" and body["current_turn"] == 0
    assert [m["content"] for m in api.get("/sessions/old/messages").json()["items"]] == ["v2"]


def test_put_bad_id_is_422_and_another_users_id_is_yours_to_create(api, other_api, user, other_user):
    assert_error(api.put("/sessions/bad%20id"), 422, "validation_error")
    assert_error(api.put("/sessions/" + "x" * 129), 422, "validation_error")
    assert_error(api.put("/sessions/..."), 422, "validation_error")
    other_api.put("/sessions/theirs", {"system_prompt": "secret"})
    r = api.put("/sessions/theirs")  # ids are per owner (issue 9): no sign that bob has one
    assert r.status_code == 201 and r.json()["system_prompt"] is None
    assert engine.session_get("theirs", owner=other_user).system_prompt == "secret"
    assert engine.session_get("theirs", owner=user).pk != engine.session_get("theirs", owner=other_user).pk


# ---------------------------------------------------------------------------------------------
# GET /sessions


def test_list_is_the_callers_sessions_most_recent_activity_first(api, other_api):
    for sid in ["a", "b", "c"]:
        api.put(f"/sessions/{sid}")
    other_api.put("/sessions/theirs")
    api.post("/sessions/a/messages", {"role": "user", "content": "latest"})
    r = api.get("/sessions")
    assert r.status_code == 200
    body = r.json()
    assert [s["id"] for s in body["items"]] == ["a", "c", "b"]
    assert body["count"] == 3 and body["next_offset"] is None
    assert set(body["items"][0]) == {
        "id",
        "title",
        "pinned",
        "archived",
        "created_at",
        "updated_at",
        "expires_at",
        "expired",
        "message_count",
        "current_turn",
    }
    assert body["items"][0]["message_count"] == 1 and body["items"][0]["current_turn"] == 1


def test_list_pages_with_offset_and_limit(api):
    for i in range(5):
        api.put(f"/sessions/s{i}")
    first = api.get("/sessions", query={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_offset"] == 2 and first["count"] == 5
    seen = [s["id"] for s in first["items"]]
    offset = first["next_offset"]
    while offset is not None:
        page = api.get("/sessions", query={"limit": 2, "offset": offset}).json()
        seen += [s["id"] for s in page["items"]]
        offset = page["next_offset"]
    assert sorted(seen) == [f"s{i}" for i in range(5)]


def test_list_shows_expired_sessions_as_expired(api):
    api.put("/sessions/gone")
    _expire("gone")
    assert api.get("/sessions").json()["items"][0]["expired"] is True


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 501}, {"limit": "x"}, {"offset": -1}])
def test_list_refuses_bad_paging_with_422(api, query):
    assert_error(api.get("/sessions", query=query), 422, "validation_error")


# ---------------------------------------------------------------------------------------------
# GET /sessions/{id}


def test_get_session(api, chat):
    api.put("/sessions/chat/state/variables/name", {"value": "Ann"})
    body = api.get("/sessions/chat").json()
    assert set(body) == SESSION_FIELDS
    assert body["current_turn"] == 2 and body["message_count"] == 5
    assert body["state"]["variables"] == {"name": "Ann"}
    assert body["total_tokens"] == sum(m["tokens"] for m in api.get("/sessions/chat/messages").json()["items"])


def test_get_expired_session_works_and_says_expired(api):
    api.put("/sessions/old")
    _expire("old")
    r = api.get("/sessions/old")
    assert r.status_code == 200 and r.json()["expired"] is True


def test_unknown_and_foreign_sessions_are_the_same_404(api, other_api):
    other_api.put("/sessions/theirs", {"system_prompt": "secret"})
    other_api.post("/sessions/theirs/messages", {"role": "user", "content": "private"})
    missing = assert_error(api.get("/sessions/nobody"), 404, "not_found")
    foreign = assert_error(api.get("/sessions/theirs"), 404, "not_found")
    assert foreign["detail"] == missing["detail"].replace("nobody", "theirs")
    before = _snapshot()
    for method, path, body in [
        ("GET", "/sessions/theirs/messages", None),
        ("GET", "/sessions/theirs/context", None),
        ("GET", "/sessions/theirs/turns", None),
        ("GET", "/sessions/theirs/turns/1", None),
        ("GET", "/sessions/theirs/state", None),
        ("GET", "/sessions/theirs/state/variables/k", None),
        ("GET", "/sessions/theirs/state/data/k", None),
        ("POST", "/sessions/theirs/messages", {"role": "user", "content": "intrusion"}),
        ("POST", "/sessions/theirs/clear", None),
        ("PUT", "/sessions/theirs/state/variables/k", {"value": "v"}),
        ("PUT", "/sessions/theirs/state/data/k", {"value": 1}),
        ("DELETE", "/sessions/theirs/state/variables/k", None),
        ("DELETE", "/sessions/theirs/state/data/k", None),
        ("DELETE", "/sessions/theirs/state", None),
        ("DELETE", "/sessions/theirs", None),
    ]:
        assert_error(api.call(method, path, body), 404, "not_found")
    assert _snapshot() == before
    assert [s["id"] for s in api.get("/sessions").json()["items"]] == []
    assert other_api.get("/sessions/theirs").status_code == 200
    # PUT creates the caller's own "theirs" (ids are per owner, issue 9), leaving bob's untouched.
    assert api.put("/sessions/theirs", {}).status_code == 201
    assert other_api.get("/sessions/theirs/messages").json()["items"][-1]["content"] == "private"
    assert api.get("/sessions/theirs/messages").json()["items"] == []


# ---------------------------------------------------------------------------------------------
# DELETE /sessions/{id}


def test_delete(api, chat):
    r = api.delete("/sessions/chat")
    assert r.status_code == 204 and r.content == b""
    assert_error(api.get("/sessions/chat"), 404, "not_found")
    assert_error(api.delete("/sessions/chat"), 404, "not_found")
    assert not Message.objects.filter(session__sid="chat").exists()


def test_delete_expired_session(api):
    api.put("/sessions/old")
    _expire("old")
    assert api.delete("/sessions/old").status_code == 204


# ---------------------------------------------------------------------------------------------
# POST /sessions/{id}/messages


def test_append_returns_the_message(api):
    api.put("/sessions/s")
    r = api.post(
        "/sessions/s/messages",
        {"role": "user", "content": "Hello world", "name": "ann", "metadata": {"src": "test"}},
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == MESSAGE_FIELDS
    assert body["seq"] == 1 and body["role"] == "user" and body["content"] == "Hello world"
    assert body["name"] == "ann" and body["tool_call_id"] is None and body["metadata"] == {"src": "test"}
    assert body["tokens"] == 3 and body["turn"] == 1
    assert dt.datetime.fromisoformat(body["created_at"]).tzinfo is not None


def test_append_turn_numbers(api):
    api.put("/sessions/s")
    sys_msg = api.post("/sessions/s/messages", {"role": "system", "content": "sys"}).json()
    early = api.post("/sessions/s/messages", {"role": "assistant", "content": "hi first"}).json()
    user = api.post("/sessions/s/messages", {"role": "user", "content": "q"}).json()
    tool = api.post("/sessions/s/messages", {"role": "tool", "content": "r", "tool_call_id": "c1"}).json()
    answer = api.post("/sessions/s/messages", {"role": "assistant", "content": "a"}).json()
    assert [sys_msg["turn"], early["turn"], user["turn"], tool["turn"], answer["turn"]] == [None, None, 1, 1, 1]
    assert tool["tool_call_id"] == "c1"


@pytest.mark.parametrize(
    "body",
    [
        {"role": "robot", "content": "x"},
        {"role": "USER", "content": "x"},
        {"role": "tool", "content": "x"},
        {"role": "tool", "content": "x", "tool_call_id": ""},
        {"role": "tool", "content": "x", "tool_call_id": None},
        {"role": "user"},
        {"content": "x"},
        {"role": "user", "content": 5},
        {"role": "user", "content": None},
        {"role": "user", "content": ["x"]},
        {"role": "user", "content": "x", "name": 1},
        {"role": "user", "content": "x", "name": "n" * 257},
        {"role": "user", "content": "x", "metadata": {"k": 1}},
        {"role": "user", "content": "x", "metadata": "k"},
        {"role": "user", "content": "x", "toolCallId": "c"},
        {"role": "user", "content": "nul \x00 inside"},
        {"role": "user", "content": "lone \udc80"},
        {"role": "user", "content": "x", "name": "\ud800"},
        {"role": "user", "content": "x", "metadata": {"\x00": "v"}},
        [{"role": "user", "content": "x"}],
        42,
    ],
)
def test_append_refuses_bad_input_with_422_and_stores_nothing(api, body):
    api.put("/sessions/s")
    before = _snapshot()
    assert_error(api.post("/sessions/s/messages", body), 422, "validation_error")
    assert _snapshot() == before


def test_append_to_an_expired_session_is_410(api):
    api.put("/sessions/old")
    _expire("old")
    assert_error(api.post("/sessions/old/messages", {"role": "user", "content": "late"}), 410, "session_expired")
    assert not Message.objects.filter(session__sid="old").exists()
    assert api.put("/sessions/old").status_code == 201  # the client resumes with PUT
    assert api.post("/sessions/old/messages", {"role": "user", "content": "late"}).status_code == 201


def test_append_to_a_missing_session_is_404(api):
    assert_error(api.post("/sessions/nope/messages", {"role": "user", "content": "x"}), 404, "not_found")


def test_content_over_the_limit_is_413(api, settings):
    settings.CONVO_MAX_CONTENT_CHARS = 20
    api.put("/sessions/s")
    assert_error(api.post("/sessions/s/messages", {"role": "user", "content": "é" * 21}), 413, "content_too_large")
    assert api.post("/sessions/s/messages", {"role": "user", "content": "é" * 20}).status_code == 201
    assert Message.objects.filter(session__sid="s").count() == 1


def test_body_over_the_limit_is_413_before_anything_is_parsed(api, settings):
    settings.CONVO_API_MAX_BODY_BYTES = 1000
    api.put("/sessions/s")
    r = api.post("/sessions/s/messages", {"role": "user", "content": "x" * 2000})
    assert_error(r, 413, "body_too_large")
    assert_error(api.post("/sessions/s/messages", raw="{" * 5000), 413, "body_too_large")
    assert not Message.objects.filter(session__sid="s").exists()


def test_body_over_djangos_own_limit_is_413(api, settings):
    settings.CONVO_API_MAX_BODY_BYTES = 10_000_000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    api.put("/sessions/s")
    assert_error(api.post("/sessions/s/messages", {"role": "user", "content": "x" * 2000}), 413, "body_too_large")


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"role": "user", "content": "x"',
        b"\xff\xfe{}",
        b'{"role": "user", "content": NaN}',
        b'{"role": "user", "content": "x", "metadata": {"k": Infinity}}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\x00",
    ],
)
def test_malformed_json_is_400(api, raw, settings):
    settings.CONVO_API_MAX_BODY_BYTES = 1_000_000
    api.put("/sessions/s")
    assert_error(api.post("/sessions/s/messages", raw=raw), 400, "malformed_json")
    assert_error(api.post("/sessions", raw=raw), 400, "malformed_json")
    assert not Message.objects.filter(session__sid="s").exists()


def test_unicode_round_trips(api):
    api.put("/sessions/s")
    text = "emoji 🦀, RTL עברית, combining é, zero-width \u200b, CJK 漢字"
    r = api.post("/sessions/s/messages", {"role": "user", "content": text, "metadata": {"ключ": "值"}})
    assert r.status_code == 201
    assert r.json()["tokens"] == len(text.encode()) // 4 + 1
    stored = api.get("/sessions/s/messages").json()["items"][0]
    assert stored["content"] == text and stored["metadata"] == {"ключ": "值"}


# Idempotency-Key


def test_idempotency_key_returns_the_first_result(api):
    api.put("/sessions/s")
    body = {"role": "user", "content": "once"}
    first = api.post("/sessions/s/messages", body, headers={"Idempotency-Key": "abc-1"})
    again = api.post("/sessions/s/messages", body, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Message.objects.filter(session__sid="s").count() == 1
    other = api.post("/sessions/s/messages", body, headers={"Idempotency-Key": "abc-2"})
    assert other.json()["seq"] == 2


def test_idempotency_key_reused_for_another_request_is_409(api):
    api.put("/sessions/s")
    api.put("/sessions/t")
    api.post("/sessions/s/messages", {"role": "user", "content": "a"}, headers={"Idempotency-Key": "k"})
    r = api.post("/sessions/s/messages", {"role": "user", "content": "b"}, headers={"Idempotency-Key": "k"})
    assert_error(r, 409, "idempotency_key_reused")
    r = api.post("/sessions/t/messages", {"role": "user", "content": "a"}, headers={"Idempotency-Key": "k"})
    assert_error(r, 409, "idempotency_key_reused")
    assert Message.objects.count() == 1


def test_idempotency_keys_are_per_user(api, other_api):
    api.put("/sessions/mine")
    other_api.put("/sessions/theirs")
    body = {"role": "user", "content": "a"}
    assert api.post("/sessions/mine/messages", body, headers={"Idempotency-Key": "k"}).json()["seq"] == 1
    r = other_api.post("/sessions/theirs/messages", body, headers={"Idempotency-Key": "k"})
    assert r.status_code == 201 and "Idempotent-Replayed" not in r


def test_a_failed_append_does_not_use_up_its_key(api):
    api.put("/sessions/old")
    _expire("old")
    body = {"role": "user", "content": "a"}
    assert_error(api.post("/sessions/old/messages", body, headers={"Idempotency-Key": "k"}), 410)
    api.put("/sessions/old")
    r = api.post("/sessions/old/messages", body, headers={"Idempotency-Key": "k"})
    assert r.status_code == 201 and "Idempotent-Replayed" not in r


def test_idempotency_key_expires_after_its_ttl(api, settings):
    settings.CONVO_API_IDEMPOTENCY_TTL_SECONDS = 0
    api.put("/sessions/s")
    body = {"role": "user", "content": "a"}
    api.post("/sessions/s/messages", body, headers={"Idempotency-Key": "k"})
    assert api.post("/sessions/s/messages", body, headers={"Idempotency-Key": "k"}).json()["seq"] == 2


@pytest.mark.parametrize("content", ["lone \ud800", "nul \x00"])
def test_idempotent_append_of_bad_text_is_422_and_leaves_the_key_unused(api, content):
    api.put("/sessions/s")
    headers = {"Idempotency-Key": "k"}
    assert_error(api.post("/sessions/s/messages", {"role": "user", "content": content}, headers=headers), 422)
    r = api.post("/sessions/s/messages", {"role": "user", "content": "fine"}, headers=headers)
    assert r.status_code == 201 and "Idempotent-Replayed" not in r


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tkey", "ключ"])
def test_bad_idempotency_key_is_422(api, key):
    api.put("/sessions/s")
    headers = {"Idempotency-Key": key}
    assert_error(api.post("/sessions/s/messages", {"role": "user", "content": "a"}, headers=headers), 422)
    assert not Message.objects.exists()


# ---------------------------------------------------------------------------------------------
# GET /sessions/{id}/messages


def test_messages_in_order(api, chat):
    body = api.get("/sessions/chat/messages").json()
    assert [m["seq"] for m in body["items"]] == [1, 2, 3, 4, 5]
    assert [m["role"] for m in body["items"]] == ["system", "user", "tool", "assistant", "user"]
    assert body["count"] == 5 and body["next_after"] is None


def test_messages_paginate_with_after_and_limit(api):
    api.put("/sessions/s")
    for i in range(7):
        api.post("/sessions/s/messages", {"role": "user", "content": f"m{i}"})
    seen, after, pages = [], 0, 0
    while after is not None and pages < 10:
        page = api.get("/sessions/s/messages", query={"after": after, "limit": 3}).json()
        seen += [m["content"] for m in page["items"]]
        after = page["next_after"]
        pages += 1
    assert seen == [f"m{i}" for i in range(7)] and pages == 3
    assert api.get("/sessions/s/messages", query={"after": 5}).json()["items"][0]["seq"] == 6
    assert api.get("/sessions/s/messages", query={"after": 99}).json()["items"] == []


def test_messages_newest_page_first_with_order_desc(api):
    api.put("/sessions/s")
    for i in range(7):
        api.post("/sessions/s/messages", {"role": "user", "content": f"m{i}"})
    newest = api.get("/sessions/s/messages", query={"order": "desc", "limit": 3}).json()
    assert [m["seq"] for m in newest["items"]] == [7, 6, 5]
    assert newest["order"] == "desc" and newest["next_before"] == 5 and newest["next_after"] is None
    seen, before, pages = [], None, 0
    while pages < 10:
        query = {"order": "desc", "limit": 3} | ({"before": before} if before else {})
        page = api.get("/sessions/s/messages", query=query).json()
        seen += [m["seq"] for m in page["items"]]
        pages += 1
        before = page["next_before"]
        if before is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1] and pages == 3
    # A range closed on both sides, from either end.
    query = {"after": 2, "before": 6, "limit": 2}
    assert [m["seq"] for m in api.get("/sessions/s/messages", query=query).json()["items"]] == [3, 4]
    desc = api.get("/sessions/s/messages", query=query | {"order": "desc"}).json()
    assert [m["seq"] for m in desc["items"]] == [5, 4] and desc["next_before"] == 4 and desc["before"] == 6
    assert_error(api.get("/sessions/s/messages", query={"order": "sideways"}), 422)
    assert_error(api.get("/sessions/s/messages", query={"before": 0}), 422)


def test_messages_follow_the_list_after_eviction(api):
    api.put("/sessions/s", {"system_prompt": "sys", "config": {"max_messages": 3}})
    for i in range(5):
        api.post("/sessions/s/messages", {"role": "user", "content": f"m{i}"})
    items = api.get("/sessions/s/messages").json()["items"]
    assert [m["content"] for m in items] == ["sys", "m3", "m4"]


@pytest.mark.parametrize(
    "query", [{"limit": 501}, {"limit": 0}, {"after": -1}, {"after": "x"}, {"limit": "1.5"}, {"after": 2**63}]
)
def test_messages_bad_paging_is_422(api, chat, query):
    assert_error(api.get("/sessions/chat/messages", query=query), 422, "validation_error")


def test_messages_limit_500_is_allowed(api, chat):
    assert api.get("/sessions/chat/messages", query={"limit": 500}).status_code == 200


# ---------------------------------------------------------------------------------------------
# GET /sessions/{id}/context


def test_context_default_budget_is_the_sessions(api, chat):
    body = api.get("/sessions/chat/context").json()
    assert body["max_tokens"] == 8192 or body["max_tokens"] == engine.session_get("chat").max_tokens
    assert [m["seq"] for m in body["messages"]] == [1, 2, 3, 4, 5]
    assert body["total_tokens"] == sum(m["tokens"] for m in body["messages"])
    assert all(set(m) == MESSAGE_FIELDS for m in body["messages"])


def test_context_with_a_budget_keeps_the_system_prompt_and_the_newest(api):
    api.put("/sessions/s", {"system_prompt": "System"})
    for i in range(20):
        api.post("/sessions/s/messages", {"role": "user", "content": f"Message {i}"})
    body = api.get("/sessions/s/context", query={"max_tokens": 10}).json()
    assert body["max_tokens"] == 10
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1]["content"] == "Message 19"
    assert body["total_tokens"] <= 10
    assert body["cut_before_seq"] is not None


@pytest.mark.parametrize("value", ["0", "-5", "abc", str(2**40)])
def test_context_bad_budget_is_422(api, chat, value):
    assert_error(api.get("/sessions/chat/context", query={"max_tokens": value}), 422, "validation_error")


# ---------------------------------------------------------------------------------------------
# Turns


def test_turns(api, chat):
    body = api.get("/sessions/chat/turns").json()
    assert body["count"] == 2 and body["next_after"] is None
    first, second = body["items"]
    assert first["number"] == 1 and first["complete"] is True
    assert first["user_message"]["content"] == "What is 2+2?"
    assert [t["tool_call_id"] for t in first["tool_calls"]] == ["call_1"]
    assert first["assistant_response"]["content"] == "It is 4."
    assert first["completed_at"] is not None and first["started_at"] is not None
    assert second["complete"] is False and second["assistant_response"] is None and second["completed_at"] is None
    assert api.get("/sessions/chat/turns/1").json() == first
    assert api.get("/sessions/chat/turns/2").json() == second


def test_turns_paginate(api):
    api.put("/sessions/s")
    for i in range(5):
        api.post("/sessions/s/messages", {"role": "user", "content": f"q{i}"})
    page = api.get("/sessions/s/turns", query={"after": 1, "limit": 2}).json()
    assert [t["number"] for t in page["items"]] == [2, 3] and page["next_after"] == 3
    last = api.get("/sessions/s/turns", query={"after": 3, "limit": 2}).json()
    assert [t["number"] for t in last["items"]] == [4, 5] and last["next_after"] is None


@pytest.mark.parametrize("n", ["0", "3", "-1", str(10**30)])
def test_turn_out_of_range_is_404(api, chat, n):
    assert_error(api.get(f"/sessions/chat/turns/{n}"), 404, "not_found")


def test_turn_number_must_be_a_number(api, chat):
    assert_error(api.get("/sessions/chat/turns/first"), 422, "validation_error")


# ---------------------------------------------------------------------------------------------
# State


def test_variables(api):
    api.put("/sessions/s")
    r = api.put("/sessions/s/state/variables/user_name", {"value": "Alice"})
    assert r.status_code == 200 and r.json() == {"key": "user_name", "value": "Alice"}
    assert api.get("/sessions/s/state/variables/user_name").json() == {"key": "user_name", "value": "Alice"}
    assert api.get("/sessions/s/state").json() == {"variables": {"user_name": "Alice"}, "data": {}}
    assert api.delete("/sessions/s/state/variables/user_name").status_code == 204
    assert_error(api.get("/sessions/s/state/variables/user_name"), 404, "not_found")
    assert_error(api.delete("/sessions/s/state/variables/user_name"), 404, "not_found")


@pytest.mark.parametrize("body", [{"value": 5}, {"value": None}, {}, {"value": "x", "extra": 1}, {"value": "\x00"}])
def test_variable_bad_value_is_422(api, body):
    api.put("/sessions/s")
    assert_error(api.put("/sessions/s/state/variables/k", body), 422, "validation_error")
    assert api.get("/sessions/s/state").json()["variables"] == {}


def test_data(api):
    api.put("/sessions/s")
    prefs = {"theme": "dark", "n": [1, 2.5, None, True], "nested": {"a": {"b": "c"}}}
    r = api.put("/sessions/s/state/data/prefs", {"value": prefs})
    assert r.status_code == 200 and r.json() == {"key": "prefs", "value": prefs}
    assert api.get("/sessions/s/state/data/prefs").json()["value"] == prefs
    assert api.put("/sessions/s/state/data/nothing", {"value": None}).status_code == 200
    assert api.get("/sessions/s/state/data/nothing").json() == {"key": "nothing", "value": None}
    assert api.delete("/sessions/s/state/data/prefs").status_code == 204
    assert_error(api.get("/sessions/s/state/data/prefs"), 404, "not_found")
    assert_error(api.delete("/sessions/s/state/data/prefs"), 404, "not_found")


@pytest.mark.parametrize("raw", ['{"value": "\\u0000"}', '{"value": {"k": "\\ud800"}}', "{}"])
def test_data_bad_value_is_422(api, raw):
    api.put("/sessions/s")
    assert_error(api.put("/sessions/s/state/data/k", raw=raw), 422, "validation_error")
    assert api.get("/sessions/s/state").json()["data"] == {}


def test_clear_state(api):
    api.put("/sessions/s")
    api.put("/sessions/s/state/variables/a", {"value": "1"})
    api.put("/sessions/s/state/data/b", {"value": 2})
    assert api.delete("/sessions/s/state").status_code == 204
    assert api.get("/sessions/s/state").json() == {"variables": {}, "data": {}}


def test_state_writes_on_an_expired_session_are_410_and_reads_work(api):
    api.put("/sessions/old")
    api.put("/sessions/old/state/variables/a", {"value": "1"})
    _expire("old")
    assert_error(api.put("/sessions/old/state/variables/a", {"value": "2"}), 410, "session_expired")
    assert_error(api.put("/sessions/old/state/data/a", {"value": 2}), 410, "session_expired")
    assert_error(api.delete("/sessions/old/state/variables/a"), 410, "session_expired")
    assert_error(api.delete("/sessions/old/state"), 410, "session_expired")
    assert api.get("/sessions/old/state/variables/a").json()["value"] == "1"


def test_state_keys_with_odd_characters(api):
    api.put("/sessions/s")
    assert api.put("/sessions/s/state/variables/a.b:c%20d", {"value": "v"}).status_code == 200
    assert api.get("/sessions/s/state").json()["variables"] == {"a.b:c d": "v"}
    assert_error(api.put("/sessions/s/state/variables/nul%00", {"value": "v"}), 422, "validation_error")
    assert_error(api.get("/sessions/s/state/variables/a%2Fb"), 404, "not_found")


# ---------------------------------------------------------------------------------------------
# POST /sessions/{id}/clear


def test_clear_keeps_the_system_prompt_and_restarts_turns(api, chat):
    api.put("/sessions/chat/state/variables/a", {"value": "kept"})
    r = api.post("/sessions/chat/clear")
    assert r.status_code == 200
    body = r.json()
    assert body["message_count"] == 1 and body["current_turn"] == 0
    assert body["state"]["variables"] == {"a": "kept"}
    assert [m["role"] for m in api.get("/sessions/chat/messages").json()["items"]] == ["system"]
    assert api.get("/sessions/chat/turns").json()["items"] == []
    assert api.post("/sessions/chat/messages", {"role": "user", "content": "again"}).json()["turn"] == 1


def test_clear_an_expired_session_is_410(api):
    api.put("/sessions/old")
    _expire("old")
    assert_error(api.post("/sessions/old/clear"), 410, "session_expired")


# ---------------------------------------------------------------------------------------------
# Authentication, routing, odd paths


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer ", "Bearer nope", "Bearer convo_nope", "Basic dXNlcjpwYXNz", "bearer" + " x" * 10],
)
def test_missing_or_invalid_key_is_401(api, header):
    api.put("/sessions/s")
    client = Api(None)
    headers = {"Authorization": header} if header else {}
    for method, path, body in [
        ("GET", "/sessions", None),
        ("GET", "/sessions/s", None),
        ("POST", "/sessions", {"id": "x"}),
        ("POST", "/sessions/s/messages", {"role": "user", "content": "x"}),
        ("DELETE", "/sessions/s", None),
    ]:
        r = client.call(method, path, body, headers=headers)
        assert_error(r, 401, "unauthorized")
        assert r["WWW-Authenticate"].startswith("Bearer")
    assert ConversationSession.objects.count() == 1 and not Message.objects.exists()


def test_unauthenticated_malformed_body_is_401_not_400(api):
    assert_error(Api(None).post("/sessions", raw="{nope"), 401, "unauthorized")


@pytest.mark.parametrize(
    "path",
    [
        "/sessions/..%2F..%2Fadmin",
        "/sessions/a%2Fb",
        "/sessions/a%2Fb/messages",
        "/sessions/%2e%2e",
        "/sessions/%00",
        "/sessions/%ED%A0%80",
        "/sessions/" + "x" * 5000,
        "/sessions/" + "x" * 5000 + "/messages",
        "/sessions/s/../s",
        "/sessions/s%0A/state/variables/..%2Fs",
        "/sessions/%0A",
        "/sessions/s/messages%0A",
        "/sessions/s/",
        "/nothing",
        "/",
    ],
)
def test_path_tricks_are_404_and_change_nothing(api, path):
    api.put("/sessions/s")
    api.post("/sessions/s/messages", {"role": "user", "content": "keep"})
    before = _snapshot()
    for method in ["GET", "POST", "PUT", "DELETE"]:
        body = {"role": "user", "content": "x"} if method in ("POST", "PUT") else None
        r = Api(api.secret).call(method, path, body)
        assert r.status_code in (404, 405, 422), (method, path, r.status_code, r.content[:200])
        assert_error(r, r.status_code)
    assert _snapshot() == before


def test_wrong_method_is_405_in_the_error_shape(api):
    api.put("/sessions/s")
    r = api.call("POST", "/sessions/s", {"system_prompt": "x"})
    assert_error(r, 405, "method_not_allowed")
    assert set(r["Allow"].replace(" ", "").split(",")) == {"GET", "PUT", "PATCH", "DELETE"}


def test_browser_session_authenticates_with_csrf_on_unsafe_methods(user, client):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    r = browser.get("/api/v1/sessions")
    assert r.status_code == 200
    r = browser.post("/api/v1/sessions", data='{"id": "web"}', content_type="application/json")
    assert_error(r, 403, "csrf_failed")
    assert not ConversationSession.objects.filter(sid="web").exists()
    browser.get("/api/v1/docs")  # sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    r = browser.post(
        "/api/v1/sessions", data='{"id": "web"}', content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert r.status_code == 201
    assert engine.session_get("web").owner == user


def test_browser_session_append_with_idempotency_key(user):
    from django.test import Client

    browser = Client()
    browser.force_login(user)
    browser.put("/api/v1/sessions/web", data="{}", content_type="application/json")
    body = '{"role": "user", "content": "from the page"}'
    headers = {"Idempotency-Key": "page-1"}
    first = browser.post("/api/v1/sessions/web/messages", data=body, content_type="application/json", headers=headers)
    again = browser.post("/api/v1/sessions/web/messages", data=body, content_type="application/json", headers=headers)
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert Message.objects.filter(session__sid="web").count() == 1


def test_inactive_user_key_is_401(user):
    api = api_for(user)
    user.is_active = False
    user.save()
    assert_error(api.get("/sessions"), 401, "unauthorized")


def test_responses_are_json_with_the_documented_status_codes(api):
    spec = api.get("/openapi.json").json()
    assert spec["paths"]["/api/v1/sessions"]["post"]["responses"].keys() >= {"201", "401", "409", "422"}
    assert "201" in spec["paths"]["/api/v1/sessions/{id}/messages"]["post"]["responses"]


# ---------------------------------------------------------------------------------------------
# OpenAPI and docs


def test_openapi_schema(api):
    r = api.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/sessions/{id}/messages" in spec["paths"]
    schemes = spec["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= next(
        iter(s for s in schemes.values() if s["type"] == "http")
    ).items()
    message_in = spec["components"]["schemas"]["MessageIn"]
    assert message_in["required"] == ["role", "content"] and message_in["additionalProperties"] is False


def test_docs_are_served_from_local_static_files(client):
    import re

    from django.contrib.staticfiles import finders

    r = client.get("/api/v1/docs")
    assert r.status_code == 200
    html = r.content.decode()
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.removeprefix("/static/")), asset
    assert '"validatorUrl": null' in html


def test_list_responses_match_their_documented_schemas(api, chat):
    """The list endpoints render without ninja's per-item validation (speed): their bodies must still be
    exactly what the OpenAPI document promises."""
    from jsonschema import Draft202012Validator

    spec = api.get("/openapi.json").json()

    def schema_of(path):
        schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        return Draft202012Validator({**schema, "components": spec["components"]})

    for i in range(3):
        api.put(f"/sessions/more-{i}")
    sessions = api.get("/sessions", query={"limit": 2}).json()
    schema_of("/api/v1/sessions").validate(sessions)
    assert sessions["count"] == 4 and sessions["next_offset"] == 2 and len(sessions["items"]) == 2
    for query in ({}, {"order": "desc", "limit": 2}, {"before": 3}):
        page = api.get("/sessions/chat/messages", query=query).json()
        schema_of("/api/v1/sessions/{id}/messages").validate(page)
        assert page["items"], query
    # The same values render exactly as the validated single-item endpoints render them.
    listed = {s["id"]: s for s in api.get("/sessions").json()["items"]}["chat"]
    single = api.get("/sessions/chat").json()
    assert {k: single[k] for k in listed} == listed
