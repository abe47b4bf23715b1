"""The chat page as people use it daily (issue 12): the app frame, the phone layout, dark mode, message
and code actions, tool chips, local times, live Markdown, scrolling, Send/Stop, the composer, the
keyboard, accessibility (axe-core, offline), error pages, API keys and the reply inspector. Each test
looks at what a user sees in a real browser."""

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from sessions_app import engine, events, replies
from sessions_app.models import ApiKey

from .conftest import render_page, script, wait_until
from .test_browser_chat import LIVE, open_chat, send

STREAM = "#reply-stream .streaming"
BOX = "#composer textarea[name=content]"
TIME_ZONE = "Asia/Kolkata"  # UTC+5:30: its local times differ from UTC in hours and minutes


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "timezone_id": TIME_ZONE, "locale": "en-GB"}


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def clipboard(context, server):
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    return lambda page: page.evaluate("navigator.clipboard.readText()")


def many_messages(session_id, n):
    for i in range(n):
        script(
            engine.message_append,
            session_id,
            "user" if i % 2 == 0 else "assistant",
            f"message number {i}\n\nwith a second paragraph",
        )


# ---------------------------------------------------------------------------------------------
# Layout: the app frame, the phone, dark mode.


def test_only_the_lists_scroll_never_the_page(page, server, alice, login, make_session):
    """A long conversation at 1440×900: the document is exactly the window; the wheel over the header
    or the composer moves nothing; the message list scrolls on its own and starts at the newest."""
    login(alice)
    make_session("long", owner=alice)
    many_messages("long", 60)
    page.set_viewport_size({"width": 1440, "height": 900})
    open_chat(page, server, "long")
    assert page.evaluate("document.documentElement.scrollHeight") <= 900
    scroller = page.locator("#scroller")
    assert scroller.evaluate("el => el.scrollHeight > el.clientHeight")
    assert scroller.evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight < 2")  # at the newest
    for target in ("#session-header", "#composer"):
        page.locator(target).hover()
        page.mouse.wheel(0, 1500)
        assert page.evaluate("window.scrollY") == 0
        expect(page.locator("#session-header")).to_be_in_viewport()
        expect(page.locator("#composer")).to_be_in_viewport()
    scroller.hover()
    page.mouse.wheel(0, -600)
    wait_until(
        page,
        "document.getElementById('scroller').scrollTop > 0 && document.getElementById('scroller').scrollHeight - document.getElementById('scroller').scrollTop - document.getElementById('scroller').clientHeight > 100",
    )
    assert page.evaluate("window.scrollY") == 0


def test_phone_layout(page, server, alice, login, make_session):
    """390×844: nothing is wider than the screen on any page; the conversation list is a drawer, the
    panels a sheet behind "Details"; the header is one line."""
    login(alice)
    make_session("a-conversation-with-a-rather-long-identifier-that-could-overflow", owner=alice)
    script(
        engine.message_append,
        "a-conversation-with-a-rather-long-identifier-that-could-overflow",
        "user",
        "averyveryverylongwordwithoutanyspacesthatwouldpushthelayoutsidewaysifnothingwrappedit " * 2,
    )
    page.set_viewport_size({"width": 390, "height": 844})
    for path in (
        "/",
        "/c/a-conversation-with-a-rather-long-identifier-that-could-overflow/",
        "/settings/api-keys/",
        "/import/",
    ):
        page.goto(server.url + path)
        widths = page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[2] and widths[1] <= widths[2], (path, widths)
        assert page.locator(".topbar").bounding_box()["height"] <= 56, path
    open_chat(page, server, "a-conversation-with-a-rather-long-identifier-that-could-overflow")
    drawer, panels = page.locator("#drawer"), page.locator("#panels")
    expect(drawer).not_to_be_in_viewport()
    expect(panels).not_to_be_in_viewport()
    assert page.locator("#session-header").bounding_box()["height"] < 50  # one line
    page.get_by_role("button", name="Conversations").click()
    expect(page.get_by_role("button", name="Conversations")).to_have_attribute("aria-expanded", "true")
    expect(drawer.locator(".session-item.current")).to_be_in_viewport()
    page.keyboard.press("Escape")
    expect(drawer).not_to_be_in_viewport()
    page.get_by_role("button", name="Details").click()
    expect(page.locator("#timeline")).to_be_in_viewport()
    expect(page.locator("#state-panel h2")).to_be_attached()
    page.get_by_role("button", name="Close").click()
    expect(panels).not_to_be_in_viewport()
    expect(page.get_by_role("button", name="Details")).to_be_focused()


def test_dark_mode_follows_the_system_and_the_toggle_is_remembered(page, server, alice, login, make_session):
    login(alice)
    make_session("themed", owner=alice)
    background = "getComputedStyle(document.body).backgroundColor"
    page.emulate_media(color_scheme="dark")
    open_chat(page, server, "themed")
    assert page.evaluate(background) == "rgb(17, 20, 24)"  # the system's dark
    page.emulate_media(color_scheme="light")
    assert page.evaluate(background) == "rgb(246, 247, 249)"
    toggle = page.locator("#theme-toggle")
    expect(toggle).to_have_attribute("aria-label", re.compile("follows the system"))
    toggle.click()  # light
    toggle.click()  # dark
    expect(toggle).to_have_attribute("aria-label", re.compile("dark"))
    assert page.evaluate(background) == "rgb(17, 20, 24)"
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert page.evaluate(background) == "rgb(17, 20, 24)"  # remembered, although the system is light
    page.goto(server.url + "/settings/api-keys/")
    assert page.evaluate(background) == "rgb(17, 20, 24)"
    page.locator("#theme-toggle").click()  # back to the system's
    expect(page.locator("html")).not_to_have_attribute("data-theme", re.compile("."))
    assert page.evaluate(background) == "rgb(246, 247, 249)"


# ---------------------------------------------------------------------------------------------
# Messages.

CODE = "Try this:\n\n```python\ndef seven(x):\n    return x * 7  # times seven\n```\n\nDone."


def test_copy_a_message_and_a_code_block(page, server, alice, login, make_session, clipboard):
    """Each message has Copy (its Markdown) reachable by keyboard; a code block shows its language, is
    highlighted by the server (Pygments classes, coloured by the stylesheet) and has its own copy."""
    login(alice)
    make_session("copy", owner=alice)
    script(engine.message_append, "copy", "user", "Show me **code**")
    script(engine.message_append, "copy", "assistant", CODE)
    open_chat(page, server, "copy")
    answer = page.locator("#message-list > li.role-assistant")
    block = answer.locator(".code-block")
    expect(block.locator(".code-lang")).to_have_text("python")
    keyword = block.locator("pre span.k").first
    expect(keyword).to_have_text("def")
    light = keyword.evaluate("el => getComputedStyle(el).color")
    page.emulate_media(color_scheme="dark")
    assert keyword.evaluate("el => getComputedStyle(el).color") != light
    page.emulate_media(color_scheme="light")
    block.get_by_role("button", name="Copy python code").click()
    expect(page.locator(".toast")).to_contain_text("Code copied")
    assert clipboard(page) == "def seven(x):\n    return x * 7  # times seven\n"

    # The message's own Copy, from the keyboard: Tab reaches it and it shows while focused.
    copy = answer.get_by_role("button", name=re.compile("^Copy message"))
    page.locator(BOX).focus()
    copy.focus()
    expect(copy).to_be_visible()
    expect(answer.locator(".msg-actions")).to_have_css("opacity", "1")
    page.keyboard.press("Enter")
    expect(page.locator(".toast").last).to_contain_text("as Markdown")
    assert clipboard(page) == CODE
    # Ctrl+Shift+C copies the last answer too.
    page.evaluate("navigator.clipboard.writeText('')")
    page.locator(BOX).focus()
    page.keyboard.press("Control+Shift+C")
    wait_until(page, "navigator.clipboard.readText().then(t => t.length > 0)")
    assert clipboard(page) == CODE


def test_tool_chip_metadata_line_and_local_times(page, server, alice, login, make_session):
    """A tool call is a one-line chip "calculator · 12*7 → 84 ▸" that expands to its arguments and
    result; a message's metadata is one line on a phone; times are in the viewer's time zone."""
    login(alice)
    make_session("tools", owner=alice)
    page.set_viewport_size({"width": 390, "height": 844})
    open_chat(page, server, "tools")
    send(page, "what is 12*7?")
    chip = page.locator("#message-list > li.role-tool .tool-chip")
    expect(chip.locator("summary")).to_have_text(re.compile(r"^calculator · 12\*7 → 84$"))
    expect(chip.locator(".chip-body")).to_be_hidden()
    chip.locator("summary").click()
    expect(chip.locator(".chip-body")).to_contain_text('"expression": "12*7"')
    expect(chip.locator(".chip-body")).to_contain_text("84")
    for meta in page.locator("#message-list > li > .msg-meta").all():
        if meta.is_visible():
            assert meta.bounding_box()["height"] < 24  # one line
    user = engine.messages_by_role(engine.session_get("tools", owner=alice), "user")[0]
    local = user.created_at.astimezone(ZoneInfo(TIME_ZONE)).strftime("%H:%M")
    utc = user.created_at.astimezone(dt.UTC).strftime("%H:%M")
    assert local != utc
    expect(page.locator("#message-list > li.role-user time")).to_have_text(local)


def test_a_failed_reply_shows_its_reason_next_to_retry(page, server, alice, login, make_session):
    """A failed reply's reason is in the chat, next to Retry, also when no error notice is in the stream."""
    login(alice)
    make_session("fails", owner=alice)
    script(engine.message_append, "fails", "user", "hello?")
    script(engine.turn_set_metadata, "fails", 1, {"reply_error": "The provider said: quota exceeded"})
    open_chat(page, server, "fails")
    # The socket's answer to the page's hello brings the failed reply's area again: only after it is
    # in does removing the notice stand for "a later update without one".
    for _ in range(200):  # (not wait_for_function: the page's CSP refuses its eval)
        if page.evaluate("() => Boolean(window.convoLive && window.convoLive.received)"):
            break
        page.wait_for_timeout(50)
    else:
        raise AssertionError("the socket never answered the page's hello")
    expect(page.locator("#reply-stream .reply-error")).to_contain_text("quota exceeded")
    page.evaluate("document.querySelector('#reply-stream .reply-error').remove()")  # as after a later update
    actions = page.locator("#reply-actions")
    expect(actions.get_by_role("button", name="Retry")).to_be_visible()
    expect(actions.locator(".failed-reason")).to_be_visible()
    expect(actions.locator(".failed-reason")).to_contain_text(
        "could not reply to turn 1: The provider said: quota exceeded"
    )


@pytest.mark.redis
def test_a_failure_pushed_live_shows_its_reason(page, server, alice, login, make_session):
    """The first failure, pushed while the page is open, shows its reason at once (once)."""
    login(alice)
    session = make_session("fails-live", owner=alice)
    open_chat(page, server, "fails-live")
    script(engine.message_append, "fails-live", "user", "hello?")
    script(engine.turn_set_metadata, "fails-live", 1, {"reply_error": "The provider said: quota exceeded"})
    actions = page.locator("#reply-actions")
    expect(actions.locator(".failed-reason")).to_contain_text("quota exceeded")
    script(
        events.emit,
        session.pk,
        events.REPLY,
        state="error",
        text="",
        error="The provider said: quota exceeded",
        reply=1,
        turn=1,
    )
    expect(page.locator("#reply-stream .reply-error")).to_contain_text("quota exceeded")
    expect(actions.locator(".failed-reason")).to_be_hidden()  # shown once: in the error notice


def test_the_streamed_reply_grows_in_place_in_the_list(page, slow_server, alice, login, make_session):
    """The reply being written is part of the scrolling list (no box of its own with a scrollbar), grows
    in the same element, and the stored answer takes its place."""
    login(alice)
    make_session("in-place", owner=alice)
    page.set_viewport_size({"width": 1280, "height": 720})
    open_chat(page, slow_server, "in-place")
    send(page, "tell me about yourself")
    stream = page.locator(STREAM)
    expect(stream.locator(".stream-text")).to_contain_text("I am the built-in")
    assert page.evaluate(
        "document.getElementById('scroller').contains(document.querySelector('#reply-stream .streaming'))"
    )
    handle = stream.element_handle()
    expect(stream.locator(".stream-text")).to_contain_text("do not really understand", timeout=15000)
    assert handle.evaluate("el => el.isConnected")  # the same element grew
    assert stream.locator(".msg-body").evaluate("el => getComputedStyle(el).overflowY") == "visible"
    expect(page.locator("#message-list > li.role-assistant")).to_contain_text("what time is it", timeout=30000)
    expect(stream).to_have_count(0)


@pytest.mark.redis
def test_markdown_renders_while_it_streams_in_place(page, server, alice, login, make_session):
    """Headings, tables and fences are formatted as the reply arrives, in the list (no inner scrollbar),
    and the stored message takes its place."""
    login(alice)
    session = make_session("live-md", owner=alice)
    open_chat(page, server, "live-md")
    script(engine.message_append, "live-md", "user", "a table please")
    expect(page.locator("#turn-1")).to_be_visible()  # the message's own update came first
    parts = ["## Results\n\n| x | y |\n|---|---|\n| 1 | 2 |", "\n| 3 | 4 |\n\n```python\nprint('hi')"]
    text = parts[0]
    script(events.emit, session.pk, events.REPLY, state="started", text="", reply=4242, turn=1)  # as a reply does
    script(events.emit, session.pk, events.REPLY, state="delta", text=text, reply=4242, turn=1)
    stream = page.locator(STREAM)
    expect(stream.locator("h2")).to_have_text("Results")
    expect(stream.locator("table tr")).to_have_count(2)
    # The streamed reply sits after the list's last message, in the same scrolling box.
    assert page.evaluate(
        "document.getElementById('scroller').contains(document.querySelector('#reply-stream .streaming'))"
    )
    handle = stream.element_handle()
    text += parts[1]
    script(events.emit, session.pk, events.REPLY, state="delta", text=text, reply=4242, turn=1)
    expect(stream.locator("table tr")).to_have_count(3)
    expect(stream.locator(".code-block .code-lang")).to_have_text("python")  # an unclosed fence
    assert handle.evaluate("el => el.isConnected")  # grew in place
    body = stream.locator(".msg-body")
    assert body.evaluate("el => el.scrollHeight <= el.clientHeight + 1")  # no box with its own scrollbar
    assert page.locator(f"{STREAM} pre").evaluate("el => !el.textContent.includes('```')")


def test_reply_inspector_shows_exactly_what_the_model_saw(page, server, alice, login, make_session):
    login(alice)
    make_session("inspect", owner=alice, system_prompt="You are terse.", max_tokens=500)
    open_chat(page, server, "inspect")
    send(page, "what is 12*7?")
    answer = page.locator("#message-list > li.role-assistant")
    expect(answer).to_contain_text("12*7 = 84.")
    session = engine.session_get("inspect", owner=alice)
    reply = replies.latest_reply(session)
    assert reply.sent_seqs == [1, 2]  # the system prompt and the question, stored when the reply started
    assert reply.usage["budget"] == 500 and reply.usage["tool_rounds"] == 1
    assert reply.usage["round_seqs"] == [[1, 2, 3]] and reply.first_token_at is not None
    # Later changes do not alter what the inspector shows for this answer.
    script(engine.message_append, "inspect", "user", "a later message", metadata={})
    # The pointer comes from elsewhere and lands straight on the button, which hangs into the gap
    # below the message: the bar takes pointer events even before it shows, so the click lands.
    page.mouse.move(1, 1)
    answer.get_by_role("button", name=re.compile("What the model saw")).click(timeout=5000)
    dialog = page.locator("#inspector")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".inspector-list > li")).to_have_count(2)
    expect(dialog.locator(".inspector-list > li").first).to_contain_text("You are terse.")
    expect(dialog.locator(".inspector-list > li").nth(1)).to_contain_text("what is 12*7?")
    expect(dialog).to_contain_text("500 tokens")
    expect(dialog).to_contain_text("then 1 tool round")
    expect(dialog.locator("dd", has_text="after")).to_contain_text(re.compile(r"after \d+ ms"))
    expect(dialog).not_to_contain_text("a later message")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


# ---------------------------------------------------------------------------------------------
# Sending and scrolling.


def test_scroll_follows_you_but_never_yanks(page, slow_server, alice, login, make_session):
    """Sending scrolls to your message; reading older messages while the reply streams shows "↓ N new"
    instead of moving, and the button survives the reply finishing."""
    login(alice)
    make_session("scrolly", owner=alice)
    many_messages("scrolly", 40)
    page.set_viewport_size({"width": 1280, "height": 720})
    open_chat(page, slow_server, "scrolly")
    scroller = page.locator("#scroller")
    scroller.evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
    send(page, "tell me about yourself")
    mine = page.locator("#message-list > li.role-user").last
    expect(mine).to_contain_text("tell me about yourself")
    expect(mine).to_be_in_viewport()  # sending took you to your message
    expect(page.locator(f"{STREAM} .stream-text")).to_contain_text("I am the built-in")
    scroller.evaluate("el => { el.scrollTop = 0; }")  # back to older messages
    wait_until(page, "document.getElementById('new-below') && !document.getElementById('new-below').hidden")
    top = scroller.evaluate("el => el.scrollTop")
    button = page.locator("#new-below")
    expect(button).to_be_visible()
    expect(button).to_contain_text("New reply")
    expect(page.locator("#message-list > li.role-assistant").last).to_contain_text(
        "what time is it", timeout=30000
    )  # reply stored
    expect(button).to_contain_text("1 new")
    assert abs(scroller.evaluate("el => el.scrollTop") - top) < 2  # not yanked down
    button.click()
    expect(button).to_be_hidden()
    expect(page.locator("#message-list > li.role-assistant").last).to_be_in_viewport()


def test_send_becomes_stop_esc_stops_and_focus_returns(page, slow_server, alice, login, make_session):
    login(alice)
    make_session("stoppy", owner=alice)
    open_chat(page, slow_server, "stoppy")
    box = page.locator(BOX)
    send(page, "tell me about yourself")
    expect(page.locator(f"{STREAM} .stream-text")).to_contain_text("I am the built-in")
    stop = page.locator("#composer").get_by_role("button", name="Stop")
    expect(stop).to_be_visible()
    expect(page.locator("#composer").get_by_role("button", name="Send")).to_be_hidden()
    expect(box).to_be_focused()  # after Send
    page.keyboard.press("Escape")  # Esc stops
    expect(page.locator(STREAM)).to_have_count(0)
    expect(page.locator("#message-list > li.role-assistant .badge")).to_have_text("stopped")
    expect(page.locator("#composer").get_by_role("button", name="Send")).to_be_visible()
    expect(box).to_be_focused()
    # Regenerate, then Stop with the button: the keyboard is back in the message box each time.
    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator(f"{STREAM} .stream-text")).to_contain_text("I am the built-in")
    expect(stop).to_be_visible()
    expect(box).to_be_focused()
    stop.click()
    expect(page.locator(STREAM)).to_have_count(0)
    expect(box).to_be_focused()


def test_retry_returns_focus_and_notices_clear_themselves(context, slow_server, alice, login, make_session):
    login(alice)
    make_session("notices", owner=alice)
    script(engine.message_append, "notices", "user", "what is 2+2?")
    script(engine.turn_set_metadata, "notices", 1, {"reply_error": "model overloaded"})
    a, b = context.new_page(), context.new_page()
    open_chat(a, slow_server, "notices")
    open_chat(b, slow_server, "notices")
    a.get_by_role("button", name="Retry").click()
    expect(a.locator(BOX)).to_be_focused()
    expect(b.locator(STREAM)).to_be_visible()
    send(b, "are you there?")
    notice = b.locator("#composer .notice")
    expect(notice).to_contain_text("still replying")
    expect(b.locator("#message-list > li.role-assistant")).to_contain_text("2+2 = 4.")
    expect(notice).to_have_count(0, timeout=30000)  # gone once the reply ended
    expect(b.locator(BOX)).to_have_value("are you there?")  # the draft is kept


def test_sending_while_disconnected_keeps_a_marked_draft(page, server2, alice, login, make_session):
    login(alice)
    make_session("offline", owner=alice)
    open_chat(page, server2, "offline")
    server2.stop()
    expect(page.locator("#live-status")).to_have_attribute("data-state", re.compile("disconnected|reconnecting"))
    send(page, "sent while offline")
    status = page.locator("#composer .draft-status")
    expect(status).to_be_visible()
    expect(status).to_contain_text("Not sent")
    expect(page.locator(BOX)).to_have_value("sent while offline")
    assert engine.session_get("offline", owner=alice).message_count == 0
    server2.start()
    expect(page.locator(LIVE)).to_be_visible(timeout=30000)
    expect(status).to_contain_text("send it now?")
    assert engine.session_get("offline", owner=alice).message_count == 0  # not without the user's word
    status.get_by_role("button", name="Retry").click()
    expect(page.locator("#message-list > li.role-user")).to_contain_text("sent while offline")
    expect(status).to_be_hidden()


def test_composer_grows_refuses_long_pastes_and_returns_to_user(page, server, alice, login, make_session, clipboard):
    login(alice)
    make_session("composer", owner=alice)
    open_chat(page, server, "composer")
    box = page.locator(BOX)
    expect(page.locator("#composer select[name=role]")).to_be_hidden()  # behind "Advanced"
    before = box.bounding_box()["height"]
    box.fill("one\ntwo\nthree\nfour\nfive")
    assert box.bounding_box()["height"] > before + 30
    box.fill("")
    limit = 32000
    page.evaluate(f"navigator.clipboard.writeText('x'.repeat({limit + 1}))")
    box.focus()
    page.keyboard.press("Control+V")
    refused = page.locator("#composer .paste-refused")
    expect(refused).to_be_visible()
    expect(refused).to_contain_text("32,001 characters")
    expect(box).to_have_value("")  # nothing cut and kept
    page.evaluate(f"navigator.clipboard.writeText('x'.repeat({limit}))")
    page.keyboard.press("Control+V")
    expect(box).to_have_value("x" * limit)
    box.fill("")
    send(page, "posted as the assistant", role="assistant")
    expect(page.locator("#message-list > li.role-assistant")).to_contain_text("posted as the assistant")
    expect(page.locator("#composer select[name=role]")).to_have_value("user")


# ---------------------------------------------------------------------------------------------
# Keyboard and accessibility.


def test_shortcuts_and_the_help_dialog(page, server, alice, login, make_session):
    login(alice)
    make_session("keys", owner=alice)
    open_chat(page, server, "keys")
    page.locator("body").click(position={"x": 5, "y": 300})
    page.keyboard.press("?")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(dialog).to_be_visible()
    for text in ("New chat", "Focus the message box", "Stop the reply", "Copy the last answer", "Search"):
        expect(dialog).to_contain_text(text)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.locator("body").click(position={"x": 5, "y": 300})
    page.keyboard.press("/")
    expect(page.locator(BOX)).to_be_focused()
    page.keyboard.press("Control+Shift+O")
    expect(page.locator("#new-session details")).to_have_attribute("open", "")
    expect(page.locator("#new-session input:not([type=hidden])").first).to_be_focused()
    page.keyboard.press("Shift+Escape")
    expect(page.locator(BOX)).to_be_focused()
    page.keyboard.press("Control+K")
    search = page.locator("#drawer input[type=search]")
    if search.count():
        expect(search.first).to_be_focused()
    else:
        expect(page.locator(".toast").last).to_contain_text("Search")


def test_skip_link_skips_the_sidebar(page, server, alice, login, make_session):
    login(alice)
    make_session("skip", owner=alice)
    page.set_viewport_size({"width": 800, "height": 800})  # narrower than 900 px: no autofocus on the composer
    open_chat(page, server, "skip")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to the conversation")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.closest('#chat-main') !== null")
    assert focused, page.evaluate("document.activeElement.outerHTML")


AXE_PAGES = ["/", "/c/axe/", "/settings/api-keys/", "/import/"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_violations(page, server, alice, login, make_session, scheme, transactional_db):
    """axe-core (bundled with axe-playwright-python: no network) on every page, light and dark, with the
    dialogs open too."""
    login(alice)
    make_session("axe", owner=alice, system_prompt="Be brief.")
    script(engine.message_append, "axe", "user", "Show **code** and a table")
    script(
        engine.message_append,
        "axe",
        "tool",
        '{"result": 84}',
        tool_call_id="call_1",
        name="calculator",
        metadata={"arguments": '{"expression": "12*7"}'},
    )
    script(engine.message_append, "axe", "assistant", CODE + "\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    axe = Axe()
    page.emulate_media(color_scheme=scheme)
    found = {}
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 800})
        for path in AXE_PAGES:
            page.goto(server.url + path)
            if path == "/c/axe/":
                expect(page.locator(LIVE)).to_be_visible()
                expect(page.locator("#context-panel .context-total")).to_be_attached()
            result = axe.run(page)
            if result.violations_count:
                found[f"{path}@{width}"] = result.generate_report()
    page.goto(server.url + "/c/axe/")
    page.keyboard.press("?")
    result = axe.run(page)
    if result.violations_count:
        found["shortcuts dialog"] = result.generate_report()
    for template in ("403.html", "404.html", "500.html"):
        render_page(page, server, template)
        result = axe.run(page)
        if result.violations_count:
            found[template] = result.generate_report()
    page.context.clear_cookies()
    for path in ("/", "/accounts/login/", "/accounts/signup/"):
        page.goto(server.url + path)
        result = axe.run(page)
        if result.violations_count:
            found[path + " (signed out)"] = result.generate_report()
    assert found == {}, "\n".join(f"{k}:\n{v}" for k, v in found.items())


# ---------------------------------------------------------------------------------------------
# The rest of the app.


@pytest.mark.parametrize("status", [403, 404, 500])
def test_error_pages_in_the_frame_and_a_favicon(page, server, status, transactional_db):
    """The friendly error pages (the test servers run with DEBUG, which shows Django's own: the page is
    rendered here as production serves it, and shown on the server's origin with its stylesheets)."""
    page.set_viewport_size({"width": 390, "height": 844})
    render_page(page, server, f"{status}.html")
    expect(page.locator(".topbar .brand")).to_be_visible()
    expect(page.locator(".error-code")).to_have_text(str(status))
    expect(page.get_by_role("link", name="Back to your conversations")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert (
        page.locator("body").evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(246, 247, 249)"
    )  # app.css
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(server.url + icon).status == 200


def test_api_keys_copy_confirm_and_no_duplicate_on_reload(page, server, alice, login, clipboard):
    login(alice)
    page.goto(server.url + "/settings/api-keys/")
    page.get_by_label("Name").fill("my-bot")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret").input_value()
    assert secret
    expect(page.locator("#theme-toggle")).to_have_attribute("aria-label", re.compile("click to change"))  # scripts ran
    page.get_by_role("button", name="Copy key").click()
    expect(page.locator(".toast")).to_contain_text("Key copied")
    assert clipboard(page) == secret
    page.reload()
    expect(page.locator("#new-key-secret")).to_have_count(0)  # shown once
    assert ApiKey.objects.filter(user=alice).count() == 1  # the reload created nothing
    revoke = page.get_by_role("button", name="Yes, revoke it")
    expect(revoke).to_be_hidden()
    page.locator(".revoke-confirm summary").click()
    revoke.click()
    expect(page.locator(".api-key-list")).to_contain_text("revoked")
    assert ApiKey.objects.get(user=alice).revoked_at is not None


def test_deleted_in_another_tab_closes_the_view(context, page, server, alice, login, make_session):
    login(alice)
    make_session("doomed", owner=alice)
    open_chat(page, server, "doomed")
    other = context.new_page()
    open_chat(other, server, "doomed")
    other.get_by_text("Delete conversation…").click()
    other.get_by_role("button", name="Yes, delete it permanently").click()
    expect(page).to_have_url(re.compile(r"/\?gone=doomed$"))
    expect(page.get_by_role("alert")).to_contain_text("“doomed” was deleted")


def test_timeline_follows_the_newest_turn_and_links_to_its_messages(page, server, alice, login, make_session):
    login(alice)
    make_session("turns", owner=alice)
    many_messages("turns", 30)
    page.set_viewport_size({"width": 1440, "height": 900})
    open_chat(page, server, "turns")
    turns = page.locator("#turn-list")
    assert turns.evaluate("el => el.scrollHeight > el.clientHeight")
    expect(page.locator("#turn-15")).to_be_in_viewport()  # the newest turn is in view
    send(page, "one more")
    expect(page.locator("#turn-16")).to_contain_text("complete")
    expect(page.locator("#turn-16")).to_be_in_viewport()
    page.locator("#turn-12 .turn-link").click()
    target = page.locator("#msg-23")  # turn 12's user message
    expect(target).to_be_in_viewport()
    expect(target).to_be_focused()
