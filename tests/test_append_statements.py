"""What one append costs in statements, per path, so a change cannot quietly add a round trip.

- PostgreSQL: one read (the session row with its oldest listed messages) and one conditional write
  (session row, message and turn in one statement), whatever the role and whether the list overflows.
- SQLite: the locking path, statement by statement.

And the invariant the one-statement path relies on: a stored session is never over its limit.
"""

import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessions_app import engine
from sessions_app.engine import pg_append
from sessions_app.models import ConversationSession

ROLES = ["user", "assistant", "tool", "system"]


def statements(session_id, role):
    """The SQL statements of one append, each cut to its first words."""
    with CaptureQueriesContext(connection) as captured:
        engine.message_append(session_id, role, "hello")
    return [" ".join(q["sql"].split()[:3]) for q in captured.captured_queries]


def fill(session_id):
    """Bring the session to its limit (2), so the next append drops the oldest message."""
    engine.message_append(session_id, "user", "first")
    engine.message_append(session_id, "assistant", "second")


# transaction=True: no test transaction around the append, so no savepoint statements either.


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("at_limit", [False, True])
def test_postgresql_append_is_one_read_and_one_write(make_session, role, at_limit):
    make_session("s", max_messages=2)
    if at_limit:
        fill("s")
    assert statements("s", role) == ["SELECT s.last_seq, s.low_seq,", "WITH s AS"]


@pytest.mark.django_db(transaction=True)
def test_sqlite_append_runs_under_the_row_lock(make_session):
    if connection.vendor != "sqlite":
        pytest.skip("the locking path's statements on SQLite")
    make_session("s", max_messages=2)
    # BEGIN IMMEDIATE (takes the write lock), SELECT the session (lock_session), INSERT the message
    # (its turn_number opens the turn: no turn row), UPDATE the session's bookkeeping, COMMIT.
    assert statements("s", "user") == [
        "BEGIN IMMEDIATE",
        'SELECT "sessions_app_conversationsession"."key", "sessions_app_conversationsession"."sid",',
        'INSERT INTO "sessions_app_message"',
        'UPDATE "sessions_app_conversationsession" SET',
        "COMMIT",
    ]
    engine.message_append("s", "assistant", "answer")
    # At the limit: the same, plus the SELECT of the oldest listed messages that enforce_limits drops
    # (an assistant message completes its turn by its turn_number alone).
    assert statements("s", "assistant") == [
        "BEGIN IMMEDIATE",
        'SELECT "sessions_app_conversationsession"."key", "sessions_app_conversationsession"."sid",',
        'INSERT INTO "sessions_app_message"',
        'SELECT "sessions_app_message"."seq" AS',
        'UPDATE "sessions_app_conversationsession" SET',
        "COMMIT",
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("seed", range(5))
def test_a_stored_session_is_never_over_its_limit(seed, now):
    """Appends of every role, lower and higher limits, prompt changes and clears, in random order."""
    rng = random.Random(seed)
    engine.session_create("s", system_prompt=rng.choice([None, "sys"]), config=engine.SessionConfig(max_messages=3))
    for _ in range(120):
        action = rng.random()
        if action < 0.8:
            engine.message_append("s", rng.choice(ROLES), "x" * rng.randint(0, 40), now=now)
        elif action < 0.95:
            config = engine.SessionConfig(max_messages=rng.randint(1, 6), persist_system_prompt=rng.random() < 0.7)
            engine.session_update("s", config=config, now=now)
        else:
            engine.session_clear_messages("s", now=now)
        session = engine.session_get("s")
        assert session.message_count <= session.max_messages
        assert session.message_count == len(engine.messages_all(session))


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_session_over_its_limit_anyway_is_appended_under_the_lock(make_session, monkeypatch, now):
    """Should a session be stored over its limit (no engine write does that), the one-statement path,
    which reads only the oldest three listed messages, hands the append to the locking path."""
    for session_id in ("fast", "locked"):
        make_session(session_id, max_messages=10, at=now)
        for i in range(6):
            engine.message_append(session_id, "user" if i % 2 == 0 else "system", f"m{i}", now=now)
        ConversationSession.objects.filter(sid=session_id).update(max_messages=1)
    used = []
    real = pg_append.append_bookkeeping
    monkeypatch.setattr(pg_append, "append_bookkeeping", lambda *args: used.append(1) or real(*args))
    engine.message_append("fast", "assistant", "over", now=now)
    assert used == []  # not applied on the one-statement path
    monkeypatch.setattr(pg_append, "APPEND_TRIES", 0)
    engine.message_append("locked", "assistant", "over", now=now)
    fast, locked = engine.session_get("fast"), engine.session_get("locked")
    assert fast.message_count == 1
    assert [m.seq for m in engine.messages_all(fast)] == [m.seq for m in engine.messages_all(locked)]
    bookkeeping = ("last_seq", "low_seq", "head_seq", "turn_count", "total_tokens")
    assert [getattr(fast, f) for f in bookkeeping] == [getattr(locked, f) for f in bookkeeping]
