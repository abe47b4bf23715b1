"""Planner statistics: Convo's tables are analysed after migrations and after a purge (engine/stats.py)."""

import datetime as dt

import pytest
from django.core.management import call_command
from django.db import connection

from sessions_app import engine
from sessions_app.engine.stats import TABLES

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
        cursor.execute("SELECT DISTINCT tbl, 1 FROM sqlite_stat1")
        return dict(cursor.fetchall())


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
    after = last_analyzed()
    if ON_POSTGRES:
        assert after[MESSAGES] and (before[MESSAGES] is None or after[MESSAGES] > before[MESSAGES])
    else:
        assert MESSAGES in after and MESSAGES not in before


@pytest.mark.django_db
def test_analyze_on_an_empty_database_is_harmless():
    engine.analyze()
    engine.analyze()
