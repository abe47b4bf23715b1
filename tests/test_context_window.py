"""The spec's get_context: pinned system message, newest first, stop at the first that does not fit."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessions_app import engine
from sessions_app.models import ConversationSession, Message, Role

from .conftest import add

pytestmark = pytest.mark.django_db


def window(session_id, budget=None):
    return engine.context_window(engine.session_get(session_id), budget)


def test_token_estimate_counts_utf8_bytes_like_rust_len():
    assert engine.estimate_tokens("") == 1
    assert engine.estimate_tokens("abc") == 1
    assert engine.estimate_tokens("abcd") == 2
    assert engine.estimate_tokens("Hello world") == 3
    assert engine.estimate_tokens("héllo") == 2  # 6 bytes
    assert engine.estimate_tokens("日本語") == 3  # 9 bytes
    assert engine.estimate_tokens("🙂🙂") == 3  # 8 bytes


def test_token_estimate_is_stored_with_the_message(make_session):
    make_session("s")
    msg = add("s", "user", "日本語のテキスト")
    assert Message.objects.get(pk=msg.pk).tokens == len("日本語のテキスト".encode()) // 4 + 1


def test_system_prompt_is_pinned_even_over_budget(make_session):
    make_session("s", system_prompt="x" * 400)  # 101 tokens
    add("s", "user", "hi")
    w = window("s", 50)
    assert [m.role for m in w.messages] == [Role.SYSTEM]
    assert w.total_tokens == 101
    assert w.cut_before_seq == 2


def test_window_stops_at_first_message_that_does_not_fit(make_session):
    make_session("s")
    add("s", "user", "a" * 40)  # 11 tokens, would fit after the cut, but the walk has stopped
    add("s", "user", "b" * 400)  # 101 tokens: does not fit
    add("s", "user", "c" * 20)  # 6 tokens
    w = window("s", 30)
    assert [m.content[0] for m in w.messages] == ["c"]
    assert w.cut_before_seq == 2
    assert w.total_tokens == 6


def test_window_is_chronological_and_skips_later_system_messages(make_session):
    make_session("s", system_prompt="sys")
    add("s", "user", "one")
    add("s", "system", "later system")
    add("s", "assistant", "two")
    add("s", "user", "three")
    assert [m.content for m in window("s").messages] == ["sys", "one", "two", "three"]


def test_default_budget_is_the_session_max_tokens(make_session):
    make_session("s", max_tokens=5)
    add("s", "user", "a" * 12)  # 4 tokens
    add("s", "user", "b" * 4)  # 2 tokens
    assert [m.content for m in window("s").messages] == ["b" * 4]
    assert window("s").max_tokens == 5


def test_budget_exactly_filled_includes_the_message(make_session):
    make_session("s")
    add("s", "user", "a" * 8)  # 3 tokens
    add("s", "user", "b" * 8)  # 3 tokens
    assert len(window("s", 6).messages) == 2
    assert len(window("s", 5).messages) == 1
    assert window("s", 0).messages == []


def test_empty_session_has_empty_window(make_session):
    make_session("s")
    w = window("s")
    assert (w.messages, w.total_tokens, w.cut_before_seq) == ([], 0, None)


def test_window_cost_follows_the_window_not_the_session(make_session):
    """A 3,000-message session: the window reads a bounded number of rows in a few queries."""
    make_session("big", max_messages=10_000)
    session = ConversationSession.objects.get(sid="big")
    now = session.created_at
    Message.objects.bulk_create(
        Message(session=session, seq=i, role="user", content="x" * 200, created_at=now, tokens=51)
        for i in range(1, 3001)
    )
    ConversationSession.objects.filter(sid="big").update(last_seq=3000, total_tokens=3000 * 51)
    session = engine.session_get("big")
    with CaptureQueriesContext(connection) as ctx:
        w = engine.context_window(session, 4096)
    assert len(w.messages) == 4096 // 51
    assert [m.seq for m in w.messages] == list(range(3001 - len(w.messages), 3001))
    assert len(ctx.captured_queries) <= 4
    for query in ctx.captured_queries:
        assert "LIMIT" in query["sql"] or 'seq" >=' in query["sql"]


def test_excluded_messages_take_no_room_and_are_not_returned(make_session):
    """A regenerated reply leaves out the turn's earlier responses before the budget is counted: a
    window that they would cut short fits without them."""
    make_session("s", system_prompt="sys")  # 1 token, pinned
    add("s", "user", "a" * 40)  # seq 2, 11 tokens
    add("s", "assistant", "b" * 40)  # seq 3, 11 tokens
    add("s", "user", "q" * 8)  # seq 4, 3 tokens: the turn being regenerated
    add("s", "assistant", "r" * 200)  # seq 5, 51 tokens: its earlier response
    add("s", "tool", "t" * 8)  # seq 6, 3 tokens
    session = engine.session_get("s")
    budget = 1 + 11 + 11 + 3 + 3

    cut = engine.context_window(session, budget)
    assert [m.seq for m in cut.messages] == [1, 6]
    assert cut.cut_before_seq == 5

    w = engine.context_window(session, budget, exclude_seqs=[5])
    assert [m.seq for m in w.messages] == [1, 2, 3, 4, 6]
    assert (w.total_tokens, w.cut_before_seq) == (budget, None)

    # One token less: the oldest no longer fits, and the excluded message is still neither counted nor cut.
    w = engine.context_window(session, budget - 1, exclude_seqs={5})
    assert [m.seq for m in w.messages] == [1, 3, 4, 6]
    assert (w.total_tokens, w.cut_before_seq) == (budget - 11, 2)
