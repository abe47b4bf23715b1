"""The periodic sweep: dead processes' replies are marked without any request, and resumed once by a
live process (CONVO_REPLY_AUTO_RETRY), race-free; the interrupted reply keeps its partial text."""

import datetime as dt
import os
import signal
import subprocess
import sys
import threading

import pytest
from django.db import connections
from django.utils import timezone

from sessions_app import engine, replies, sweeper
from sessions_app.models import Reply, Role
from sessions_app.replies import workers

from .replies_faults_support import wait_for
from .test_replies_processes import ROOT, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("replies_env")]


@pytest.fixture
def auto_retry(settings):
    settings.CONVO_REPLY_AUTO_RETRY = True
    settings.CONVO_REPLY_SWEEP_SECONDS = 2.0  # as in a serving process (the thread is not started here)
    return settings


def dead_reply(sid: str, *, text: str = "The partial", resumed_from: Reply | None = None, **fields) -> Reply:
    """A running reply of a process on another machine that stopped heartbeating long ago."""
    message = engine.message_append(sid, "user", "tell me about yourself")
    old = timezone.now() - dt.timedelta(seconds=60)
    return Reply.objects.create(
        session=engine.session_get(sid),
        turn_number=message.turn_number,
        user_seq=message.seq,
        base_seq=message.seq,
        responder="builtin",
        worker="otherhost:00000000:123:abcd1234",
        heartbeat_at=old,
        started_at=old,
        text=text,
        resumed_from=resumed_from,
        **fields,
    )


def test_the_sweep_marks_a_dead_reply_and_tells_the_pages(make_session, sent, settings):
    settings.CONVO_REPLY_AUTO_RETRY = False
    make_session("s")
    dead = dead_reply("s")
    assert replies.sweep() == (1, [])
    dead.refresh_from_db()
    assert (dead.status, dead.finish_reason, dead.text) == ("interrupted", "interrupted", "The partial")
    assert dead.error == workers.INTERRUPTED_MESSAGE
    event = sent.replies(dead.pk)[-1]
    assert (event["state"], event["error"], event["text"]) == ("error", dead.error, "The partial")
    assert replies.sweep() == (0, [])


def test_the_sweep_thread_needs_no_request(make_session, sent, settings):
    """Every serving process starts the sweep (convo_site.asgi): a dead reply is marked, and pages
    told, with no request at all."""
    settings.CONVO_REPLY_AUTO_RETRY = False
    settings.CONVO_REPLY_SWEEP_SECONDS = 0.05
    make_session("s")
    dead = dead_reply("s")
    assert sweeper.start() is True
    try:
        assert sweeper.start() is False  # one per process
        wait_for(lambda: Reply.objects.get(pk=dead.pk).status == "interrupted", what="the sweep")
        wait_for(lambda: sent.replies(dead.pk), what="the error event")
    finally:
        sweeper.stop()
        connections.close_all()


def test_a_dead_reply_is_resumed_once(make_session, sent, auto_retry):
    make_session("s")
    dead = dead_reply("s")
    marked, resumed = replies.sweep()
    assert marked == 1 and len(resumed) == 1
    resume = resumed[0]
    assert resume.resumed_from_id == dead.pk and resume.turn_number == dead.turn_number
    assert replies.wait_reply(resume.pk).status == "done"
    dead.refresh_from_db()
    assert (dead.status, dead.text, dead.error) == ("interrupted", "The partial", workers.RESUMING_MESSAGE)
    turn = engine.last_turn(engine.session_get("s"))
    assert turn.is_complete and turn.assistant_response.content.startswith("I am the")
    assert "reply_error" not in turn.metadata
    started = [e for e in sent.replies(resume.pk) if e["state"] == "started"]
    assert started and started[0]["resumed_from"] == dead.pk
    assert replies.sweep() == (0, [])  # once
    assert Reply.objects.filter(resumed_from=dead).count() == 1


def test_a_resume_is_never_resumed(make_session, auto_retry):
    make_session("s")
    first = dead_reply("s")
    first.status = Reply.Status.INTERRUPTED
    first.finish_reason = "interrupted"
    first.finished_at = timezone.now()
    first.save()
    # Its resume died too: it is marked, with "try again", and left for the person.
    resume = Reply.objects.create(
        session=first.session,
        turn_number=first.turn_number,
        user_seq=first.user_seq,
        base_seq=first.base_seq,
        responder="builtin",
        worker=first.worker,
        heartbeat_at=first.heartbeat_at,
        started_at=first.started_at,
        resumed_from=first,
    )
    assert replies.sweep() == (1, [])
    resume.refresh_from_db()
    assert (resume.status, resume.error) == ("interrupted", workers.INTERRUPTED_MESSAGE)
    assert Reply.objects.filter(status="running").count() == 0


def test_no_resume_when_the_conversation_moved_on(make_session, auto_retry):
    make_session("s")
    dead = dead_reply("s")
    workers.recover_stale_replies()
    engine.message_append("s", "user", "never mind, another question")
    assert replies.resume_interrupted() == []
    assert not Reply.objects.filter(resumed_from=dead).exists()


def test_no_resume_when_auto_retry_is_off(make_session, settings):
    settings.CONVO_REPLY_AUTO_RETRY = False
    settings.CONVO_REPLY_SWEEP_SECONDS = 2.0
    make_session("s")
    dead = dead_reply("s")
    assert replies.sweep() == (1, [])
    dead.refresh_from_db()
    assert dead.error == workers.INTERRUPTED_MESSAGE  # "Try again": nobody else will


def test_concurrent_sweeps_resume_once(make_session, auto_retry):
    """Several processes sweep at the same moment: exactly one of them resumes the reply."""
    make_session("s")
    dead = dead_reply("s")
    workers.recover_stale_replies()
    barrier = threading.Barrier(4)
    started: list[Reply] = []
    lock = threading.Lock()

    def sweep() -> None:
        try:
            barrier.wait(10)
            mine = replies.resume_interrupted()
            with lock:
                started.extend(mine)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(started) == 1
    assert list(Reply.objects.filter(resumed_from=dead).values_list("pk", flat=True)) == [started[0].pk]
    assert replies.wait_reply(started[0].pk).status == "done"


WORKER = """
import sys
import django
django.setup()
from django.conf import settings
settings.CONVO_BUILTIN_WORD_DELAY = 0.2
settings.CONVO_REPLY_SAVE_INTERVAL = 0
from sessions_app import replies
reply = replies.start_reply(sys.argv[1])
print(reply.pk, flush=True)
replies.wait_reply(reply.pk, 120)
"""


def test_a_reply_of_a_killed_process_is_resumed_by_a_live_one(make_session, auto_retry):
    """kill -9 of the process running a reply: this process's sweep marks it (the pid is gone: two
    missed heartbeats suffice on one machine) and resumes it; the partial text stays in the old row."""
    auto_retry.CONVO_REPLY_HEARTBEAT_SECONDS = 0.2
    make_session("s")
    engine.message_append("s", "user", "tell me about yourself")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "s"], env=worker_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        reply_id = int(worker.stdout.readline())
        wait_for(lambda: len(Reply.objects.get(pk=reply_id).text.split()) >= 3, what="some text over there")
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        worker.stdout.close()
    partial = Reply.objects.get(pk=reply_id).text
    resumed = wait_for(lambda: replies.sweep()[1], what="the sweep to resume it")
    assert [r.resumed_from_id for r in resumed] == [reply_id]
    done = replies.wait_reply(resumed[0].pk)
    assert done.status == "done"
    old = Reply.objects.get(pk=reply_id)
    assert (old.status, old.finish_reason) == ("interrupted", "interrupted")
    assert old.text == partial and partial.startswith("I am the")
    answers = [m for m in engine.messages_all(engine.session_get("s")) if m.role == Role.ASSISTANT]
    assert [a.content for a in answers] == [done.text]
    assert done.text.startswith(partial.rstrip())
