# ruff: noqa: F811 - pytest fixtures imported from test_consumers are parameters here
"""What one socket can make the server do (issue 9 §4): a frame limit (a token bucket; past it the
socket is closed with 1008) and a catch-up that sends only what the page lacks."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from sessions_app import consumers, engine, rendering

# The consumer tests' fixtures (layer: each test on every channel layer) and helpers.
from .test_consumers import _quick_panels, append, connect, hello, layer, msg_seqs, owned, settle  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True)]


async def receive_until_close(comm, limit=500):
    """Every frame the server sends until it closes the socket: (frames, close code)."""
    frames = []
    for _ in range(limit):
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return frames, output.get("code")
        frames.append(output.get("text"))
    raise AssertionError("the socket was not closed")


async def test_a_flood_of_frames_closes_the_socket_with_1008(layer, user, owned):
    """100 hellos at once: the burst's worth is handled (one catch-up), then the socket is closed
    with the policy code instead of re-rendering the page a hundred times."""
    comm, connected = await connect("live-1", user)
    assert connected
    for _ in range(100):
        await comm.send_json_to({"type": "hello", "last_seq": 0, "budget": None})
    frames, code = await receive_until_close(comm)
    assert code == consumers.CLOSE_POLICY == 1008
    assert len(frames) <= 2


async def test_a_flood_of_budget_frames_closes_the_socket(layer, user, owned, settings):
    settings.CONVO_WS_FRAME_BURST = 5
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    for i in range(20):
        await comm.send_json_to({"type": "budget", "budget": 100 + i})
    _frames, code = await receive_until_close(comm)
    assert code == 1008


async def test_frames_within_the_rate_are_served(layer, user, owned, settings):
    settings.CONVO_WS_FRAME_BURST = 3
    settings.CONVO_WS_FRAMES_PER_SECOND = 1000.0
    comm, _ = await connect("live-1", user)
    await hello(comm, 1)
    for i in range(10):
        await comm.send_json_to({"type": "budget", "budget": 100 + i})
        # Spaced out (receive_nothing would return at once once a pushed panel waits in the output).
        await asyncio.sleep(0.02)
    outputs = []
    while not await comm.receive_nothing(timeout=0.5):
        outputs.append(await comm.receive_output(timeout=5))
    assert outputs and all(o["type"] == "websocket.send" for o in outputs)
    assert "context-panel" in outputs[-1]["text"]
    await comm.disconnect()


async def test_an_up_to_date_hello_renders_nothing(layer, user, owned, monkeypatch):
    """A page with the newest message and current panels (the header's version) that reconnects is
    sent nothing, and nothing is rendered for it."""
    session = await database_sync_to_async(engine.session_get)("live-1")
    version = await database_sync_to_async(rendering.panels_version)(session)
    rendered = []
    original = rendering.render_partial
    monkeypatch.setattr(rendering, "render_partial", lambda *a, **k: rendered.append(a[0]) or original(*a, **k))
    comm, _ = await connect("live-1", user)
    await comm.send_json_to({"type": "hello", "last_seq": session.last_seq, "version": version, "budget": None})
    assert await comm.receive_nothing(timeout=0.5)
    assert rendered == []
    # and it is live from then on
    await append("live-1", "user", "after")
    assert msg_seqs("".join(await settle(comm))) == [2]
    await comm.disconnect()


async def test_a_stale_version_gets_the_panels_but_no_messages(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await comm.send_json_to({"type": "hello", "last_seq": 1, "version": "old", "budget": None})
    html = await comm.receive_from(timeout=5)
    assert msg_seqs(html) == [] and 'id="state-panel"' in html
    await comm.disconnect()


async def test_the_page_version_matches_the_hello(layer, user, owned):
    """The chat page's header carries the version an up-to-date hello must send."""
    from django.test import Client

    def page():
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)
        return client.get("/c/live-1/").content.decode()

    html = await database_sync_to_async(page)()
    session = await database_sync_to_async(engine.session_get)("live-1")
    version = await database_sync_to_async(rendering.panels_version)(session)
    assert f'data-version="{version}"' in html


async def test_a_second_hello_on_one_socket_is_ignored(layer, user, owned):
    comm, _ = await connect("live-1", user)
    await hello(comm, 0)
    await comm.send_json_to({"type": "hello", "last_seq": 0, "budget": None})
    assert await comm.receive_nothing(timeout=0.5)
    await comm.disconnect()
