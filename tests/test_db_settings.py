"""The database settings a web server needs: pooled PostgreSQL connections, SQLite tuned for writers."""

import sqlite3

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.utils import load_backend

from .conftest import ON_POSTGRES

# The pool is on by default on PostgreSQL (CONVO_DB_POOL_MAX_SIZE=20); 0 turns it off.
needs_pool = pytest.mark.skipif(
    not settings.DATABASES["default"].get("OPTIONS", {}).get("pool"), reason="CONVO_DB_POOL_MAX_SIZE is 0"
)


@needs_pool
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_connections_come_from_a_pool_sized_by_settings():
    pool = connection.pool
    assert pool is not None, "OPTIONS['pool'] is not in effect"
    assert pool.max_size == settings.CONVO_DB_POOL_MAX_SIZE
    assert settings.DATABASES["default"]["CONN_MAX_AGE"] == 0
    with connection.cursor() as cursor:  # the pool is open and has its connections
        cursor.execute("SELECT 1")
    connection.close()
    opened = pool.get_stats().get("connections_num", 0)
    for _ in range(10):  # ten requests' worth of connect / close
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
        connection.close()  # back to the pool, not closed
    assert pool.get_stats().get("connections_num", 0) == opened, "new server connections for each request"


@needs_pool
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_pooled_connections_survive_pg_terminate_backend(client, user):
    """After a server restart every idle connection is dead at once: the first request that meets one
    gets a new connection at once (the pool sweeps itself, convo_site/db_pool.py), rather than trying
    the dead ones one by one with growing pauses until the pool's timeout (a 503)."""
    client.force_login(user)
    assert client.get("/").status_code == 200
    pool = connection.pool
    taken = [pool.getconn() for _ in range(8)]  # eight idle connections, as after a busy moment
    for conn in taken:
        pool.putconn(conn)
    pids = {c.info.backend_pid for c in _pooled(pool)}
    assert len(pids) >= 8
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pids.add(cursor.fetchone()[0])
    connection.close()
    # Cut every connection of this pool from outside, as a server restart or an operator would.
    killer = connections.create_connection("default")
    killer.settings_dict = {**killer.settings_dict, "OPTIONS": {}}
    try:
        with killer.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)]
            )
            assert cursor.fetchone()[0] >= 1
    finally:
        killer.close()
    # The next requests get working connections: the pool checks a connection before handing it out.
    for _ in range(3):
        assert client.get("/").status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] not in pids


def _pooled(pool):
    """The idle connections in a psycopg pool (a snapshot, without taking them)."""
    return list(getattr(pool, "_pool", []))


@pytest.mark.skipif(ON_POSTGRES, reason="the SQLite configuration")
@pytest.mark.django_db
def test_sqlite_is_tuned_for_a_web_server(tmp_path):
    """The configured options, applied to a file database: WAL, synchronous=NORMAL, a busy timeout and
    BEGIN IMMEDIATE (a transaction takes the write lock at once, so writers queue instead of spinning)."""
    backend = load_backend(settings.DATABASES["default"]["ENGINE"])
    wrapper = backend.DatabaseWrapper(
        {**settings.DATABASES["default"], "NAME": str(tmp_path / "probe.sqlite3")}, alias="probe"
    )
    connections["probe"] = wrapper
    try:
        with wrapper.cursor() as cursor:
            assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert cursor.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert cursor.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        with transaction.atomic(using="probe"):
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1").fetchone()  # a read only...
            other = sqlite3.connect(tmp_path / "probe.sqlite3", timeout=0)
            try:
                assert other.execute("SELECT count(*) FROM sqlite_master").fetchone()  # (WAL: readers go on)
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")  # ...yet the write lock is taken: writers queue
            finally:
                other.close()
    finally:
        wrapper.close()
        del connections["probe"]


@pytest.mark.skipif(ON_POSTGRES, reason="the SQLite configuration")
@pytest.mark.django_db(transaction=True)
def test_sqlite_writers_of_one_process_queue_and_all_commit():
    """16 threads appending at once on SQLite: every append lands, numbered without gaps (the
    backend's per-process write queue in front of BEGIN IMMEDIATE; p99 is measured in bench/owui.py)."""
    import threading

    from sessions_app import engine
    from sessions_app.models import Message

    engine.session_create("queue", config=engine.SessionConfig(max_messages=1000))
    errors = []

    def writer(n):
        try:
            for i in range(10):
                engine.message_append("queue", "user", f"{n}-{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(Message.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, 161))


@pytest.mark.skipif(ON_POSTGRES, reason="the SQLite configuration")
@pytest.mark.django_db(transaction=True)
def test_sqlite_write_queue_is_released_after_errors():
    """A transaction that fails (rolled back) or a connection closed mid-transaction frees the queue."""
    from sessions_app import engine

    engine.session_create("errs")
    with pytest.raises(RuntimeError), transaction.atomic():
        engine.message_append("errs", "user", "rolled back")
        raise RuntimeError("the transaction fails")
    with transaction.atomic():
        connection.close()  # the transaction dies with its connection
    connection.close()
    engine.message_append("errs", "user", "kept")  # would wait 20 s and fail if the queue were stuck
    assert engine.session_get("errs").message_count == 1


@needs_pool
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_streaming_replies_do_not_hold_pooled_connections(replies_env, make_session):
    """Replies waiting on their model give their connection back to the pool between writes, so a few
    slow replies cannot starve the requests of a process."""
    import time

    from sessions_app import replies

    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.05
    pool = connection.pool
    running = []
    for i in range(4):
        make_session(f"slow-{i}", max_messages=100)
        running.append(replies.append_and_reply(f"slow-{i}", "tell me a long story " * 5)[1])
    connection.close()  # this test's own connection back too
    in_use = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(in_use) < 40:
        stats = pool.get_stats()
        in_use.append(stats["pool_size"] - stats["pool_available"])
        time.sleep(0.02)
    for reply in running:
        replies.stop_reply(f"slow-{running.index(reply)}")
    # Four replies streaming (plus the watcher): never four or more connections checked out at once.
    assert max(in_use) < 4, in_use
