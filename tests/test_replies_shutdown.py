"""workers.shutdown(grace_seconds), what SIGTERM calls: short replies finish, the others are stopped and
marked interrupted (for another process to resume), and the thread never undoes that."""

import threading

import pytest

from sessions_app import engine, replies
from sessions_app.models import Reply, Role
from sessions_app.replies import workers

from .replies_faults_support import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("replies_env")]


@pytest.fixture(autouse=True)
def reopen(settings):
    """Resumes on; and shutdown() closes this process for new replies: open it again after each test."""
    settings.CONVO_REPLY_AUTO_RETRY = True
    settings.CONVO_REPLY_SWEEP_SECONDS = 2.0
    yield
    workers._closing.clear()


def answers(sid: str) -> list[str]:
    return [m.content for m in engine.messages_all(engine.session_get(sid)) if m.role == Role.ASSISTANT]


def test_a_reply_that_finishes_within_the_grace_finishes(make_session, scripted):
    gate = threading.Event()
    scripted.steps = ["short ", gate, "answer"]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    threading.Timer(0.2, gate.set).start()  # it finishes well within the grace
    workers.shutdown(30)
    row = Reply.objects.get(pk=reply.pk)
    assert (row.status, row.text) == ("done", "short answer")
    assert answers("s") == ["short answer"]
    assert not workers._local


def test_a_long_reply_is_handed_over_and_resumed_elsewhere(make_session, scripted, sent):
    scripted.steps = ["one ", "until-cancelled"]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: len(sent.replies(reply.pk)) >= 3, what="some deltas")
    thread = workers._local[reply.pk].thread
    workers.shutdown(0.1)
    assert not thread.is_alive()
    row = Reply.objects.get(pk=reply.pk)
    assert (row.status, row.finish_reason, row.error) == ("interrupted", "interrupted", workers.SHUTDOWN_MESSAGE)
    assert row.text.startswith("one more ")  # the text so far, not only the last save
    assert answers("s") == []  # no "stopped" answer stored over the hand-over
    last = sent.replies(reply.pk)[-1]
    assert (last["state"], last["error"]) == ("error", workers.SHUTDOWN_MESSAGE)
    assert "stopped" not in {e["state"] for e in sent.replies(reply.pk)}
    assert engine.last_turn(engine.session_get("s")).metadata["reply_error"] == workers.SHUTDOWN_MESSAGE

    # Idempotent: a second call changes nothing.
    workers.shutdown(0.1)
    assert Reply.objects.get(pk=reply.pk).finished_at == row.finished_at

    # Another (live) process's sweep resumes it.
    workers._closing.clear()
    scripted.steps = ["resumed answer"]
    marked, resumed = replies.sweep()
    assert marked == 0 and [r.resumed_from_id for r in resumed] == [reply.pk]
    assert replies.wait_reply(resumed[0].pk).status == "done"
    assert answers("s") == ["resumed answer"]
    assert Reply.objects.get(pk=reply.pk).text == row.text  # the partial text stays in its record


def test_a_thread_that_wakes_up_after_the_hand_over_does_not_undo_it(make_session, scripted, sent):
    """A thread stuck past the grace (it does not hear Stop) and then woken writes nothing: the row
    stays interrupted, no answer is stored, no event is sent."""
    gate = threading.Event()
    scripted.steps = ["one ", gate, "two ", "three"]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: Reply.objects.get(pk=reply.pk).text == "one ", what="the first save")
    thread = workers._local[reply.pk].thread
    workers.shutdown(0)
    before = len(sent.replies(reply.pk))
    gate.set()
    thread.join(15)
    assert not thread.is_alive()
    assert sent.replies(reply.pk)[before:] == []
    row = Reply.objects.get(pk=reply.pk)
    assert (row.status, row.text) == ("interrupted", "one ")
    assert answers("s") == []


def test_a_reply_started_during_shutdown_is_handed_over_at_once(make_session, scripted):
    scripted.steps = ["never said"]
    make_session("s")
    workers.shutdown(0)
    _, reply = replies.append_and_reply("s", "hi")
    row = Reply.objects.get(pk=reply.pk)
    assert (row.status, row.finish_reason) == ("interrupted", "interrupted")
    assert not workers._local
    assert replies.resume_interrupted() == []  # not from a process that is shutting down
