"""Assistant replies in a real browser: the built-in responder streams into every open page, its
calculator call shows in the turn timeline, and Stop stores the partial reply."""

import re

import pytest
from playwright.sync_api import expect

from sessions_app import engine, replies
from sessions_app.replies import BUILTIN_LABEL

from .conftest import script
from .test_browser_chat import LIVE, open_chat, send

STREAM = "#reply-stream .streaming"

# Records every text the reply stream shows, so a test can tell that the reply arrived in pieces
# without timing anything.
WATCH_STREAM = """() => {
  window.streamSeen = [];
  const stream = document.getElementById("reply-stream");
  new MutationObserver(() => {
    const text = stream.querySelector(".stream-text");
    if (text && text.textContent.trim()) window.streamSeen.push(text.textContent.trim());
  }).observe(stream, {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def test_a_reply_streams_into_both_pages_with_its_tool_call(context, slow_server, alice, login, make_session, shot):
    """Send "what is 12*7?": both open pages watch the reply stream in, the calculator's call shows
    in the turn timeline, and the stored answer replaces the stream."""
    login(alice)
    make_session("calc", owner=alice, system_prompt="You are a calculator.")
    a, b = context.new_page(), context.new_page()
    a.set_viewport_size({"width": 1366, "height": 860})
    open_chat(a, slow_server, "calc")
    open_chat(b, slow_server, "calc")
    expect(a.locator("#composer .responder")).to_have_text(f"Replies: {BUILTIN_LABEL}")
    for p in (a, b):
        p.evaluate(WATCH_STREAM)

    send(a, "what is 12*7?")
    for p in (a, b):
        answer = p.locator("#message-list > li.role-assistant")
        expect(answer).to_have_count(1)
        expect(answer).to_contain_text("12*7 = 84.")
        expect(p.locator(STREAM)).to_have_count(0)  # the stream area emptied
        expect(p.locator("#message-list > li.role-tool")).to_contain_text("calculator")
        tool_call = p.locator("#turn-1 .turn-tool")
        expect(tool_call).to_contain_text("tool calculator")
        expect(tool_call).to_contain_text("84")
        expect(p.locator("#turn-1")).to_contain_text("complete")
        seen = p.evaluate("window.streamSeen")
        assert "12*7 = 84." in seen and any(t != "12*7 = 84." and "12*7 = 84.".startswith(t) for t in seen), seen
    expect(a.get_by_role("button", name="Regenerate")).to_be_visible()
    expect(a.locator("#message-list > li.msg")).to_have_count(4)  # system, user, tool, assistant: once each
    shot(a, "reply-tool-call-desktop")
    a.emulate_media(color_scheme="dark")
    shot(a, "reply-tool-call-dark")
    a.emulate_media(color_scheme="light")
    turn = engine.last_turn(engine.session_get("calc"))
    assert turn.is_complete and [c.name for c in turn.tool_calls] == ["calculator"]


def test_stop_stores_the_partial_reply(context, slow_server, alice, login, make_session, shot):
    """A page opened mid-reply shows the text so far and Stop; Stop (from the keyboard) ends the reply
    everywhere and stores the partial text with finish reason "stopped"; Regenerate is offered."""
    login(alice)
    make_session("chatty", owner=alice)
    a = context.new_page()
    a.set_viewport_size({"width": 1366, "height": 860})
    open_chat(a, slow_server, "chatty")
    send(a, "tell me about yourself")
    expect(a.locator(STREAM)).to_be_visible()
    expect(a.locator(f"{STREAM} .stream-text")).to_contain_text("I am the built-in")
    expect(a.get_by_role("button", name="Regenerate")).to_be_hidden()
    shot(a, "reply-streaming-desktop")

    # A second page, opened while the reply runs, shows it and follows it; at phone width too.
    b = context.new_page()
    b.set_viewport_size({"width": 390, "height": 844})
    open_chat(b, slow_server, "chatty")
    expect(b.locator(f"{STREAM} .stream-text")).to_contain_text("I am the built-in")
    expect(b.locator("#composer").get_by_role("button", name="Stop")).to_be_visible()  # Send became Stop
    shot(b, "reply-streaming-phone")
    # A second message while it runs is refused inline, and nothing is stored.
    send(b, "are you there?")
    expect(b.locator("#composer .form-error[role=alert]")).to_contain_text("still replying")
    expect(b.locator("#composer textarea[name=content]")).to_have_value("are you there?")

    stop = a.locator("#composer").get_by_role("button", name="Stop")
    stop.focus()
    a.keyboard.press("Enter")
    for p in (a, b):
        expect(p.locator(STREAM)).to_have_count(0)
        answer = p.locator("#message-list > li.role-assistant")
        expect(answer).to_have_count(1)
        expect(answer.locator(".badge")).to_have_text("stopped")
    expect(a.get_by_role("button", name="Regenerate")).to_be_visible()
    shot(a, "reply-stopped-desktop")

    session = engine.session_get("chatty")
    stored = engine.last_turn(session).assistant_response
    assert stored.metadata["finish_reason"] == "stopped"
    assert stored.content.startswith("I am the built-in") and "what time is it" not in stored.content
    assert [m.role for m in engine.messages_all(session)] == ["user", "assistant"]
    assert replies.latest_reply(session).status == "stopped"

    # Regenerate from the keyboard: a new reply streams and completes the turn again.
    a.get_by_role("button", name="Regenerate").focus()
    a.keyboard.press("Enter")
    expect(a.locator(f"{STREAM} .stream-text")).to_contain_text("I am the built-in")
    a.locator("#composer").get_by_role("button", name="Stop").click()
    expect(a.locator("#message-list > li.role-assistant")).to_have_count(2)
    expect(a.locator("#message-list > li.role-assistant").last).to_contain_text("regenerated")
    expect(a.locator(LIVE)).to_be_visible()
    assert re.search(r"turn 1", a.locator("#message-list > li.role-assistant").last.inner_text())


def test_a_failed_reply_is_shown_and_retry_answers_it(page, slow_server, alice, login, make_session, shot):
    """A turn whose reply failed (here: interrupted, as after a server restart) shows the error in the
    chat and in the timeline, with Retry; Retry answers it and the error goes away."""
    login(alice)
    make_session("flaky", owner=alice)
    script(engine.message_append, "flaky", "user", "what is 2+2?")
    error = "The language model server returned HTTP 500: model overloaded"
    script(engine.turn_set_metadata, "flaky", 1, {"reply_error": error, "reply_error_at": "2026-11-27T03:00:00+00:00"})
    page.set_viewport_size({"width": 1366, "height": 860})
    open_chat(page, slow_server, "flaky")
    expect(page.locator("#reply-stream .reply-error")).to_contain_text("could not reply to turn 1")
    expect(page.locator("#reply-stream .reply-error")).to_contain_text("model overloaded")
    expect(page.locator("#turn-1 .turn-error")).to_contain_text("model overloaded")
    retry = page.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    shot(page, "reply-error-desktop")

    retry.click()
    answer = page.locator("#message-list > li.role-assistant")
    expect(answer).to_contain_text("2+2 = 4.")
    expect(page.locator("#reply-stream .reply-error")).to_have_count(0)
    expect(page.locator("#turn-1")).to_contain_text("complete")
    expect(page.locator("#turn-1 .turn-error")).to_have_count(0)
    expect(page.get_by_role("button", name="Regenerate")).to_be_visible()
    assert "reply_error" not in engine.last_turn(engine.session_get("flaky")).metadata
