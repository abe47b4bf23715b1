"""Change notifications reach the session's channel-layer group only after the commit."""

import asyncio
import logging
import os
import uuid

import pytest
from channels.db import database_sync_to_async
from django.db import transaction

from sessions_app import engine, events

from .channel_support import Listener

pytestmark = pytest.mark.django_db(transaction=True)


def sync(func, *args, **kwargs):
    return database_sync_to_async(func)(*args, **kwargs)


async def test_append_notifies_with_sequence_and_turn():
    await sync(engine.session_create, "ev")
    async with Listener("ev") as listener:
        await sync(engine.message_append, "ev", "user", "hi")
        event = await listener.get()
    assert event == {"type": "session.event", "session": listener.key.hex, "kind": "message", "seq": 1, "turn": 1}


class Abort(Exception):
    pass


def rolled_back_writes():
    with pytest.raises(Abort), transaction.atomic():
        engine.message_append("ev", "user", "never committed")
        engine.state_set("ev", "k", "v")
        raise Abort


async def test_nothing_is_sent_after_rollback_and_only_after_commit():
    await sync(engine.session_create, "ev")
    async with Listener("ev") as listener:
        await sync(rolled_back_writes)
        assert await listener.get(timeout=0.5) is None
        await _commit_slowly(listener)


async def _commit_slowly(listener):

    opened, committed = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_commit():
        with transaction.atomic():
            engine.state_set("ev", "k", "v")
            loop.call_soon_threadsafe(opened.set)
            # Hold the transaction open while the test listens.
            asyncio.run_coroutine_threadsafe(committed.wait(), loop).result(5)

    writer = asyncio.ensure_future(sync(slow_commit))
    await opened.wait()
    assert await listener.get(timeout=0.3) is None  # written, not yet committed
    committed.set()
    await writer
    assert (await listener.get())["kind"] == "state"


async def test_each_kind_of_change_is_announced():
    await sync(engine.session_create, "ev")
    async with Listener("ev") as listener:
        await sync(engine.session_update, "ev", metadata={"a": "b"})
        await sync(engine.state_set_data, "ev", "k", [1])
        await sync(engine.session_clear_messages, "ev")
        await sync(engine.session_delete, "ev")
        kinds = [(await listener.get())["kind"] for _ in range(4)]
    assert kinds == ["config", "state", "cleared", "deleted"]


def test_group_names_are_valid_and_named_by_key():
    keys = [uuid.uuid4() for _ in range(3)]
    names = {events.group_name(key) for key in keys}
    assert len(names) == 3
    assert all(len(n) < 100 and n.replace(".", "").replace("-", "").replace("_", "").isalnum() for n in names)


def test_events_are_addressed_by_key_never_by_id():
    """A caller's id is not an address: another user may have the same id, or create it later."""
    with pytest.raises(TypeError):
        events.emit("support-42", events.MESSAGE)


def _event(session, kind, **data):
    """(group, event) as emit queues them (a session's group is named by its key; here, by a letter)."""
    return ("convo.session." + session, {"type": "session.event", "session": session, "kind": kind, **data})


def test_a_batch_keeps_each_sessions_order_and_only_merges_message_runs():
    layer = object()
    a1, a2, a3 = (_event("a", events.MESSAGE, seq=n) for n in (1, 2, 3))
    b1, b2 = _event("b", events.MESSAGE, seq=1), _event("b", events.MESSAGE, seq=2)
    reply = _event("a", events.REPLY, state="delta", text="x")
    cleared, deleted = _event("a", events.CLEARED), _event("b", events.DELETED)
    a4 = _event("a", events.MESSAGE, seq=1)
    marker = object()
    batch = [(layer, [a1]), (layer, [b1]), (layer, [a2]), (None, marker), (layer, [reply]), (layer, [a3])]
    batch += [(layer, [cleared, b2]), (layer, [a4]), (layer, [deleted])]
    sent = events._coalesce(batch)
    flat = [e for target, group in sent if target is not None for e in group]
    # a: 1,2 merge into 2; the reply and the clear stay between; b: 1,2 merge into 2, then deleted.
    assert [e for e in flat if e[1]["session"] == "a"] == [a2, reply, a3, cleared, a4]
    assert [e for e in flat if e[1]["session"] == "b"] == [b2, deleted]
    assert (None, marker) in sent
    assert events._coalesce([(layer, [a1])]) == [(layer, [a1])]


async def test_a_burst_of_appends_arrives_in_order_with_the_newest_sequence_last():
    await sync(engine.session_create, "ev")

    def burst():
        for i in range(30):
            engine.message_append("ev", "user", f"m{i}")
        engine.session_clear_messages("ev")
        engine.message_append("ev", "user", "after the clear")
        engine.session_delete("ev")

    async with Listener("ev") as listener:
        await sync(burst)
        received = []
        while not received or received[-1]["kind"] != events.DELETED:
            event = await listener.get()
            assert event is not None, received
            received.append(event)
    kinds = [e["kind"] for e in received]
    cleared = kinds.index(events.CLEARED)
    before = [e["seq"] for e in received[:cleared]]
    assert before == sorted(before) and before[-1] == 30 and set(kinds[:cleared]) == {events.MESSAGE}
    assert kinds[cleared:] == [events.CLEARED, events.MESSAGE, events.DELETED]
    assert received[cleared + 1]["seq"] == 31


def test_flush_waits_for_what_was_queued():
    sent = []

    async def slow_send(layer, batch):
        await asyncio.sleep(0.05)
        sent.extend(batch)

    sender = events._Sender()
    original = events._send_all
    events._send_all = slow_send
    try:
        for i in range(5):
            sender.submit("layer", [_event("f", events.MESSAGE, seq=i)])
        sender.submit("layer", [_event("f", events.DELETED)])
        assert sender.flush(5)
        assert [e[1]["kind"] for e in sent][-1] == events.DELETED and sent[0][1]["kind"] == events.MESSAGE
    finally:
        events._send_all = original


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_layer_health_logs_one_warning_and_one_info_per_outage():
    """However many parts meet an outage, and a relapse just after the layer came back (a pooled
    connection that died with the old Redis), one warning when it starts and one info when it ends."""
    health = events.LayerHealth()
    handler = _Records()
    logger = logging.getLogger("sessions_app.events")
    logger.addHandler(handler)
    try:
        for _ in range(50):
            health.failed(ConnectionError("refused"), "sending session events")
        health.ok()
        health.ok()
        health.failed(ConnectionError("closed by server"), "joining a socket's groups")  # a relapse
        assert health.down
        health.ok()
        health._back_at -= health.FLAP_SECONDS  # a new outage, later
        health.failed(ConnectionError("refused"), "probing")
        health.ok()
    finally:
        logger.removeHandler(handler)
    logged = [(r.levelname, r.exc_info) for r in handler.records]
    assert logged == [("WARNING", None), ("INFO", None), ("WARNING", None), ("INFO", None)]
    assert health.outages == 2 and not health.down


def test_a_send_from_a_thread_bound_to_a_stopped_loop_returns(settings):
    """A reply thread hops to the server loop it was started from to push on the in-memory layer; once
    that loop has stopped (the server shut down), a push must return at once, not wait for it forever."""
    import asyncio

    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.pop("default", None)
    stopped = asyncio.new_event_loop()
    done = _push_from_a_thread_bound_to(stopped)
    assert done.wait(10), "the push waited for a loop that no longer runs"
    stopped.close()
    channel_layers.backends.pop("default", None)


def test_a_send_to_a_loop_that_never_takes_it_gives_up_after_the_layer_timeout(settings, monkeypatch):
    """The loop still ran when the push looked, then never ran the push (it was stopping, or stuck):
    the reply thread gives up after LAYER_TIMEOUT instead of waiting for ever (a full-suite run hung
    in teardown on such a thread)."""
    import asyncio
    import threading

    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.pop("default", None)
    monkeypatch.setattr(events, "LAYER_TIMEOUT", 0.2)
    stuck, release = asyncio.new_event_loop(), threading.Event()
    server = threading.Thread(target=stuck.run_forever, daemon=True)
    server.start()
    stuck.call_soon_threadsafe(release.wait)  # the loop runs, but never gets to the push
    try:
        while not stuck.is_running():
            threading.Event().wait(0.01)
        done = _push_from_a_thread_bound_to(stuck)
        assert done.wait(10), "the push waited for a loop that never took it"
    finally:
        release.set()
        stuck.call_soon_threadsafe(stuck.stop)
        server.join(5)
        stuck.close()
        channel_layers.backends.pop("default", None)


def _push_from_a_thread_bound_to(loop):
    """Push one event from a new thread that was started from ``loop`` (as a reply thread is from its
    server's); the event is set once the push returned."""
    import threading

    from asgiref.sync import SyncToAsync

    done = threading.Event()

    def pusher():
        SyncToAsync.threadlocal.main_event_loop = loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
        events._send([("convo.session.x", {"type": "session.event", "kind": "appended"})])
        done.set()

    threading.Thread(target=pusher, daemon=True).start()
    return done
