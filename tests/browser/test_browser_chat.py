"""The chat UI in a real browser (chromium), served by daphne with live websockets."""

import re

import pytest
from django.conf import settings
from playwright.sync_api import expect

from sessions_app import engine

from .conftest import script

LIVE = "#live-status[data-state=live]"


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def open_chat(page, server, session_id):
    page.goto(f"{server.url}/c/{session_id}/")
    expect(page.locator(LIVE)).to_be_visible()


def send(page, text, role="user"):
    """Write and send a message; another role than User is behind the composer's "Advanced" toggle."""
    if role != "user":
        advanced = page.locator("#composer details.composer-advanced")
        if advanced.get_attribute("open") is None:
            advanced.locator("summary").click()
        page.select_option("#composer select[name=role]", role)
    box = page.locator("#composer textarea[name=content]")
    box.fill(text)
    box.press("Enter")


def test_sign_up_create_send_and_see(page, server, transactional_db, shot):
    """A newcomer signs up, creates a conversation with the defaults and chats."""
    page.goto(server.url + "/")
    shot(page, "welcome")
    page.get_by_role("link", name="Sign up").first.click()
    page.fill("input[name=username]", "newcomer")
    page.fill("input[name=password1]", "a-Long-passphrase-9")
    page.fill("input[name=password2]", "a-Long-passphrase-9")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()
    page.locator("#new-session summary", has_text="Settings").click()  # the engine settings, behind it
    expect(page.get_by_role("button", name="Create")).to_be_visible()
    page.fill("input[name=max_messages]", "0")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#new-session .field-error")).to_contain_text("greater than or equal to 1")
    shot(page, "home-new-conversation-error")
    page.fill("input[name=max_messages]", "100")
    page.fill("input[name=session_id]", "first:chat.1")
    page.get_by_role("button", name="Create").click()
    expect(page).to_have_url(re.compile(r"/c/first:chat.1/$"))
    expect(page.locator(LIVE)).to_be_visible()

    box = page.locator("#composer textarea[name=content]")
    box.fill("Hello **Convo**")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    assert box.input_value() == "Hello **Convo**\nsecond line"
    box.press("Enter")
    message = page.locator("#message-list > li.role-user")
    expect(message).to_have_count(1)
    expect(message.locator("strong")).to_have_text("Convo")
    expect(box).to_have_value("")
    # The built-in responder answers and completes the turn.
    expect(page.locator("#message-list > li.role-assistant")).to_contain_text("built-in responder")
    expect(page.locator("#turn-1")).to_contain_text("complete")
    # Empty content is refused inline and stores nothing.
    box.press("Enter")
    expect(page.locator("#composer .field-error")).to_contain_text("empty")
    assert engine.session_get("first:chat.1").message_count == 2


def test_composer_and_panels_screenshots(page, server, alice, login, shot, make_session):
    """A realistic conversation at desktop and phone widths (screenshots go to test-artifacts/)."""
    login(alice)
    make_session("tour", owner=alice, system_prompt="You are a concise assistant.", max_tokens=40)
    script(engine.message_append, "tour", "user", "What is **12 × 7**? Show a table of `x * 7`.")
    script(engine.message_append, "tour", "tool", '{"result": 84}', tool_call_id="call_calc_1", name="calculator")
    script(
        engine.message_append,
        "tour",
        "assistant",
        "It is **84**.\n\n| x | x × 7 |\n|---|---|\n| 11 | 77 |\n| 12 | 84 |\n\n- short\n- list",
    )
    script(engine.message_append, "tour", "user", "Remember that my city is Lyon.")
    script(engine.state_set, "tour", "city", "Lyon")
    script(engine.state_set_data, "tour", "prefs", {"units": "metric", "langs": ["fr", "en"]})
    page.set_viewport_size({"width": 1366, "height": 860})
    open_chat(page, server, "tour")
    expect(page.locator("#message-list > li.msg")).to_have_count(5)
    expect(page.locator("#message-list > li.role-tool")).to_contain_text("call_calc_1")
    expect(page.locator("#context-panel")).to_contain_text("cut before")
    shot(page, "chat-desktop")
    page.emulate_media(color_scheme="dark")
    shot(page, "chat-desktop-dark")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(page.locator(LIVE)).to_be_visible()
    shot(page, "chat-phone")
    page.locator("#panels").scroll_into_view_if_needed()
    shot(page, "chat-phone-panels")


def test_two_pages_see_each_others_changes(context, server, alice, login, make_session):
    """A message, a turn and a state change made in one page appear in the other without reload."""
    login(alice)
    make_session("pair", owner=alice)
    a, b = context.new_page(), context.new_page()
    open_chat(a, server, "pair")
    open_chat(b, server, "pair")

    send(a, "ping from A")
    expect(b.locator("#message-list > li.role-user")).to_have_text(re.compile("ping from A"))
    # The reply streams into both pages and completes the turn there.
    expect(b.locator("#message-list > li.role-assistant")).to_contain_text("For turn 1 I received")
    expect(b.locator("#turn-1")).to_contain_text("complete")
    send(a, "pong, by hand", role="assistant")  # an operator's message starts no reply
    expect(b.locator("#message-list > li.msg")).to_have_count(3)
    # The panels follow the messages (within half a second): let them land before typing in one.
    expect(a.locator("#session-header [data-stat=messages]")).to_have_text("3 in the list")

    a.fill("#state-panel input[name=key][placeholder=key]", "mood")
    a.fill("#state-panel input[name=value][placeholder=value]", "cheerful")
    a.get_by_role("button", name="Add", exact=True).click()
    expect(b.locator("#state-panel tr[data-var=mood] input[name=value]")).to_have_value("cheerful")

    # Invalid JSON: inline error on A, nothing stored, B unchanged.
    a.fill("#state-panel .add-data input[name=key]", "cfg")
    a.fill("#state-panel .add-data textarea[name=value]", "{oops")
    a.get_by_role("button", name="Add data").click()
    expect(a.locator("#state-panel .field-error")).to_contain_text("Not valid JSON")
    assert "cfg" not in engine.session_get("pair").data
    # Each page shows each message once.
    expect(a.locator("#message-list > li.msg")).to_have_count(3)


def test_load_earlier_keeps_order(page, server, alice, login, make_session):
    """The page shows the newest 50; "Load earlier" prepends older pages in order, each once."""
    login(alice)
    make_session("long", owner=alice, max_messages=500)
    for i in range(1, 121):
        script(engine.message_append, "long", "user" if i % 2 else "assistant", f"message number {i}")
    open_chat(page, server, "long")
    items = page.locator("#message-list > li.msg")
    expect(items).to_have_count(50)
    page.get_by_role("link", name="Load earlier messages").click()
    expect(items).to_have_count(100)
    page.get_by_role("link", name="Load earlier messages").click()
    expect(items).to_have_count(120)
    expect(page.get_by_role("link", name="Load earlier messages")).to_have_count(0)
    seqs = items.evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    assert seqs == list(range(1, 121))
    send(page, "and one more")
    expect(items).to_have_count(122)  # the message and its reply
    seqs = items.evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    assert seqs == list(range(1, 123))


def test_clear_and_delete_with_confirmation_reach_the_other_page(context, server, alice, login, make_session):
    login(alice)
    make_session("doomed", owner=alice, system_prompt="Stay pinned.")
    a, b = context.new_page(), context.new_page()
    open_chat(a, server, "doomed")
    open_chat(b, server, "doomed")
    send(a, "soon gone")
    expect(b.locator("#message-list > li.msg")).to_have_count(3)  # the prompt, the message, its reply

    a.get_by_text("Clear messages…").click()
    a.get_by_role("button", name="Yes, clear the messages").click()
    expect(b.locator("#message-list > li.msg")).to_have_count(1)  # the pinned system prompt stays
    expect(b.locator("#timeline")).to_contain_text("No turns yet")

    a.get_by_text("Delete conversation…").click()
    a.get_by_role("button", name="Yes, delete it permanently").click()
    expect(a).to_have_url(re.compile(r"/$"))
    expect(b).to_have_url(re.compile(r"/\?gone=doomed$"))  # the other page goes home, with a notice
    expect(b.get_by_role("alert")).to_contain_text("“doomed” was deleted")
    assert engine.session_list_for_user(alice) == []


def test_xss_payload_stays_inert(page, server, alice, login, make_session):
    login(alice)
    make_session("xss", owner=alice)
    open_chat(page, server, "xss")
    payloads = [
        "<script>window.pwned = 1</script>",
        '<img src=x onerror="window.pwned = 2">',
        "[click me](javascript:window.pwned=3)",
        '<a href="javascript:window.pwned=4">raw link</a>',
    ]
    count = 0
    for n, payload in enumerate(payloads, start=1):
        send(page, payload, role="assistant" if n % 2 else "user")
        count += 1 if n % 2 else 2  # a user message gets a reply (wait for it: one reply at a time)
        expect(page.locator("#message-list > li.msg")).to_have_count(count)
    send(page, '<svg onload="window.pwned=5"></svg> **bold**', role="assistant")
    expect(page.locator("#message-list > li.msg")).to_have_count(count + 1)
    for link in page.locator("#message-list a").all():
        link.click()
    assert page.evaluate("window.pwned") is None
    assert page.locator("#message-list script, #message-list img, #message-list svg").count() == 0
    expect(page.locator("#message-list")).to_contain_text("<script>window.pwned = 1</script>")


def test_reconnect_after_a_server_restart_catches_up_exactly_once(context, server, server2, alice, login, make_session):
    """Page A loses its server; page B posts meanwhile; A reconnects and shows the message once."""
    login(alice)
    make_session("blip", owner=alice)
    a, b = context.new_page(), context.new_page()
    open_chat(a, server2, "blip")
    open_chat(b, server, "blip")
    send(a, "before the blip")
    expect(a.locator("#message-list > li.msg")).to_have_count(2)  # and its reply, before the server goes

    server2.stop()
    expect(a.locator("#live-status")).to_have_attribute("data-state", re.compile("disconnected|reconnecting"))
    expect(a.locator("#live-status")).to_contain_text("connect")
    send(b, "sent while A was away")
    expect(b.locator("#message-list > li.msg")).to_have_count(4)
    server2.start()

    expect(a.locator(LIVE)).to_be_visible(timeout=20_000)
    expect(a.locator("#message-list > li.msg")).to_have_count(4)
    expect(a.locator("#message-list > li.msg", has_text="sent while A was away")).to_have_count(1)
    send(b, "after the blip")
    expect(b.locator("#message-list > li.msg")).to_have_count(6)
    if settings.CHANNEL_LAYERS["default"]["BACKEND"].endswith("InMemoryChannelLayer"):
        # Two processes without Redis do not share pushes: A learns of it at its next catch-up.
        send(a, "from A again", role="assistant")
    expect(a.locator("#message-list > li.msg", has_text="after the blip")).to_have_count(1)
    seqs = [int(s) for s in a.locator("#message-list > li.msg").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert seqs == sorted(set(seqs))


@pytest.mark.redis
def test_changes_cross_processes_over_redis(context, server, server2, alice, login, make_session):
    """With Redis, a page served by one daphne process receives changes made through another."""
    login(alice)
    make_session("across", owner=alice)
    a, b = context.new_page(), context.new_page()
    open_chat(a, server, "across")
    open_chat(b, server2, "across")
    send(b, "from process two")
    expect(a.locator("#message-list > li.msg", has_text="from process two")).to_have_count(1)
    expect(a.locator("#turn-1")).to_be_visible()
    # The reply runs in process two; its stored answer reaches the page of process one.
    expect(a.locator("#message-list > li.role-assistant")).to_contain_text("For turn 1 I received")
    b.fill("#state-panel input[name=key][placeholder=key]", "where")
    b.fill("#state-panel input[name=value][placeholder=value]", "elsewhere")
    b.get_by_role("button", name="Add", exact=True).click()
    expect(a.locator("#state-panel tr[data-var=where]")).to_be_visible()
    # A change from a script (this test process) reaches both pages too.
    script(engine.message_append, "across", "assistant", "from a script")
    expect(a.locator("#turn-1")).to_contain_text("complete")
    expect(b.locator("#message-list > li.msg", has_text="from a script")).to_have_count(1)
