"""The engine's fast paths agree with the plain rules they replace.

- message_append on PostgreSQL is one read and one conditional write (no lock held in between); when
  another writer got in between it falls back to the session's row lock. Random appends through each
  path store the same rows, and a forced conflict is detected and retried.
- context_window reads the newest rows in predicted chunks; on random sessions it returns exactly
  the spec's get_context computed over the whole list.
"""

import random
import threading

import pytest
from django.db import connection

from sessions_app import engine
from sessions_app.engine import pg_append
from sessions_app.models import ConversationSession, Message

from .conftest import add

ROLES = ["user", "assistant", "user", "assistant", "tool", "system"]


def snapshot(session_id):
    """Everything an append writes, without ids and times."""
    session = ConversationSession.objects.get(sid=session_id)
    ids = dict(Message.objects.filter(session__sid=session_id).values_list("id", "seq"))
    return {
        "bookkeeping": [getattr(session, f) for f in ("last_seq", "low_seq", "head_seq", "turn_count", "total_tokens")],
        "listed": [m.seq for m in engine.messages_all(session)],
        "messages": list(
            Message.objects.filter(session__sid=session_id)
            .order_by("seq")
            .values_list("seq", "role", "content", "name", "tool_call_id", "metadata", "tokens", "turn_number")
        ),
        "turns": [
            (t.number, ids[t.user_message_id], ids.get(t.assistant_response_id), t.completed_at is not None)
            for t in engine.turns(session)
        ],
        "context": [m.seq for m in engine.get_context(session, 40)],
    }


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("seed", range(12))
def test_one_statement_append_matches_locked_append(seed, monkeypatch, now):
    """Random appends (every role, tiny limits, with and without a pinned prompt) store the same rows."""
    rng = random.Random(seed)
    config = engine.SessionConfig(max_messages=rng.randint(1, 6), persist_system_prompt=rng.random() < 0.7)
    prompt = rng.choice([None, "You are terse.", "Système: réponds en français 🙂"])
    ops = [
        (rng.choice(ROLES), "x" * rng.randint(0, 60) + rng.choice(["", "é", "🙂"]), rng.choice([None, "n"]))
        for _ in range(40)
    ]
    for session_id, tries in (("fast", pg_append.APPEND_TRIES), ("locked", 0)):
        monkeypatch.setattr(pg_append, "APPEND_TRIES", tries)
        engine.session_create(session_id, system_prompt=prompt, config=config, now=now)
        for role, content, name in ops:
            message = engine.message_append(session_id, role, content, name=name, metadata={"k": name or ""}, now=now)
            stored = Message.objects.get(pk=message.pk)
            assert (stored.seq, stored.turn_number, stored.tokens) == (message.seq, message.turn_number, message.tokens)
    assert snapshot("fast") == snapshot("locked")


@pytest.mark.postgres
@pytest.mark.django_db
def test_write_in_between_is_detected_and_retried(make_session, monkeypatch, now):
    """An append that lands between another append's read and write makes that one start over.

    Everything happens at the same ``now``, so only the bookkeeping tells that something changed."""
    make_session("s", max_messages=3, at=now)
    real = pg_append.append_bookkeeping
    interleaved = []

    def bookkeeping_with_a_write_in_between(session, new):
        if not interleaved:
            interleaved.append(None)
            interleaved[0] = engine.message_append("s", "user", "got in first", now=now)
        real(session, new)

    monkeypatch.setattr(pg_append, "append_bookkeeping", bookkeeping_with_a_write_in_between)
    message = engine.message_append("s", "assistant", "answer", now=now)
    assert (interleaved[0].seq, message.seq) == (1, 2)
    assert message.turn_number == 1
    turn = engine.get_turn(engine.session_get("s"), 1)
    assert (turn.user_message.content, turn.assistant_response.content) == ("got in first", "answer")


@pytest.mark.django_db
def test_expired_and_foreign_sessions_are_refused(make_session, user, other_user, now):
    make_session("mine", owner=user, timeout_seconds=10, at=now)
    with pytest.raises(engine.SessionNotFound):
        engine.message_append("mine", "user", "hi", owner=other_user, now=now)
    with pytest.raises(engine.SessionNotFound):
        engine.message_append("mine", "user", "hi", owner=None, now=now)
    with pytest.raises(engine.SessionExpired):
        engine.message_append("mine", "user", "hi", owner=user, now=now.replace(second=now.second + 11))
    assert engine.message_append("mine", "user", "hi", owner=user, now=now).seq == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_sequences_and_turns_gap_free(make_session):
    """4 threads x 50 appends to one session: seq 1..200, one turn per user message, no error."""
    make_session("busy", max_messages=30)
    errors = []

    def worker(n):
        try:
            for i in range(50):
                engine.message_append("busy", "user" if i % 2 == 0 else "assistant", f"w{n} m{i}")
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    seqs = list(Message.objects.filter(session__sid="busy").order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 201))
    session = engine.session_get("busy")
    numbers = [t.number for t in engine.turns(engine.session_get("busy"))]
    assert numbers == list(range(1, 101)) and session.turn_count == 100
    assert session.message_count == 30
    listed = engine.messages_all(session)
    assert [m.seq for m in listed] == list(range(171, 201))
    assert session.total_tokens == sum(m.tokens for m in listed)


def spec_context(listed, budget):
    """The spec's get_context over the whole message list, in plain Python."""
    head, rest = (listed[:1], listed[1:]) if listed and listed[0].role == "system" else ([], listed)
    used = sum(m.tokens for m in head)
    picked, cut = [], None
    for m in reversed(rest):
        if m.role == "system":
            continue
        if used + m.tokens > budget:
            cut = m.seq
            break
        used += m.tokens
        picked.append(m)
    return [m.seq for m in head + picked[::-1]], used, cut


@pytest.mark.django_db
@pytest.mark.parametrize("seed", range(10))
def test_context_window_is_the_spec_get_context(seed, now):
    """Random sessions (system messages anywhere, evictions, uneven sizes) and budgets from 0 up."""
    rng = random.Random(seed)
    config = engine.SessionConfig(max_messages=rng.choice([3, 10, 60, 500]))
    prompt = rng.choice([None, "sys " * rng.randint(1, 40)])
    engine.session_create("c", system_prompt=prompt, config=config, now=now)
    for _ in range(rng.randint(0, 150)):
        size = rng.choice([0, 3, 20, 200, 900]) + rng.randint(0, 30)
        engine.message_append("c", rng.choice(ROLES + ["user", "assistant"] * 3), "w" * size, now=now)
    session = engine.session_get("c")
    listed = engine.messages_all(session)
    # Budgets that the newest messages fill exactly, one token short and one over, besides plain ones.
    exact = sum(m.tokens for m in listed[:1] if m.role == "system")
    exact += sum(m.tokens for m in [m for m in listed[1:] if m.role != "system"][-rng.randint(1, 40) :])
    for budget in [0, 1, 5, 30, 100, 700, 4096, 10**6, rng.randint(0, 3000), exact - 1, exact, exact + 1]:
        window = engine.context_window(session, budget)
        assert ([m.seq for m in window.messages], window.total_tokens, window.cut_before_seq) == spec_context(
            listed, budget
        ), budget
        assert window.max_tokens == budget
        assert [m.content for m in window.messages] == [
            m.content for m in listed if m.seq in {w.seq for w in window.messages}
        ]
    assert engine.context_window(session).max_tokens == config.max_tokens


@pytest.mark.django_db
def test_context_window_reads_further_when_the_newest_are_smaller_than_average(make_session, now):
    """Big old messages make the first chunk too short: the window reads on until the budget is used."""
    make_session("c", max_messages=1000, at=now)
    for _ in range(20):
        add("c", "user", "x" * 4000, now=now)
    for _ in range(300):
        add("c", "assistant", "", now=now)
    session = engine.session_get("c")
    window = engine.context_window(session, 310)
    assert window.total_tokens == 300 and len(window.messages) == 300
    assert window.cut_before_seq == 20  # the newest 4000-character user message
    assert spec_context(engine.messages_all(session), 310) == ([m.seq for m in window.messages], 300, 20)


@pytest.mark.django_db
def test_append_to_a_session_id_given_as_a_number(make_session, now):
    """An id is a string (or a session is named by its key): a number names no session, on both paths."""
    make_session("42", at=now)
    for wrong in (42, 43):
        with pytest.raises(engine.SessionNotFound):
            engine.message_append(wrong, "user", "hi", now=now)
    assert engine.message_append("42", "user", "hi", now=now).seq == 1
