"""Database outages under a running reply: the watcher and the reply thread reconnect (one warning per
outage), a healthy reply keeps its answer, and a reply that cannot reach the database ends with that
reason instead of staying "running".

The outage is real: on PostgreSQL every other connection to the test database is cut with
pg_terminate_backend and new ones are refused (ALLOW_CONNECTIONS false) until it ends; on SQLite the
reply table is renamed away, so every query on it fails with an OperationalError.
"""

import contextlib
import logging
import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from sessions_app import engine, replies
from sessions_app.models import Reply, Role
from sessions_app.replies import run, workers

from .conftest import ON_POSTGRES
from .replies_faults_support import backend_pid, connections_refused, terminate_backend, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("replies_env")]


@pytest.fixture(autouse=True)
def often(settings):
    settings.CONVO_REPLY_SAVE_INTERVAL = 0
    settings.CONVO_REPLY_HEARTBEAT_SECONDS = 0.05


@contextlib.contextmanager
def database_outage():
    if ON_POSTGRES:
        with connections_refused():
            yield
        return
    table = connection.ops.quote_name(Reply._meta.db_table)
    away = connection.ops.quote_name(Reply._meta.db_table + "_away")
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {away}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {away} RENAME TO {table}")


def warnings_of(caplog, who: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{who} could not use the database")]


def test_the_watcher_and_the_reply_survive_an_outage(make_session, scripted, caplog):
    """The watcher logs one warning for the whole outage (not one per poll), reconnects and keeps
    heartbeating; the reply is not marked interrupted and its answer is stored."""
    caplog.set_level(logging.INFO, logger="sessions_app")
    gate = threading.Event()
    scripted.steps = ["alpha ", gate, "beta"]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: Reply.objects.get(pk=reply.pk).text == "alpha ", what="the first save")
    with database_outage():
        wait_for(lambda: warnings_of(caplog, "The reply watcher"), what="the watcher to meet the outage")
        time.sleep(0.3)  # several polls fail meanwhile (with backoff)
    ended = timezone.now()
    wait_for(lambda: Reply.objects.get(pk=reply.pk).heartbeat_at > ended, what="a heartbeat after the outage")
    assert replies.recover_stale_replies() == 0
    assert len(warnings_of(caplog, "The reply watcher")) == 1
    wait_for(
        lambda: any(m.startswith("The reply watcher reconnected") for m in caplog.messages), what="the reconnection"
    )
    gate.set()
    done = replies.wait_reply(reply.pk)
    assert (done.status, done.text) == ("done", "alpha beta")
    answer = engine.last_turn(engine.session_get("s")).assistant_response
    assert answer.content == "alpha beta"


@pytest.mark.postgres
def test_a_reply_whose_connection_is_cut_goes_on(make_session, scripted, sent):
    """pg_terminate_backend of the reply thread's own connection mid-stream: it reconnects and
    finishes (the row does not stay running, nor end with an untrue reason)."""
    gate = threading.Event()
    pids: list[int] = []
    scripted.steps = ["alpha ", lambda: pids.append(backend_pid()), gate, "beta ", "gamma"]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: pids and Reply.objects.get(pk=reply.pk).text == "alpha ", what="the first save")
    assert terminate_backend(pids[0])
    gate.set()
    done = replies.wait_reply(reply.pk)
    assert (done.status, done.text) == ("done", "alpha beta gamma")
    assert sent.replies(reply.pk)[-1]["state"] == "done"


def test_a_reply_that_cannot_reach_the_database_ends_with_that_reason(make_session, scripted, sent, caplog, settings):
    """The database stays away for longer than a step may wait: once it is back the reply's row is
    ended (on a fresh connection) with the real reason, not left running nor called interrupted."""
    caplog.set_level(logging.INFO, logger="sessions_app")
    settings.CONVO_REPLY_STALE_SECONDS = 4  # a step retries for 2 s, the end for 8 s
    gate = threading.Event()
    scripted.steps = ["alpha ", gate, "beta"]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: Reply.objects.get(pk=reply.pk).text == "alpha ", what="the first save")
    thread = workers._local[reply.pk].thread
    with database_outage():
        gate.set()
        wait_for(lambda: any(run.DB_LOST_MESSAGE in m for m in caplog.messages), what="the reply to give up its step")
    thread.join(15)
    row = Reply.objects.get(pk=reply.pk)
    assert (row.status, row.error) == ("error", run.DB_LOST_MESSAGE)
    turn = engine.last_turn(engine.session_get("s"))
    assert turn.metadata["reply_error"] == run.DB_LOST_MESSAGE
    assert not [m for m in engine.messages_all(engine.session_get("s")) if m.role == Role.ASSISTANT]
    last = sent.replies(reply.pk)[-1]
    assert (last["state"], last["error"]) == ("error", run.DB_LOST_MESSAGE)
    assert len(warnings_of(caplog, f"Reply {reply.pk}")) == 1  # one outage, one warning
