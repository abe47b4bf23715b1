"""The live socket under faults (issue 10): pushes split into frames daphne can send, the page's
periodic resync, a Redis outage (handshake accepted, served from the database, live again when
Redis is back), per-deployment channel prefixes, and zombie reply streams ignored."""

import asyncio
import logging
import os
import re
import subprocess
import sys

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.db import connection

from sessions_app import consumers, engine, events, rendering

from . import test_consumers
from .redis_support import own_redis  # noqa: F401 (a fixture)
from .test_consumers import connect, hello, msg_seqs, settle

layer = test_consumers.layer  # a fixture: each test on the in-memory layer and, with REDIS_URL, on both Redis ones

pytestmark = [pytest.mark.django_db(transaction=True)]

append = database_sync_to_async(engine.message_append)
LIMIT = consumers.FRAME_BYTES


@pytest.fixture(autouse=True)
def _quick_panels(monkeypatch):
    monkeypatch.setattr(consumers, "PANEL_DELAY", 0.1)


@pytest.fixture
def owned(user):
    return engine.session_create("live-1", owner=user, system_prompt="Be live.")


def big(i):
    return f"Message {i}: " + " ".join(f"word{j % 97}" for j in range(4300))[:29_980]


async def frames_until(comm, predicate, limit=200, timeout=10):
    """Frames until one satisfies ``predicate`` (all of them, that one last)."""
    frames = []
    for _ in range(limit):
        frames.append(await comm.receive_from(timeout=timeout))
        if predicate(frames[-1]):
            return frames
    raise AssertionError("no such frame")


def last_seq_of(html):
    found = re.findall(r'id="list-bounds"[^>]*data-last-seq="(\d+)"', html)
    return int(found[-1]) if found else None


# ---------------------------------------------------------------------------------------------
# Frames within daphne's limit


def test_fragments_are_packed_in_order_within_the_limit():
    parts = ["a" * 100, "b" * 100, "c" * 250, "", "d" * 40, "é" * 30]
    frames = consumers.pack_frames(parts, limit=200)
    assert "".join(frames) == "".join(parts)
    assert frames == ["a" * 100 + "b" * 100, "c" * 250, "d" * 40 + "é" * 30]  # 250: alone, over the limit
    assert all(len(f.encode()) <= 200 for f in frames if not f.startswith("c"))


def test_a_fragment_too_large_for_any_frame_is_replaced_by_a_notice(monkeypatch):
    monkeypatch.setattr(consumers, "MAX_FRAGMENT_BYTES", 1000)
    message = '<div hx-swap-oob="beforeend:#message-list"><li id="msg-7" class="msg" data-seq="7">' + "x" * 2000
    panel = '<section id="state-panel" class="panel" hx-swap-oob="true">' + "y" * 2000 + "</section>"
    frames = consumers.pack_frames(["<p>small</p>", message + "</li></div>", panel], limit=500)
    html = "".join(frames)
    assert "x" * 100 not in html and "y" * 100 not in html and "<p>small</p>" in html
    assert '<li id="msg-7" class="msg" data-seq="7">' in html and "Message #7 is too large" in html
    assert '<div id="state-panel" hx-swap-oob="true">' in html and html.count('<a href="">reload the page</a>') == 2
    assert all(len(f.encode()) <= 1000 for f in frames)


async def test_a_state_panel_too_large_for_a_frame_is_not_sent(user, owned, settings, monkeypatch):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.setattr(consumers, "MAX_FRAGMENT_BYTES", 100_000)
    await database_sync_to_async(engine.state_set_data)("live-1", "quotes", ['"' * 20] * 3000)
    comm, _ = await connect("live-1", user)
    await comm.send_json_to({"type": "hello", "last_seq": 1, "version": "old", "budget": None})
    frames = await frames_until(comm, lambda f: "reload the page" in f)
    frames += await settle(comm)
    assert frames and max(len(f.encode()) for f in frames) <= 100_000
    html = "".join(frames)
    assert '<div id="state-panel" hx-swap-oob="true">' in html and "reload the page" in html
    assert 'id="timeline"' in html and 'id="context-panel"' in html  # the other panels as usual
    await comm.disconnect()


async def test_a_big_catch_up_comes_in_frames_within_the_limit(layer, user, owned):
    """40 messages of 30,000 characters (1.7 MB of HTML in one frame before): every frame at most
    FRAME_BYTES, and every message exactly once, in order, the list's bounds last."""
    for i in range(40):
        await append("live-1", "user" if i % 2 == 0 else "assistant", big(i))
    comm, connected = await connect("live-1", user)
    assert connected
    await comm.send_json_to({"type": "hello", "last_seq": 1, "budget": None})
    frames = await frames_until(comm, lambda f: last_seq_of(f) is not None)
    frames += await settle(comm)
    sizes = [len(f.encode()) for f in frames]
    assert len(frames) >= 6 and max(sizes) <= LIMIT, sizes
    seqs = [s for f in frames for s in msg_seqs(f)]
    assert seqs == list(range(2, 42))
    assert all(f"Message {i}:" in "".join(frames) for i in range(40))
    assert last_seq_of("".join(frames)) == 41
    await comm.disconnect()


async def test_a_pane_push_of_big_messages_is_split_too(layer, user, owned):
    """An edit that re-sends the whole list (here the system prompt) with 40 big messages: the list
    first with the oldest messages that fit, then the others, each frame within the limit."""
    for i in range(40):
        await append("live-1", "user" if i % 2 == 0 else "assistant", big(i))
    comm, _ = await connect("live-1", user)
    await hello(comm, 41)
    await settle(comm)
    await database_sync_to_async(engine.session_update)("live-1", system_prompt="Be brief.")
    frames = await frames_until(comm, lambda f: last_seq_of(f) is not None)
    frames += await settle(comm)
    assert max(len(f.encode()) for f in frames) <= LIMIT
    assert '<section id="messages"' in frames[0] and 'hx-swap-oob="true"' in frames[0]
    seqs = [s for f in frames for s in msg_seqs(f)]
    page = rendering.page_size()
    assert seqs == list(range(42 - min(page, 41), 42))
    assert '<section id="settings-panel"' in "".join(frames) and "Be brief." in "".join(frames)
    await comm.disconnect()


# ---------------------------------------------------------------------------------------------
# The periodic resync


class QueryCounter:
    def __init__(self):
        self.queries = []

    def __call__(self, execute, sql, params, many, context):
        self.queries.append(sql)
        return execute(sql, params, many, context)


async def page_state(comm, key="live-1"):
    session = await database_sync_to_async(engine.session_get)(key)
    return session.last_seq, await database_sync_to_async(rendering.panels_version)(session)


async def test_a_sync_with_nothing_missing_is_one_read_and_sends_nothing(user, owned, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    comm, _ = await connect("live-1", user)
    last_seq, version = await page_state(comm)
    await comm.send_json_to({"type": "hello", "last_seq": last_seq, "version": version, "budget": None})
    assert await comm.receive_nothing(timeout=0.3)
    counter = QueryCounter()
    await database_sync_to_async(lambda: connection.execute_wrappers.append(counter))()
    try:
        await comm.send_json_to({"type": "sync", "last_seq": last_seq, "version": version, "reply": None})
        assert await comm.receive_nothing(timeout=0.5)
    finally:
        await database_sync_to_async(lambda: connection.execute_wrappers.remove(counter))()
    assert len(counter.queries) == 1, counter.queries
    assert "conversation" in counter.queries[0].lower() and "WHERE" in counter.queries[0]
    await comm.disconnect()


async def test_a_sync_brings_what_a_lost_notification_would_have(layer, user, owned, monkeypatch):
    """Notifications lost (as during a Redis outage): the page's next sync brings the messages and
    the panels."""
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await settle(comm)
    with monkeypatch.context() as lost:
        lost.setattr(events, "_send", lambda batch: None)
        await append("live-1", "user", "written while the layer was away")
        await append("live-1", "assistant", "and its answer")
    assert await comm.receive_nothing(timeout=0.3)
    await comm.send_json_to({"type": "sync", "last_seq": 1, "version": "stale", "reply": None})
    frames = await frames_until(comm, lambda f: last_seq_of(f) is not None)
    frames += await settle(comm)
    html = "".join(frames)
    assert msg_seqs(html) == [2, 3] and "written while the layer was away" in html
    assert last_seq_of(html) == 3 and 'id="session-header"' in html
    await comm.disconnect()


async def test_a_sync_showing_a_reply_that_no_longer_runs_gets_the_reply_area(user, owned, settings):
    """The page still shows reply 77 streaming (its end was lost): the sync brings the reply area as
    the database has it (no reply running: no stream, and the next step's button)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    comm, _ = await connect("live-1", user)
    last_seq, version = await page_state(comm)
    await comm.send_json_to({"type": "hello", "last_seq": last_seq, "version": version, "budget": None})
    assert await comm.receive_nothing(timeout=0.3)
    await comm.send_json_to({"type": "sync", "last_seq": last_seq, "version": version, "reply": "77"})
    html = await comm.receive_from(timeout=5)
    assert '<div id="reply-stream"' in html and "streaming" not in html and 'id="reply-actions"' in html
    await comm.disconnect()


async def test_a_sync_before_the_hello_or_malformed_is_ignored(user, owned, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    comm, _ = await connect("live-1", user)
    await comm.send_json_to({"type": "sync", "last_seq": 0})
    assert await comm.receive_nothing(timeout=0.3)
    await hello(comm, 1)
    await settle(comm)
    for bad in ({"type": "sync"}, {"type": "sync", "last_seq": -1}, {"type": "sync", "last_seq": "x"}):
        await comm.send_json_to(bad)
    assert await comm.receive_nothing(timeout=0.3)
    await comm.disconnect()


def test_the_page_is_told_the_resync_period(client, user, owned, settings):
    settings.CONVO_RESYNC_SECONDS = 7.5
    client.force_login(user)
    html = client.get("/c/live-1/").content.decode()
    assert 'data-resync-seconds="7.5"' in html


# ---------------------------------------------------------------------------------------------
# Per-deployment channel prefixes


async def test_two_prefixes_on_one_redis_server_do_not_hear_each_other(own_redis):  # noqa: F811
    for kind in (RedisPubSubChannelLayer, RedisChannelLayer):
        one = kind(hosts=[own_redis.url], prefix="convo.deployment_one")
        two = kind(hosts=[own_redis.url], prefix="convo.deployment_two")
        group = events.group_name(__import__("uuid").uuid4())
        heard = {}
        for name, layer_ in (("one", one), ("two", two)):
            channel = await layer_.new_channel()
            await layer_.group_add(group, channel)
            heard[name] = (layer_, channel)
        await one.group_send(group, {"type": "session.event", "kind": "message", "seq": 1})
        layer_, channel = heard["one"]
        assert (await asyncio.wait_for(layer_.receive(channel), 5))["seq"] == 1
        layer_, channel = heard["two"]
        receiving = asyncio.ensure_future(layer_.receive(channel))
        done, _ = await asyncio.wait([receiving], timeout=0.5)
        assert not done, f"{kind.__name__}: the other deployment heard it"
        receiving.cancel()
        for layer_ in (one, two):
            await layer_.flush()


def test_the_default_prefix_is_derived_from_the_database_name():
    def prefix(**env):
        base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CONVO_CHANNEL_PREFIX")}
        code = "from django.conf import settings; print(settings.CHANNEL_LAYERS['default']['CONFIG']['prefix'])"
        result = subprocess.run(
            [sys.executable, "-c", "import django; django.setup(); " + code],
            env={**base, "DJANGO_SETTINGS_MODULE": "convo_site.settings", "REDIS_URL": "redis://127.0.0.1:1/3", **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()

    assert prefix(DATABASE_URL="postgres://u:p@127.0.0.1:5432/convo_staging") == "convo.convo_staging"
    assert prefix(DATABASE_URL="postgres://u:p@127.0.0.1:5432/convo_prod") == "convo.convo_prod"
    assert prefix(DATABASE_URL="postgres://u@h/x", CONVO_CHANNEL_PREFIX="acme.live") == "acme.live"
    with pytest.raises(subprocess.CalledProcessError) as refused:
        prefix(CONVO_CHANNEL_PREFIX="two words")
    assert "CONVO_CHANNEL_PREFIX" in refused.value.stderr


# ---------------------------------------------------------------------------------------------
# A Redis outage


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def event_log():
    handler = Records()
    names = ("sessions_app.events", "sessions_app.consumers", "channels_redis.pubsub", "channels_redis.core")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in names:
        logging.getLogger(name).removeHandler(handler)


@pytest.fixture(params=["pubsub", "core"])
def outage_layer(request, settings, own_redis, monkeypatch):  # noqa: F811
    backend = {
        "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "core": "channels_redis.core.RedisChannelLayer",
    }[request.param]
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": backend, "CONFIG": {"hosts": [own_redis.url], "prefix": "convo.test-outage"}}
    }
    monkeypatch.setattr(consumers, "PROBE_SECONDS", 0.1)
    monkeypatch.setattr(events, "LAYER_TIMEOUT", 1.0)
    monkeypatch.setattr(events, "layer_health", events.LayerHealth())
    yield own_redis
    events.flush()


async def test_a_redis_outage_is_served_from_the_database_and_live_again_after(
    outage_layer, user, owned, event_log, close_async_db
):
    redis = outage_layer
    await append("live-1", "user", "before the outage")
    redis.stop()

    # The handshake is accepted and the hello's catch-up comes from the database.
    comm, connected = await connect("live-1", user)
    assert connected
    await comm.send_json_to({"type": "hello", "last_seq": 0, "budget": None})
    frames = await frames_until(comm, lambda f: last_seq_of(f) is not None)
    assert msg_seqs("".join(frames)) == [1, 2]

    # Writes go on; their notifications are lost; the page's periodic sync brings them.
    for i in range(5):
        await append("live-1", "user", f"during the outage {i}")
    await asyncio.to_thread(events.flush, 10)
    await settle(comm)
    await comm.send_json_to({"type": "sync", "last_seq": 2, "version": None, "reply": None})
    frames = await frames_until(comm, lambda f: last_seq_of(f) is not None)
    assert msg_seqs("".join(frames)) == [3, 4, 5, 6, 7]
    assert events.layer_health.down

    # Redis is back: the socket joins its group and live pushes resume, without a sync.
    redis.start()
    await frames_until(comm, lambda f: 'id="session-header"' in f)  # the resync on the layer's return
    await settle(comm)
    await append("live-1", "assistant", "after the outage")
    frames = await frames_until(comm, lambda f: "after the outage" in f)
    assert msg_seqs("".join(frames)) == [8]
    await comm.disconnect()

    warnings = [r for r in event_log.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unreachable" in warnings[0].getMessage() and warnings[0].exc_info is None
    infos = [r for r in event_log.records if r.levelno == logging.INFO and "reachable again" in r.getMessage()]
    assert len(infos) == 1
    assert events.layer_health.outages == 1 and not events.layer_health.down


async def test_pages_open_through_an_outage_are_resynced_when_the_layer_is_back(
    outage_layer, user, owned, event_log, close_async_db
):
    """The socket was joined when Redis went away: what was written meanwhile reaches the page as soon
    as the layer is back (the socket's resync), not at the page's next sync or the next change."""
    redis = outage_layer
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await settle(comm)
    redis.stop()
    for i in range(3):
        await append("live-1", "user", f"unheard {i}")
    await asyncio.to_thread(events.flush, 10)
    redis.start()
    frames = await frames_until(comm, lambda f: last_seq_of(f) == 4, timeout=20)
    assert msg_seqs("".join(frames)) == [2, 3, 4]
    await settle(comm)
    await append("live-1", "assistant", "live again")
    frames = await frames_until(comm, lambda f: "live again" in f)
    assert msg_seqs("".join(frames)) == [5]
    await comm.disconnect()
    assert len([r for r in event_log.records if r.levelno >= logging.WARNING]) == 1


async def test_a_new_password_during_an_outage_closes_the_socket_when_the_layer_is_back(
    outage_layer, user, owned, close_async_db
):
    """The revocation (a channel-layer message) was lost with Redis: the socket checks the login
    again when the layer is back, and closes (4401) since it no longer holds."""
    redis = outage_layer
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await settle(comm)
    redis.stop()

    def new_password():
        user.set_password("a-new-password-456")
        user.save()

    await database_sync_to_async(new_password)()
    await asyncio.to_thread(events.flush, 10)
    redis.start()
    closed = await comm.receive_output(timeout=20)
    assert closed == {"type": "websocket.close", "code": consumers.CLOSE_LOGGED_OUT}


async def test_the_event_sender_reports_an_outage_once(outage_layer, owned, event_log, close_async_db):
    outage_layer.stop()
    for i in range(30):
        await append("live-1", "user", f"unheard {i}")
    assert await asyncio.to_thread(events.flush, 30)
    outage_layer.start()
    await append("live-1", "user", "heard again")
    assert await asyncio.to_thread(events.flush, 30)
    logged = [(r.levelname, r.getMessage()) for r in event_log.records if r.name == "sessions_app.events"]
    assert [level for level, _ in logged] == ["WARNING", "INFO"], logged
    assert all(r.exc_info is None for r in event_log.records if r.name == "sessions_app.events")


# ---------------------------------------------------------------------------------------------
# Zombie reply streams


def reply_event(session, reply, state, text=""):
    return {"type": "session.event", "session": session.pk.hex, "kind": events.REPLY, "state": state,
            "text": text, "reply": reply, "turn": 1}  # fmt: skip


async def test_events_of_a_reply_that_is_not_the_running_one_are_dropped(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await settle(comm)
    send = get_channel_layer().group_send
    group = events.group_name(owned.pk)
    # A reply the database does not have running (interrupted, its thread still alive): dropped.
    await send(group, reply_event(owned, 90, "delta", "zombie words"))
    assert await comm.receive_nothing(timeout=0.3)
    # The retried reply starts and streams; the zombie's frames interleave and are dropped.
    await send(group, reply_event(owned, 91, "started"))
    assert 'data-reply="91"' in await comm.receive_from(timeout=5)
    for i in range(3):
        await send(group, reply_event(owned, 90, "delta", f"zombie words {i}"))
        await send(group, reply_event(owned, 91, "delta", f"live words {i}"))
    frames = [await comm.receive_from(timeout=5) for _ in range(3)]
    assert all("live words" in f and "zombie" not in f for f in frames)
    assert await comm.receive_nothing(timeout=0.3)
    # Its end clears the stream; the zombie's end, or a late delta of the ended reply, changes nothing.
    await send(group, reply_event(owned, 91, "done", "live words"))
    assert "streaming" not in await comm.receive_from(timeout=5)
    for event in (reply_event(owned, 90, "done", "zombie"), reply_event(owned, 91, "delta", "late")):
        await send(group, event)
    assert await comm.receive_nothing(timeout=0.3)
    await comm.disconnect()


async def test_the_running_reply_is_learnt_from_the_database(layer, user, owned, replies_env, close_async_db):
    """A page that connects mid-reply follows that reply (known from the database at the hello) and
    drops another reply's stream."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.2
    from sessions_app import replies

    _, reply = await database_sync_to_async(replies.append_and_reply)("live-1", "hello there")
    comm, _ = await connect("live-1", user)
    await hello(comm, 0)
    await get_channel_layer().group_send(
        events.group_name(owned.pk), reply_event(owned, reply.pk + 1000, "delta", "zombie words")
    )
    await database_sync_to_async(replies.stop_reply)("live-1")
    await database_sync_to_async(replies.wait_reply)(reply.pk)
    frames = await frames_until(comm, lambda f: 'id="reply-stream"' in f and "streaming" not in f)
    frames += await settle(comm)
    assert not any("zombie words" in f for f in frames)
    await comm.disconnect()
