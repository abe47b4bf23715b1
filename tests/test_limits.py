"""max_messages: the oldest non-system messages leave the list; turns keep them (nothing is deleted)."""

import pytest

from sessions_app import engine
from sessions_app.models import Message

from .conftest import add

pytestmark = pytest.mark.django_db


def contents(session_id):
    return [m.content for m in engine.messages_all(engine.session_get(session_id))]


def test_limit_without_system_prompt_drops_oldest(make_session):
    make_session("s", max_messages=3)
    for i in range(5):
        add("s", "user", f"m{i}")
    assert contents("s") == ["m2", "m3", "m4"]
    assert engine.session_get("s").message_count == 3


def test_limit_keeps_pinned_system_prompt(make_session):
    make_session("s", system_prompt="sys", max_messages=3)
    for i in range(5):
        add("s", "user", f"m{i}")
    assert contents("s") == ["sys", "m3", "m4"]


def test_limit_of_one_with_system_prompt_keeps_only_the_prompt(make_session):
    make_session("s", system_prompt="sys", max_messages=1)
    add("s", "user", "hello")
    assert contents("s") == ["sys"]
    assert engine.current_turn(engine.session_get("s")) == 1


def test_later_system_message_becomes_pinned_once_first(make_session):
    make_session("s", max_messages=2)
    add("s", "user", "u1")
    add("s", "system", "later system")
    add("s", "user", "u2")  # u1 leaves; the system message is now first
    assert contents("s") == ["later system", "u2"]
    add("s", "user", "u3")  # first is system: the second goes
    assert contents("s") == ["later system", "u3"]
    window = engine.get_context(engine.session_get("s"), 1000)
    assert [m.content for m in window] == ["later system", "u3"]


def test_lowering_max_messages_applies_at_once_like_the_spec_loop(make_session):
    make_session("x", max_messages=8)
    for role, content in [("user", "u1"), ("user", "u2"), ("system", "s"), ("user", "u3")]:
        add("x", role, content)
    engine.session_update("x", config=engine.SessionConfig(max_messages=1))
    assert contents("x") == ["s"]


def test_evicted_messages_stay_in_their_turns_and_in_the_database(make_session):
    make_session("s", max_messages=2)
    add("s", "user", "question 1")
    add("s", "tool", "tool result", tool_call_id="c1")
    add("s", "assistant", "answer 1")
    add("s", "user", "question 2")
    session = engine.session_get("s")
    assert contents("s") == ["answer 1", "question 2"]
    turn = engine.get_turn(session, 1)
    assert turn.user_message.content == "question 1"
    assert [m.content for m in turn.tool_calls] == ["tool result"]
    assert Message.objects.filter(session__sid="s").count() == 4
    assert engine.total_tokens(session) == sum(m.tokens for m in engine.messages_all(session))


def test_second_assistant_message_replaces_the_response_and_both_stay_listed(make_session):
    make_session("s")
    add("s", "user", "q")
    add("s", "assistant", "first try")
    add("s", "assistant", "second try")
    session = engine.session_get("s")
    assert engine.get_turn(session, 1).assistant_response.content == "second try"
    assert contents("s") == ["q", "first try", "second try"]


def test_messages_before_any_user_message_belong_to_no_turn(make_session):
    make_session("s")
    a = add("s", "assistant", "hello, I am a bot")
    t = add("s", "tool", "early", tool_call_id="c0")
    s = add("s", "system", "note")
    assert (a.turn_number, t.turn_number, s.turn_number) == (None, None, None)
    assert engine.current_turn(engine.session_get("s")) == 0
    u = add("s", "user", "hi")
    assert u.turn_number == 1
    assert engine.get_turn(engine.session_get("s"), 1).tool_calls == []


def test_system_message_opens_no_turn_and_is_not_pinned_unless_first(make_session):
    make_session("s")
    add("s", "user", "q")
    add("s", "system", "mid-conversation instruction")
    session = engine.session_get("s")
    assert engine.current_turn(session) == 1
    assert [m.content for m in engine.get_context(session)] == ["q"]


def test_sequence_numbers_are_append_order_and_go_on_after_clear(make_session):
    make_session("s", system_prompt="p")
    seqs = [add("s", "user", f"m{i}").seq for i in range(3)]
    assert seqs == [2, 3, 4]
    engine.session_clear_messages("s")
    assert add("s", "user", "after clear").seq == 5
    assert add("s", "assistant", "a").turn_number == 1
