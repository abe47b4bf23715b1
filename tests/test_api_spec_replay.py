"""The spec's test module (conversation_session.rs, mod tests), replayed through the JSON API."""

from __future__ import annotations

import datetime as dt

import pytest

from sessions_app.models import ConversationSession

from .test_api_support import api_for, assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    return api_for(user)


def add(api, session_id, role, content, **extra):
    r = api.post(f"/sessions/{session_id}/messages", {"role": role, "content": content, **extra})
    assert r.status_code == 201, r.content
    return r.json()


def messages(api, session_id):
    return api.get(f"/sessions/{session_id}/messages", query={"limit": 500}).json()["items"]


def test_message_creation(api):
    api.post("/sessions", {"id": "s"})
    msg = add(api, "s", "user", "Hello!")
    assert msg["role"] == "user" and msg["content"] == "Hello!"
    assert dt.datetime.fromisoformat(msg["created_at"]).timestamp() > 0


def test_message_builders(api):
    api.post("/sessions", {"id": "s"})
    msg = add(api, "s", "assistant", "Hi there!", name="Assistant", metadata={"source": "test"})
    assert (msg["role"], msg["name"], msg["metadata"]) == ("assistant", "Assistant", {"source": "test"})


def test_session_basic(api):
    api.post("/sessions", {"id": "test_session", "system_prompt": "You are helpful"})
    add(api, "test_session", "user", "Hello!")
    add(api, "test_session", "assistant", "Hi there!")
    assert len(messages(api, "test_session")) == 3
    assert api.get("/sessions/test_session").json()["current_turn"] == 1


def test_session_turns(api):
    api.post("/sessions", {"id": "test"})
    for role, content in [
        ("user", "First question"),
        ("assistant", "First answer"),
        ("user", "Second question"),
        ("assistant", "Second answer"),
    ]:
        add(api, "test", role, content)
    assert api.get("/sessions/test").json()["current_turn"] == 2
    turn1 = api.get("/sessions/test/turns/1").json()
    assert turn1["user_message"]["content"] == "First question"
    assert turn1["complete"] is True
    assert api.get("/sessions/test/turns/2").json()["user_message"]["content"] == "Second question"
    assert_error(api.get("/sessions/test/turns/0"), 404)
    assert_error(api.get("/sessions/test/turns/3"), 404)


def test_get_context_with_limit(api):
    api.post("/sessions", {"id": "test", "system_prompt": "System"})
    for i in range(20):
        add(api, "test", "user", f"Message {i}")
        add(api, "test", "assistant", f"Response {i}")
    context = api.get("/sessions/test/context", query={"max_tokens": 100}).json()
    assert context["messages"]
    assert context["messages"][0]["role"] == "system"
    assert context["total_tokens"] <= 100 and context["max_tokens"] == 100


def test_session_state(api):
    api.post("/sessions", {"id": "test"})
    api.put("/sessions/test/state/variables/user_name", {"value": "Alice"})
    api.put("/sessions/test/state/variables/preference", {"value": "dark_mode"})
    assert api.get("/sessions/test/state/variables/user_name").json()["value"] == "Alice"
    assert api.get("/sessions/test/state/variables/preference").json()["value"] == "dark_mode"
    prefs = {"theme": "dark", "language": "en"}
    api.put("/sessions/test/state/data/prefs", {"value": prefs})
    assert api.get("/sessions/test/state/data/prefs").json()["value"] == prefs


def test_message_limit(api):
    api.post("/sessions", {"id": "test", "config": {"max_messages": 5}})
    for i in range(10):
        add(api, "test", "user", f"Message {i}")
    assert len(messages(api, "test")) == 5
    assert api.get("/sessions/test").json()["message_count"] == 5


def test_clear_messages(api):
    api.post("/sessions", {"id": "test", "system_prompt": "System prompt"})
    add(api, "test", "user", "Hello")
    add(api, "test", "assistant", "Hi")
    assert len(messages(api, "test")) == 3
    assert api.post("/sessions/test/clear").status_code == 200
    remaining = messages(api, "test")
    assert len(remaining) == 1 and remaining[0]["role"] == "system"
    assert api.get("/sessions/test/turns").json()["items"] == []


def test_get_by_role(api):
    api.post("/sessions", {"id": "test"})
    for role, content in [("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")]:
        add(api, "test", role, content)
    roles = [m["role"] for m in messages(api, "test")]
    assert roles.count("user") == 2 and roles.count("assistant") == 2


def test_session_manager(api):
    assert api.post("/sessions", {"id": "session1"}).json()["id"] == "session1"
    loaded = api.put("/sessions/session1")
    assert loaded.status_code == 200 and loaded.json()["id"] == "session1"
    assert len(api.get("/sessions").json()["items"]) == 1
    assert api.delete("/sessions/session1").status_code == 204
    assert api.get("/sessions").json()["items"] == []


def test_session_store(api):
    api.post("/sessions", {"id": "test"})
    add(api, "test", "user", "Hello")
    assert len(messages(api, "test")) == 1
    assert api.get("/sessions").json()["count"] == 1


def test_tool_message(api):
    api.post("/sessions", {"id": "test"})
    add(api, "test", "user", "Calculate 2+2")
    add(api, "test", "tool", "4", tool_call_id="call_123")
    add(api, "test", "assistant", "The result is 4")
    turn = api.get("/sessions/test/turns/1").json()
    assert len(turn["tool_calls"]) == 1
    assert turn["tool_calls"][0]["tool_call_id"] == "call_123"


def test_token_estimation(api):
    api.post("/sessions", {"id": "test"})
    assert add(api, "test", "user", "Hello world")["tokens"] == 3


def test_total_tokens(api):
    api.post("/sessions", {"id": "test"})
    add(api, "test", "user", "Hello world")
    add(api, "test", "assistant", "Hi there")
    assert api.get("/sessions/test").json()["total_tokens"] >= 4


def test_expiry_via_get_or_create(api):
    """The spec's get_or_create on an expired session: a fresh one under the same id."""
    r = api.put("/sessions/test", {"config": {"timeout_seconds": 60}})
    assert r.status_code == 201
    add(api, "test", "user", "Hello")
    assert api.put("/sessions/test").status_code == 200
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    ConversationSession.objects.filter(sid="test").update(updated_at=past, expires_at=past + dt.timedelta(seconds=61))
    assert api.get("/sessions/test").json()["expired"] is True
    assert_error(api.post("/sessions/test/messages", {"role": "user", "content": "late"}), 410, "session_expired")
    fresh = api.put("/sessions/test")
    assert fresh.status_code == 201
    assert fresh.json()["expired"] is False and fresh.json()["message_count"] == 0
    assert messages(api, "test") == []
