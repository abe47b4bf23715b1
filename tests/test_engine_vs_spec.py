"""Property test: random operation sequences give the same lists, turns, totals and context windows
in the database engine as in a literal port of the spec (tests/spec_model.py)."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessions_app import engine

from .spec_model import Msg, SpecSession

pytestmark = pytest.mark.django_db

_ids = itertools.count()

texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=60)
operations = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["user", "assistant", "tool", "system", "user", "assistant"]), texts),
        st.tuples(st.just("clear"), st.just("")),
        st.tuples(st.just("limit"), st.integers(1, 8)),
    ),
    max_size=40,
)


def _as_tuple(message) -> tuple:
    return (message.role, message.content)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=operations,
    max_messages=st.integers(1, 12),
    persist=st.booleans(),
    prompt=st.one_of(st.none(), texts),
    budgets=st.lists(st.integers(0, 120), min_size=1, max_size=3),
)
def test_engine_matches_spec(ops, max_messages, persist, prompt, budgets):
    session_id = f"prop-{next(_ids)}"
    engine.session_create(
        session_id,
        system_prompt=prompt,
        config=engine.SessionConfig(max_messages=max_messages, max_tokens=50, persist_system_prompt=persist),
    )
    spec = SpecSession(max_messages=max_messages, max_tokens=50, persist_system_prompt=persist)
    if prompt is not None:
        spec.with_system_prompt(prompt)

    for role, content in ops:
        if role == "clear":
            engine.session_clear_messages(session_id)
            spec.clear_messages()
            continue
        if role == "limit":
            # Convo applies a lowered max_messages at once, as the next append would in the spec.
            config = engine.SessionConfig(max_messages=content, max_tokens=50, persist_system_prompt=persist)
            engine.session_update(session_id, config=config)
            spec.max_messages = content
            spec.enforce_limits()
            continue
        call_id = f"call-{len(spec.messages)}" if role == "tool" else None
        engine.message_append(session_id, role, content, tool_call_id=call_id)
        spec.add_message(Msg(role, content, call_id))

    session = engine.session_get(session_id)
    assert [_as_tuple(m) for m in engine.messages_all(session)] == [_as_tuple(m) for m in spec.messages]
    assert session.message_count == len(spec.messages)
    assert engine.total_tokens(session) == spec.total_tokens()
    assert engine.current_turn(session) == len(spec.turns)
    for budget in [None, *budgets]:
        window = engine.context_window(session, budget)
        assert [_as_tuple(m) for m in window.messages] == [_as_tuple(m) for m in spec.get_context(budget)]
        assert window.total_tokens == sum(m.tokens for m in window.messages)
    for n in (0, 1, 3, 100):
        assert [_as_tuple(m) for m in engine.messages_recent(session, n)] == [_as_tuple(m) for m in spec.get_recent(n)]
    stored_turns = engine.turns(session)
    assert len(stored_turns) == len(spec.turns)
    for turn, spec_turn in zip(stored_turns, spec.turns, strict=True):
        assert turn.number == spec_turn.number
        assert _as_tuple(turn.user_message) == _as_tuple(spec_turn.user_message)
        assert [_as_tuple(m) for m in turn.tool_calls] == [_as_tuple(m) for m in spec_turn.tool_calls]
        expected = spec_turn.assistant_response
        assert (turn.assistant_response and _as_tuple(turn.assistant_response)) == (expected and _as_tuple(expected))
        assert turn.is_complete == (expected is not None)
