"""Zombie streams: a reply thread whose row was taken from it (marked interrupted by another process
after a pause) writes nothing and sends nothing more."""

import threading

import pytest
from django.utils import timezone

from sessions_app import engine, replies
from sessions_app.models import Reply, Role
from sessions_app.replies import workers

from .replies_faults_support import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("replies_env")]


@pytest.fixture
def frozen_watcher(monkeypatch):
    """The watcher does nothing (as when the whole process was paused with the thread)."""
    monkeypatch.setattr(workers._Watcher, "_check", staticmethod(lambda local, last_beat: last_beat))


def take_row(reply_id: int) -> None:
    """What another process's sweep does to a reply whose heartbeat went stale."""
    Reply.objects.filter(pk=reply_id).update(
        status=Reply.Status.INTERRUPTED,
        finish_reason="interrupted",
        error=workers.INTERRUPTED_MESSAGE,
        finished_at=timezone.now(),
    )


def thread_of(reply_id: int) -> threading.Thread:
    return workers._local[reply_id].thread


def assistant_messages(sid: str) -> list:
    return [m for m in engine.messages_all(engine.session_get(sid)) if m.role == Role.ASSISTANT]


def test_a_paused_reply_sends_nothing_once_its_row_was_taken(make_session, scripted, sent, frozen_watcher, settings):
    """After a pause longer than half the stale window the thread cannot know whether its row is still
    its own: it confirms with a write before the next event, finds the row taken, and stops."""
    settings.CONVO_REPLY_SAVE_INTERVAL = 60  # only the lease, not the save pacing, makes it write
    gate = threading.Event()
    scripted.steps = ["one ", gate, "two ", "three "]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: any(e["text"] == "one " for e in sent.replies(reply.pk)), what="the first delta")
    thread = thread_of(reply.pk)
    take_row(reply.pk)
    workers._local[reply.pk].lease.confirmed_at -= 3600  # the pause: its last confirmed write is long ago
    before = len(sent.replies(reply.pk))
    gate.set()
    thread.join(15)
    assert not thread.is_alive()
    assert sent.replies(reply.pk)[before:] == []  # no delta "one two", no done/stopped/error
    row = Reply.objects.get(pk=reply.pk)
    assert (row.status, row.finish_reason, row.text) == ("interrupted", "interrupted", "one ")
    assert assistant_messages("s") == []


def test_a_save_that_touches_no_row_ends_the_thread_at_once(make_session, scripted, sent, frozen_watcher, settings):
    settings.CONVO_REPLY_SAVE_INTERVAL = 0
    gate = threading.Event()
    scripted.steps = ["one ", gate, "two ", "three ", "four "]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: Reply.objects.get(pk=reply.pk).text == "one ", what="the first save")
    thread = thread_of(reply.pk)
    take_row(reply.pk)
    before = len(sent.replies(reply.pk))
    gate.set()
    thread.join(15)
    assert sent.replies(reply.pk)[before:] == []
    assert Reply.objects.get(pk=reply.pk).status == "interrupted"
    assert assistant_messages("s") == []


def test_the_watcher_ends_a_reply_whose_row_was_ended_elsewhere(make_session, scripted, sent):
    """The watcher sees the row interrupted: the thread stops streaming and does not store a "stopped"
    answer over the interruption."""
    scripted.steps = ["one ", "until-cancelled"]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: len(sent.replies(reply.pk)) >= 3, what="some deltas")
    thread = thread_of(reply.pk)
    take_row(reply.pk)
    thread.join(15)
    assert not thread.is_alive()
    assert {e["state"] for e in sent.replies(reply.pk)} <= {"started", "delta"}
    row = Reply.objects.get(pk=reply.pk)
    assert (row.status, row.finish_reason) == ("interrupted", "interrupted")
    assert assistant_messages("s") == []


def test_every_reply_event_names_its_reply(make_session, scripted, sent):
    scripted.steps = ["a ", "b ", "c "]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    assert replies.wait_reply(reply.pk).status == "done"
    states = [(e["state"], e["reply"]) for e in sent.replies()]
    assert states[0] == ("started", reply.pk) and states[-1] == ("done", reply.pk)
    assert all(reply_id == reply.pk for _, reply_id in states)
