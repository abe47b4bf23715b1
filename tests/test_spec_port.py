"""The spec's own test module (conversation_session.rs, mod tests), ported one test per test."""

import pytest

from sessions_app import engine
from sessions_app.engine import ChatMessage
from sessions_app.models import Role

from .conftest import add, reload

pytestmark = pytest.mark.django_db


def test_message_creation(make_session):
    make_session("s")
    msg = add("s", "user", "Hello!")
    assert msg.role == Role.USER
    assert msg.content == "Hello!"
    assert msg.created_at.timestamp() > 0


def test_message_builders(make_session):
    msg = ChatMessage.assistant("Hi there!").with_name("Assistant").with_metadata("source", "test")
    assert msg.role == Role.ASSISTANT
    assert msg.name == "Assistant"
    assert msg.metadata["source"] == "test"
    make_session("s")
    stored = engine.message_append_obj("s", msg)
    assert (stored.role, stored.name, stored.metadata) == ("assistant", "Assistant", {"source": "test"})


def test_session_basic(make_session):
    make_session("test_session", system_prompt="You are helpful")
    add("test_session", "user", "Hello!")
    add("test_session", "assistant", "Hi there!")
    session = engine.session_get("test_session")
    assert len(engine.messages_all(session)) == 3
    assert engine.current_turn(session) == 1


def test_session_turns(make_session):
    make_session("test")
    add("test", "user", "First question")
    add("test", "assistant", "First answer")
    add("test", "user", "Second question")
    add("test", "assistant", "Second answer")
    session = engine.session_get("test")
    assert engine.current_turn(session) == 2
    turn1 = engine.get_turn(session, 1)
    assert turn1.user_message.content == "First question"
    assert turn1.is_complete
    turn2 = engine.get_turn(session, 2)
    assert turn2.user_message.content == "Second question"


def test_get_context_with_limit(make_session):
    make_session("test", system_prompt="System")
    for i in range(20):
        add("test", "user", f"Message {i}")
        add("test", "assistant", f"Response {i}")
    context = engine.get_context(engine.session_get("test"), 100)
    assert context
    assert context[0].role == Role.SYSTEM


def test_session_state(make_session):
    make_session("test")
    engine.state_set("test", "user_name", "Alice")
    engine.state_set("test", "preference", "dark_mode")
    session = engine.session_get("test")
    assert engine.state_get(session, "user_name") == "Alice"
    assert engine.state_get(session, "preference") == "dark_mode"

    prefs = {"theme": "dark", "language": "en"}
    engine.state_set_data("test", "prefs", prefs)
    assert engine.state_get_data(engine.session_get("test"), "prefs") == prefs


def test_message_limit(make_session):
    make_session("test", max_messages=5)
    for i in range(10):
        add("test", "user", f"Message {i}")
    assert len(engine.messages_all(engine.session_get("test"))) == 5


def test_clear_messages(make_session):
    make_session("test", system_prompt="System prompt")
    add("test", "user", "Hello")
    add("test", "assistant", "Hi")
    assert len(engine.messages_all(engine.session_get("test"))) == 3
    engine.session_clear_messages("test")
    session = engine.session_get("test")
    messages = engine.messages_all(session)
    assert len(messages) == 1
    assert messages[0].role == Role.SYSTEM
    assert engine.turns(session) == []


def test_get_by_role(make_session):
    make_session("test")
    for role, content in [("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")]:
        add("test", role, content)
    session = engine.session_get("test")
    assert len(engine.messages_by_role(session, "user")) == 2
    assert len(engine.messages_by_role(session, "assistant")) == 2


def test_session_manager():
    session = engine.session_create("session1")
    assert session.id == "session1"
    loaded, created = engine.session_get_or_create("session1")
    assert loaded.id == "session1" and not created
    assert len(engine.session_list()) == 1
    engine.session_delete("session1")
    assert engine.session_list() == []


def test_session_store(user):
    engine.session_create("test", owner=user)
    add("test", "user", "Hello")
    loaded = engine.session_get("test")
    assert len(engine.messages_all(loaded)) == 1
    assert len(engine.session_list_for_user(user)) == 1


def test_tool_message(make_session):
    make_session("test")
    add("test", "user", "Calculate 2+2")
    engine.message_append_obj("test", ChatMessage.tool("4", "call_123"))
    add("test", "assistant", "The result is 4")
    turn = engine.get_turn(engine.session_get("test"), 1)
    assert len(turn.tool_calls) == 1
    assert turn.tool_calls[0].tool_call_id == "call_123"


def test_token_estimation():
    assert ChatMessage.user("Hello world").estimated_tokens() == 3


def test_total_tokens(make_session):
    make_session("test")
    add("test", "user", "Hello world")
    add("test", "assistant", "Hi there")
    assert engine.total_tokens(reload(engine.session_get("test"))) >= 4
