"""Database failures on the API's own paths (key lookup, login session, Idempotency-Key replay) answer
503 ``storage_error``, never 500; an append that committed answers 201 whatever happens after; expired
Idempotency-Keys are purged off the request path (the purge command and the periodic sweep).

On PostgreSQL the failures are real: the request's own connection is cut with pg_terminate_backend
from another connection just before the statement runs. SQLite has no connection to cut: there the
statement raises the OperationalError sqlite3 raises for an I/O error instead of running."""

import contextlib
import datetime as dt
import io
import time

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.utils import timezone

from sessions_app import engine, sweeper
from sessions_app.models import ApiIdempotencyKey

from .conftest import ON_POSTGRES
from .test_api_support import api_for, assert_error

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"role": "user", "content": "hello"}


@pytest.fixture
def api(user):
    api = api_for(user)
    assert api.put("/sessions/s", {}).status_code == 201
    return api


def _cut() -> None:
    """Cut this thread's connection for real (PostgreSQL), or fail like a broken SQLite file."""
    if not ON_POSTGRES:
        raise OperationalError("disk I/O error")
    import psycopg

    pid = connection.connection.info.backend_pid
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], password=db["PASSWORD"], dbname=db["NAME"]
    ) as other:
        other.autocommit = True
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, "the backend did not go away"
            time.sleep(0.01)


@contextlib.contextmanager
def cut_before(fragment: str):
    """Cut the connection just before the first statement whose SQL contains ``fragment``; yields the
    list of statements it cut before (to check that the failure happened where meant)."""
    cut: list[str] = []

    def wrapper(execute, sql, params, many, context):
        if not cut and fragment in sql:
            cut.append(sql)
            _cut()
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(wrapper):
            yield cut
    finally:
        connection.close()  # the broken one


def table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def stored() -> list[str]:
    return [m.content for m in engine.messages_all(engine.session_get("s"))]


def test_a_committed_append_answers_201_whatever_fails_after_it(api):
    """The expired-key purge used to run after the commit: a database error there turned a stored
    message into a 500. Nothing touches the database after the commit any more."""
    with cut_before(f"DELETE FROM {table(ApiIdempotencyKey)}") as cut:
        r = api.post("/sessions/s/messages", BODY, headers={"Idempotency-Key": "k-1"})
    assert r.status_code == 201, r.content
    assert cut == []
    assert stored() == ["hello"]
    again = api.post("/sessions/s/messages", BODY, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert stored() == ["hello"]


def test_a_database_failure_in_the_key_lookup_answers_503(api):
    with cut_before(f"FROM {table(api_key_model())}") as cut:
        r = api.get("/sessions")
    assert cut
    assert_error(r, 503, "storage_error")
    assert api.get("/sessions").status_code == 200  # a new connection for the next request


def test_a_database_failure_in_the_idempotency_replay_answers_503_and_stores_nothing(api):
    with cut_before(f"FROM {table(ApiIdempotencyKey)}") as cut:
        r = api.post("/sessions/s/messages", BODY, headers={"Idempotency-Key": "k-1"})
    assert cut and cut[0].lstrip().upper().startswith("SELECT")
    assert_error(r, 503, "storage_error")
    assert stored() == []
    retry = api.post("/sessions/s/messages", BODY, headers={"Idempotency-Key": "k-1"})
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry
    assert stored() == ["hello"]


def test_a_database_failure_storing_the_key_answers_503_and_stores_nothing(api):
    with cut_before(f"INSERT INTO {table(ApiIdempotencyKey)}") as cut:
        r = api.post("/sessions/s/messages", BODY, headers={"Idempotency-Key": "k-1"})
    assert cut
    assert_error(r, 503, "storage_error")
    assert stored() == []


def test_a_database_failure_loading_the_login_session_answers_503(client, user):
    client.force_login(user)
    with cut_before('"django_session"') as cut:
        r = client.get("/api/v1/sessions")
    assert cut
    assert_error(r, 503, "storage_error")


def api_key_model():
    from sessions_app.models import ApiKey

    return ApiKey


def make_keys(user) -> None:
    now = timezone.now()
    ttl = dt.timedelta(seconds=3600)
    for key, age in (("old-1", ttl * 2), ("old-2", ttl + dt.timedelta(seconds=1)), ("new", dt.timedelta(0))):
        ApiIdempotencyKey.objects.create(user=user, key=key, fingerprint="f", created_at=now - age)


def test_the_purge_command_deletes_expired_idempotency_keys(user, settings):
    settings.CONVO_API_IDEMPOTENCY_TTL_SECONDS = 3600
    make_keys(user)
    out = io.StringIO()
    call_command("purge_expired_sessions", "--dry-run", stdout=out)
    assert "would delete 2 expired Idempotency-Key(s)" in out.getvalue()
    assert ApiIdempotencyKey.objects.count() == 3
    out = io.StringIO()
    call_command("purge_expired_sessions", stdout=out)
    assert "Deleted 2 expired Idempotency-Key(s)." in out.getvalue()
    assert list(ApiIdempotencyKey.objects.values_list("key", flat=True)) == ["new"]


def test_the_periodic_sweep_deletes_expired_idempotency_keys(user, settings):
    settings.CONVO_API_IDEMPOTENCY_TTL_SECONDS = 3600
    make_keys(user)
    sweeper.sweep_once()
    assert list(ApiIdempotencyKey.objects.values_list("key", flat=True)) == ["new"]
