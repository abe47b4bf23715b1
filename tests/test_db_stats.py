"""Planner statistics: Convo's tables are analysed after migrations and after a purge (engine/stats.py)."""

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.db import connection

from sessions_app import engine
from sessions_app.engine.stats import TABLES
from sessions_app.models import Message

from .conftest import ON_POSTGRES, add

PAST = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
MESSAGES = "sessions_app_message"


def last_analyzed() -> dict[str, object]:
    """When each of Convo's tables was last analysed (PostgreSQL), or which have statistics (SQLite)."""
    with connection.cursor() as cursor:
        if ON_POSTGRES:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # read the current counters, not a cached copy
            cursor.execute("SELECT relname, last_analyze FROM pg_stat_user_tables WHERE relname = ANY(%s)", [TABLES])
            return dict(cursor.fetchall())
        # The first number of a table's stat is its row count when it was analysed.
        cursor.execute("SELECT tbl, max(CAST(stat AS INTEGER)) FROM sqlite_stat1 GROUP BY tbl")
        return dict(cursor.fetchall())


def assert_analysed_since(before: dict, after: dict) -> None:
    """The message table was analysed between the two readings (SQLite: its statistics count the rows
    there are now)."""
    if ON_POSTGRES:
        assert after[MESSAGES] and (before[MESSAGES] is None or after[MESSAGES] > before[MESSAGES])
    else:
        assert after.get(MESSAGES) == Message.objects.count() != before.get(MESSAGES)


@pytest.mark.postgres
@pytest.mark.django_db
def test_migrations_leave_the_tables_analysed():
    """The test database was just migrated: every Convo table has statistics, autovacuum or not."""
    stats = last_analyzed()
    assert set(stats) == set(TABLES)
    assert all(stats.values()), stats


@pytest.mark.django_db(transaction=True)
def test_purge_command_refreshes_the_statistics():
    for i in range(3):
        engine.session_create(f"old-{i}", config=engine.SessionConfig(timeout_seconds=60), now=PAST)
        for j in range(4):
            add(f"old-{i}", "user", f"m{j}", now=PAST)
    engine.session_create("live")
    add("live", "user", "kept")
    before = last_analyzed()
    call_command("purge_expired_sessions")
    assert_analysed_since(before, last_analyzed())


@pytest.mark.django_db
def test_analyze_on_an_empty_database_is_harmless():
    engine.analyze()
    engine.analyze()


@pytest.mark.django_db(transaction=True)
def test_import_command_refreshes_the_statistics(user):
    from pathlib import Path

    before = last_analyzed()
    fixture = Path(__file__).parent / "fixtures" / "transfer" / "chatgpt_conversations.json"
    call_command("import_sessions", str(fixture), "--owner", user.username, stdout=io.StringIO())
    assert_analysed_since(before, last_analyzed())
