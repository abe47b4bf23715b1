"""Purging expired sessions: the engine function and the purge_expired_sessions command."""

import datetime as dt
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from sessions_app import engine
from sessions_app.models import ConversationSession, Message, Turn

from .conftest import add

pytestmark = pytest.mark.django_db
PAST = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)


def seed(expired: int, live: int, messages: int = 4) -> None:
    for i in range(expired):
        engine.session_create(f"old-{i}", config=engine.SessionConfig(timeout_seconds=60), now=PAST)
        for j in range(messages):
            add(f"old-{i}", "user" if j % 2 == 0 else "assistant", f"m{j}", now=PAST)
        engine.turn_set_metadata(f"old-{i}", 1, {"note": "stored"}, now=PAST)  # a turn row to delete
    for i in range(live):
        engine.session_create(f"live-{i}")
        add(f"live-{i}", "user", "still here")
        engine.turn_set_metadata(f"live-{i}", 1, {"note": "stored"})
    engine.session_create("forever", config=engine.SessionConfig(timeout_seconds=None), now=PAST)


def test_purge_deletes_only_expired_sessions_with_their_rows():
    seed(expired=5, live=3)
    result = engine.purge_expired(batch_size=2)
    assert (result.sessions, result.messages) == (5, 20)
    assert sorted(ConversationSession.objects.values_list("sid", flat=True)) == [
        "forever",
        "live-0",
        "live-1",
        "live-2",
    ]
    assert Message.objects.count() == 3
    assert Turn.objects.count() == 3


def test_purge_sessions_rechecks_expiry_so_a_touched_session_survives():
    seed(expired=2, live=0)
    picked = [engine.session_get(sid).pk for sid in ("old-0", "old-1")]
    # old-1 becomes active again after being picked (the spec's get_or_create replaces it).
    engine.session_get_or_create("old-1")
    result = engine.purge_sessions(picked)
    assert result.sessions == 1
    assert ConversationSession.objects.filter(sid="old-1").exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_session_in_use_during_purge_is_kept():
    """A writer holds old-0's row lock and makes it live while the purge runs: it survives."""
    seed(expired=3, live=0, messages=1)
    locked, release = threading.Event(), threading.Event()

    def writer():
        with transaction.atomic():
            session = ConversationSession.objects.select_for_update().get(sid="old-0")
            locked.set()
            release.wait(10)
            session.timeout_seconds = None
            session.expires_at = None
            session.save()
        connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert locked.wait(10)
    try:
        result = engine.purge_expired(batch_size=1)
    finally:
        release.set()
        thread.join(10)
    assert result.sessions == 2
    assert ConversationSession.objects.filter(sid="old-0").exists()


def test_command_deletes_and_reports():
    seed(expired=3, live=2, messages=2)
    out = io.StringIO()
    call_command("purge_expired_sessions", "--batch-size", "2", stdout=out)
    assert "Deleted 3 expired session(s) with 6 message(s)." in out.getvalue()
    assert ConversationSession.objects.count() == 3


def test_command_dry_run_deletes_nothing():
    seed(expired=2, live=1, messages=3)
    out = io.StringIO()
    call_command("purge_expired_sessions", "--dry-run", stdout=out)
    assert "would delete 2 expired session(s) with 6 message(s)" in out.getvalue()
    assert ConversationSession.objects.count() == 4


def test_command_refuses_bad_batch_size():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="batch-size"):
        call_command("purge_expired_sessions", "--batch-size", "0")


def test_command_exits_non_zero_when_the_database_is_unreachable():
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DATABASE_URL": "postgres://nobody@127.0.0.1:1/nothing"}
    proc = subprocess.run(
        [sys.executable, "manage.py", "purge_expired_sessions"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Cannot reach the database" in proc.stderr
    assert "Traceback" not in proc.stderr
