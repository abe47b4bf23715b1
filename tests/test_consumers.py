"""The live-push consumer on the in-memory channel layer and on Redis: who may connect, what is
pushed and when (after the commit only), and reconnect catch-up by sequence number."""

import os
import re

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import transaction
from django.test import Client

from convo_site.asgi import application
from sessions_app import engine, events

pytestmark = [pytest.mark.django_db(transaction=True)]

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")  # the handshake's own origin is its scheme (ws → http), Host and port


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-pubsub", marks=pytest.mark.redis),
    ]
)
def layer(request, settings):
    """Run each test on the in-memory layer and, with REDIS_URL, on both Redis layers."""
    if request.param == "redis":
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [os.environ["REDIS_URL"]], "prefix": "convo-test-consumers"},
            }
        }
    elif request.param == "redis-pubsub":
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [os.environ["REDIS_URL"]], "prefix": "convo-test-consumers"},
            }
        }
    else:
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    yield request.param


@pytest.fixture(autouse=True)
def _quick_panels(monkeypatch):
    """Panels follow messages after PANEL_DELAY; keep it short here so that tests settle fast."""
    from sessions_app import consumers

    monkeypatch.setattr(consumers, "PANEL_DELAY", 0.1)


def cookie_for(user):
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"


async def connect(session_id, user=None, origin=ORIGIN):
    headers = [HOST, origin] if origin else [HOST]
    if user is not None:
        cookie = await database_sync_to_async(cookie_for)(user)
        headers.append((b"cookie", cookie.encode()))
    comm = WebsocketCommunicator(application, f"/ws/sessions/{session_id}/", headers=headers)
    connected, _ = await comm.connect(timeout=5)
    return comm, connected


async def hello(comm, last_seq):
    await comm.send_json_to({"type": "hello", "last_seq": last_seq, "budget": None})
    return await comm.receive_from(timeout=5)


async def settle(comm, quiet=0.4):
    """Every frame until the socket is quiet (a message frame, then the panels that follow it)."""
    frames = []
    while not await comm.receive_nothing(timeout=quiet):
        frames.append(await comm.receive_from(timeout=5))
    return frames


async def receive_page_frame(comm, timeout=5):
    """The next frame that is not the user's sidebar (library changes push it on its own, issue 11)."""
    while True:
        html = await comm.receive_from(timeout=timeout)
        if 'id="sidebar-sections" hx-swap-oob' not in html[:200]:
            return html


def msg_seqs(html):
    return [int(s) for s in re.findall(r'<li id="msg-(\d+)"', html)]


append = database_sync_to_async(engine.message_append)
create = database_sync_to_async(engine.session_create)


@pytest.fixture
def owned(user):
    return engine.session_create("live-1", owner=user, system_prompt="Be live.")


async def test_owner_is_accepted_and_gets_fresh_panels(layer, user, owned):
    comm, connected = await connect("live-1", user)
    assert connected
    html = await hello(comm, 1)
    assert msg_seqs(html) == []  # nothing missing
    for part in ('id="timeline"', 'id="state-panel"', 'id="context-panel"', 'id="session-header"'):
        assert part in html
    assert 'hx-swap-oob="true"' in html
    await comm.disconnect()


@pytest.mark.parametrize("who", ["anonymous", "stranger"])
async def test_strangers_and_anonymous_are_refused(layer, who, user, other_user, owned):
    comm, connected = await connect("live-1", other_user if who == "stranger" else None)
    assert not connected


async def test_unknown_session_is_refused(layer, user):
    comm, connected = await connect("no-such", user)
    assert not connected


async def test_foreign_origin_is_refused(layer, user, owned):
    comm, connected = await connect("live-1", user, origin=(b"origin", b"http://evil.example"))
    assert not connected
    comm, connected = await connect("live-1", user, origin=None)
    assert not connected


async def test_append_is_pushed_after_commit(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await append("live-1", "user", "Hello *live*")
    html = await comm.receive_from(timeout=5)
    assert msg_seqs(html) == [2]
    assert "<em>live</em>" in html
    assert 'hx-swap-oob="beforeend:#message-list"' in html
    assert 'data-last-seq="2"' in html
    # Then the panels, once for a burst of changes, and the user's sidebar (the conversation moved up).
    frames = [await comm.receive_from(timeout=5) for _ in range(2)]
    panels = next(frame for frame in frames if 'id="turn-1"' in frame)
    assert 'id="context-panel"' in panels and msg_seqs(panels) == []
    sidebar = next(frame for frame in frames if 'id="sidebar-sections" hx-swap-oob="true"' in frame)
    assert "Hello *live*" in sidebar  # its title, from the first user message
    assert await comm.receive_nothing(timeout=0.4)
    await comm.disconnect()


def _append_then_fail():
    with transaction.atomic():
        engine.message_append("live-1", "user", "never committed")
        raise RuntimeError("boom")


async def test_rolled_back_write_pushes_nothing(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    with pytest.raises(RuntimeError):
        await database_sync_to_async(_append_then_fail)()
    assert await comm.receive_nothing(timeout=0.5)
    await append("live-1", "user", "committed")
    html = "".join(await settle(comm))
    assert msg_seqs(html) == [2] and "committed" in html and "never committed" not in html
    await comm.disconnect()


async def test_reconnect_catch_up_sends_exactly_the_missing_messages(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await append("live-1", "user", "one")
    assert msg_seqs("".join(await settle(comm))) == [2]
    await comm.disconnect()
    # While the page is away: three more messages.
    for text in ("two", "three", "four"):
        await append("live-1", "user" if text != "three" else "assistant", text)
    comm, _ = await connect("live-1", user)
    html = await hello(comm, 2)
    assert msg_seqs(html) == [3, 4, 5]
    assert html.index("two") < html.index("three") < html.index("four")
    # Then live as before, with nothing repeated.
    await append("live-1", "user", "five")
    assert msg_seqs("".join(await settle(comm))) == [6]
    await comm.disconnect()


async def test_a_lost_notification_is_repaired_by_the_next(layer, user, owned):
    """Notifications carry no content: a page that missed one gets both messages with the next."""
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await database_sync_to_async(_append_silently)("live-1", "dropped notification")
    await append("live-1", "user", "second")
    assert msg_seqs("".join(await settle(comm))) == [2, 3]
    await comm.disconnect()


def _append_silently(session_id, text):
    """Append while the channel layer is unreachable (the push is lost, as Channels may do)."""
    original = events._send
    events._send = lambda batch: None
    try:
        engine.message_append(session_id, "user", text)
    finally:
        events._send = original


async def test_events_before_hello_are_covered_by_the_hello(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await append("live-1", "user", "early")
    assert await comm.receive_nothing(timeout=0.3)
    html = await hello(comm, 1)
    assert msg_seqs(html) == [2]
    await comm.disconnect()


async def test_state_change_pushes_the_state_panel(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await database_sync_to_async(engine.state_set)("live-1", "city", "Lyon")
    html = "".join(await settle(comm))
    assert 'id="state-panel"' in html and "Lyon" in html and msg_seqs(html) == []
    await comm.disconnect()


async def test_clear_config_and_delete(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await append("live-1", "user", "to be cleared")
    await settle(comm)
    await database_sync_to_async(engine.session_clear_messages)("live-1")
    html = await receive_page_frame(comm)
    messages = html[html.index('<section id="messages"') : html.index('id="session-header"')]
    assert "to be cleared" not in messages  # (the title it gave the conversation stays)
    await database_sync_to_async(engine.session_update)("live-1", system_prompt="Be brief.")
    html = await receive_page_frame(comm)
    assert "Be brief." in html
    settings_panel = html[html.index('<section id="settings-panel"') :]
    assert "Be brief.</textarea>" in settings_panel  # an open page cannot save the old prompt back
    await settle(comm)
    await database_sync_to_async(engine.session_delete)("live-1")
    html = await comm.receive_from(timeout=5)
    assert "This conversation was deleted" in html
    closed = await comm.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4404}


async def test_reply_events_fill_and_empty_the_reply_stream(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    channel_layer = get_channel_layer()
    event = {"type": "session.event", "session": owned.pk.hex, "kind": events.REPLY, "reply": 7, "turn": 1}
    await channel_layer.group_send(events.group_name(owned.pk), {**event, "state": "started", "text": ""})
    assert "thinking…" in await comm.receive_from(timeout=5)
    await channel_layer.group_send(events.group_name(owned.pk), {**event, "state": "delta", "text": "Hel<b>lo"})
    html = await comm.receive_from(timeout=5)
    assert 'id="reply-stream"' in html and "role-assistant" in html and "Hel&lt;b&gt;lo" in html
    await channel_layer.group_send(events.group_name(owned.pk), {**event, "state": "done", "text": "Hello"})
    html = await comm.receive_from(timeout=5)
    assert 'id="reply-stream"' in html and "Hello" not in html
    await comm.disconnect()


def stream_of(html):
    """The inside of the pushed #reply-stream fragment (its divs balanced)."""
    start = html.find('<div id="reply-stream"')
    assert start >= 0 and 'hx-swap-oob="innerHTML"' in html[start : html.index(">", start)], html[:300]
    body = html.index(">", start) + 1
    depth = 1
    for tag in re.finditer(r"<(/?)div\b", html[body:]):
        depth += -1 if tag.group(1) else 1
        if depth == 0:
            return html[body : body + tag.start()]
    raise AssertionError("unbalanced #reply-stream fragment")


@pytest.mark.parametrize("state", ["started", "delta"])
async def test_a_running_reply_shows_its_text_and_stop(layer, user, owned, state):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    text = "" if state == "started" else "Twelve times seven"
    if state == "delta":  # the reply's start came first (a page does not follow a reply it did not see start)
        await get_channel_layer().group_send(
            events.group_name(owned.pk),
            {"type": "session.event", "session": owned.pk.hex, "kind": events.REPLY, "state": "started",
             "text": "", "reply": 41, "turn": 3},
        )  # fmt: skip
        await comm.receive_from(timeout=5)
    await get_channel_layer().group_send(
        events.group_name(owned.pk),
        {"type": "session.event", "session": owned.pk.hex, "kind": events.REPLY, "state": state, "text": text,
         "reply": 41, "turn": 3},
    )  # fmt: skip
    html = stream_of(await comm.receive_from(timeout=5))
    assert 'class="msg role-assistant streaming" data-reply="41"' in html
    assert ("replying…" if text else "thinking…") in html and text in html and "turn 3" in html
    assert 'class="msg-body stream-text"' in html  # (Stop is the page's composer button, shown while streaming)
    assert 'role="alert"' not in html
    await comm.disconnect()


@pytest.mark.parametrize("state", ["done", "stopped", "error"])
async def test_an_ended_reply_clears_the_stream_and_offers_the_next_step(layer, user, owned, state):
    """done / stopped: the stream empties and Regenerate is offered (the turn is complete); error: an
    alert with the error, and Retry (the turn stays open)."""
    await append("live-1", "user", "What is 12*7?")
    if state == "error":  # as the reply runner does before it sends the event
        await database_sync_to_async(engine.turn_set_metadata)("live-1", 1, {"reply_error": "HTTP 500: boom"})
    else:
        await append("live-1", "assistant", "84, stored")
    comm, _ = await connect("live-1", user)
    await hello(comm, 3)
    await settle(comm)
    event = {"type": "session.event", "session": owned.pk.hex, "kind": events.REPLY, "state": state, "text": "84",
             "reply": 5, "turn": 1}  # fmt: skip
    if state == "error":
        event["error"] = "The language model server returned HTTP 500: boom"
    await get_channel_layer().group_send(events.group_name(owned.pk), event)
    html = await comm.receive_from(timeout=5)
    stream = stream_of(html)
    assert "streaming" not in stream and "Stop</button>" not in stream
    assert 'id="reply-actions" class="reply-actions" hx-swap-oob="true"' in html
    if state == "error":
        assert 'role="alert"' in stream and "HTTP 500: boom" in stream and "could not reply to turn 1" in stream
        assert "Retry</button>" in html and "Regenerate" not in html
    else:
        assert stream.strip() == ""
        assert "Regenerate</button>" in html and "Retry" not in html
    await comm.disconnect()


async def test_the_hello_brings_the_running_reply(layer, user, owned, replies_env, close_async_db):
    """A page that connects mid-reply gets the running reply's text and Stop from the database."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.2
    from sessions_app import replies

    _, reply = await database_sync_to_async(replies.append_and_reply)("live-1", "hello there")
    comm, _ = await connect("live-1", user)
    html = await hello(comm, 0)
    assert f'data-reply="{reply.pk}"' in stream_of(html) and "streaming" in stream_of(html)
    await database_sync_to_async(replies.stop_reply)("live-1")
    await database_sync_to_async(replies.wait_reply)(reply.pk)
    frames = await settle(comm)
    assert any('id="reply-stream"' in f and "streaming" not in stream_of(f) for f in frames if "reply-stream" in f)
    await comm.disconnect()


async def test_a_builtin_reply_streams_to_the_page_with_its_tool_call(layer, user, owned, replies_env, close_async_db):
    """Send "what is 12*7?": the page sees the stream, the calculator's tool message and the stored
    answer as they happen, then the timeline with the tool call and Regenerate."""
    from sessions_app import replies

    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    _, reply = await database_sync_to_async(replies.append_and_reply)("live-1", "what is 12*7?")
    await database_sync_to_async(replies.wait_reply)(reply.pk)
    frames = await settle(comm, quiet=0.6)
    joined = "".join(frames)
    assert f'data-reply="{reply.pk}"' in joined  # the stream was shown
    assert msg_seqs(joined) == [2, 3, 4]  # user, tool, assistant: each once, in order
    assert re.search(r'<li id="msg-3" class="msg role-tool"', joined) and "calculator" in joined
    ends = [f for f in frames if 'id="reply-stream"' in f and 'id="reply-actions"' in f]
    assert ends and "streaming" not in stream_of(ends[-1]) and "Regenerate</button>" in ends[-1]
    timeline = [f for f in frames if 'id="timeline"' in f][-1]
    assert re.search(r"tool calculator <code>call_\w+</code></span> 84", timeline)
    assert 'id="turn-1" class="turn complete"' in timeline
    await comm.disconnect()


async def test_every_open_page_gets_the_push(layer, user, owned):
    pages = [(await connect("live-1", user))[0] for _ in range(3)]
    for page in pages:
        await hello(page, 1)
    await append("live-1", "user", "fan out")
    for page in pages:
        assert msg_seqs("".join(await settle(page))) == [2]
        await page.disconnect()


async def test_budget_message_rerenders_the_context_panel(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    await comm.send_json_to({"type": "budget", "budget": 1})
    html = await comm.receive_from(timeout=5)
    assert 'data-budget="1"' in html
    await comm.send_to(text_data="not json")
    await comm.send_json_to([1, 2])
    assert await comm.receive_nothing(timeout=0.2)
    await comm.disconnect()


async def test_far_behind_page_gets_the_whole_list(layer, user, owned, monkeypatch):
    from sessions_app import consumers

    monkeypatch.setattr(consumers, "CATCHUP_MAX", 2)
    for i in range(4):
        await append("live-1", "user", f"m{i}")
    comm, _ = await connect("live-1", user)
    html = await hello(comm, 1)
    assert '<section id="messages"' in html and msg_seqs(html) == [1, 2, 3, 4, 5]
    await comm.disconnect()


async def test_a_burst_arrives_once_in_order_with_current_panels(layer, user, owned):
    """Ten quick appends: every message exactly once, in order; the panels end up current."""
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    for i in range(10):
        await append("live-1", "user" if i % 2 == 0 else "assistant", f"burst {i}")
    frames = await settle(comm, quiet=0.6)
    html = "".join(frames)
    assert msg_seqs(html) == list(range(2, 12))
    last_panels = [f for f in frames if 'id="timeline"' in f][-1]
    assert 'id="turn-5" class="turn complete"' in last_panels
    assert len([f for f in frames if 'id="timeline"' in f]) < 10  # coalesced, not one per message
    await comm.disconnect()


async def test_session_ids_with_colons_and_dots(layer, user):
    await create("team:alpha.v2", owner=user)
    comm, connected = await connect("team:alpha.v2", user)  # daphne hands the path over decoded
    assert connected
    html = await hello(comm, 0)
    assert 'id="session-header"' in html and "team:alpha.v2" in html
    await comm.disconnect()


async def test_a_chosen_answer_shows_on_every_open_page(layer, user, owned):
    """Choosing which answer of a regenerated turn is shown (in one tab) shows it in the others too."""
    for role, content in [("user", "hi"), ("assistant", "Hello."), ("assistant", "Hi there.")]:
        await append("live-1", role, content)
    comm, _ = await connect("live-1", user)
    await hello(comm, 4)
    await database_sync_to_async(engine.response_choose)("live-1", 1, 3)
    html = "".join(await settle(comm))
    assert sorted(msg_seqs(html)) == [3, 4]
    assert re.search(r'<li id="msg-4"[^>]* hidden data-version-hidden hx-swap-oob="true">', html)
    assert re.search(r'<li id="msg-3"[^>]*hx-swap-oob="true">', html) and "1 / 2" in html
    await comm.disconnect()
