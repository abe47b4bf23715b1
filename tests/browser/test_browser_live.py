"""The page's side of the live link (issue 10), against a scripted websocket (Playwright's
route_web_socket stands in for the server): the reconnect backoff is not reset by an open that
delivers nothing, and the page checks in with its last_seq every data-resync-seconds."""

import json

import pytest
from playwright.sync_api import expect

from sessions_app import engine

from .conftest import script


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def test_an_open_that_is_closed_before_any_frame_does_not_reset_the_backoff(page, server, alice, login):
    """A server that accepts and then closes with 1011 before sending anything (as daphne did with
    a catch-up over 1 MiB): the page backs off further on each attempt instead of retrying at full
    speed forever; the first frame received resets the backoff."""
    script(engine.session_create, "backoff", owner=alice)
    login(alice)
    behaviour = {"deliver": False, "opens": 0}

    def answer(ws):
        # The page opened and sent its hello: the catch-up is delivered, or the socket is closed.
        if behaviour["deliver"]:
            ws.send('<div id="live-noop"></div>')
        else:
            ws.close(code=1011, reason="frame too big")

    def handler(ws):
        behaviour["opens"] += 1
        ws.on_message(lambda message: answer(ws))

    page.route_web_socket("**/ws/sessions/**", handler)
    page.goto(f"{server.url}/c/backoff/")
    page.wait_for_function("() => window.convoLive && window.convoLive.retries >= 3", timeout=20_000)
    assert behaviour["opens"] >= 3
    behaviour["deliver"] = True
    page.wait_for_function("() => window.convoLive.retries === 0 && window.convoLive.received", timeout=30_000)
    expect(page.locator("#live-status[data-state=live]")).to_be_visible()


def test_the_page_checks_in_with_its_last_seq(page, server, alice, login):
    session = script(engine.session_create, "resync", owner=alice, system_prompt="Be brief.")
    script(engine.message_append, "resync", "user", "hello")
    login(alice)
    received = []
    sockets = []

    def handler(ws):
        sockets.append(ws)
        ws.on_message(lambda message: received.append(json.loads(message)))

    page.route_web_socket("**/ws/sessions/**", handler)
    page.goto(f"{server.url}/c/resync/")
    page.wait_for_function("() => window.convoLive && window.convoLive.helloSent")
    # A short period (read when the socket opens), then a reconnect to pick it up.
    page.evaluate("() => document.getElementById('chat-main').setAttribute('data-resync-seconds', '0.2')")
    sockets[-1].close(code=1012, reason="restart")
    page.wait_for_function("() => window.convoLive.helloSent && window.convoLive.socket !== null")
    for _ in range(100):  # until two check-ins arrived (each 0.2 s)
        if len([m for m in received if m.get("type") == "sync"]) >= 2:
            break
        page.wait_for_timeout(100)
    syncs = [m for m in received if m.get("type") == "sync"]
    hellos = [m for m in received if m.get("type") == "hello"]
    assert len(hellos) == 2 and hellos[-1]["last_seq"] == session.last_seq + 1
    assert len(syncs) >= 2
    assert syncs[-1]["last_seq"] == 2 and syncs[-1]["reply"] is None and syncs[-1]["version"]
