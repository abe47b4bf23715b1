"""Streaming reaches every open page: REPLY events on the session's channel-layer group."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from sessions_app import engine, events, replies

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("replies_env", "close_async_db")]


async def subscribe(session_id: str) -> str:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    key = (await database_sync_to_async(engine.session_get)(session_id)).pk
    await layer.group_add(events.group_name(key), channel)
    return channel


async def receive_until(channel: str, states: set[str], limit: int = 1000) -> list[dict]:
    """Events of one channel up to the first REPLY event in ``states`` (bounded)."""
    layer = get_channel_layer()
    got = []
    for _ in range(limit):
        event = await asyncio.wait_for(layer.receive(channel), timeout=15)
        got.append(event)
        if event["kind"] == events.REPLY and event["state"] in states:
            return got
    raise AssertionError(f"no {states} event in {limit} events")


async def test_a_streamed_reply_reaches_two_open_pages(replies_env):
    """Both subscribers see started, growing deltas carrying the whole text so far, the stored
    messages (user, tool, assistant) and done with the final text."""
    await database_sync_to_async(engine.session_create)("s")
    page1, page2 = await subscribe("s"), await subscribe("s")
    _, reply = await database_sync_to_async(replies.append_and_reply)("s", "what is 12*7?")
    for page in (page1, page2):
        got = await receive_until(page, {"done"})
        states = [e["state"] for e in got if e["kind"] == events.REPLY]
        assert states[0] == "started" and states[-1] == "done"
        assert states.count("delta") >= 2  # word by word
        texts = [e["text"] for e in got if e["kind"] == events.REPLY and e["state"] == "delta"]
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))
        done = got[-1]
        assert done["text"] == "12*7 = 84." and done["reply"] == reply.pk and done["turn"] == 1
        messages = [e["seq"] for e in got if e["kind"] == events.MESSAGE]
        assert {1, 2, 3} <= set(messages)  # user, tool, assistant: all before done
        assert done["seq"] == 3
    session = await database_sync_to_async(engine.session_get)("s")
    stored = await database_sync_to_async(lambda: engine.last_turn(session).assistant_response.content)()
    assert stored == "12*7 = 84."


async def test_state_change_is_pushed_to_the_page(replies_env):
    """'remember that ...' changes the state through the tool: the page gets a STATE event."""
    await database_sync_to_async(engine.session_create)("s")
    page = await subscribe("s")
    await database_sync_to_async(replies.append_and_reply)("s", "remember that my name is Ada")
    got = await receive_until(page, {"done"})
    assert any(e["kind"] == events.STATE for e in got)
    session = await database_sync_to_async(engine.session_get)("s")
    assert session.variables == {"name": "Ada"}


async def test_stop_is_pushed_with_the_partial_text(replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.05
    await database_sync_to_async(engine.session_create)("s")
    page = await subscribe("s")
    _, reply = await database_sync_to_async(replies.append_and_reply)("s", "tell me about yourself")
    got = await receive_until(page, {"delta"})
    assert got[-1]["text"]
    await database_sync_to_async(replies.stop_reply)("s")
    got = await receive_until(page, {"stopped"})
    stopped = got[-1]
    assert stopped["text"] and stopped["seq"]
    reply = await database_sync_to_async(replies.wait_reply)(reply.pk)
    assert reply.text == stopped["text"]
