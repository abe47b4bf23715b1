"""The library in a real browser (issue 11): the whole history with its divider, an expired
conversation that stays readable, rename / pin / archive, and the sidebar live across two tabs."""

import datetime as dt
import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from sessions_app import engine, rendering

from .conftest import script

LIVE = "#live-status[data-state=live]"
MESSAGES = "#message-list > li.msg"


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def open_chat(page, server, session_id):
    page.goto(f"{server.url}/c/{session_id}/")
    expect(page.locator(LIVE)).to_be_visible()


def entry(page, session_id):
    return page.locator(f'#sidebar-sections li[data-session-id="{session_id}"]')


def fill_history(session_id, count):
    for i in range(1, count + 1):
        engine.message_append(session_id, "user" if i % 2 else "assistant", f"message number {i}")


def test_a_320_message_conversation_shows_all_of_it_with_the_divider(page, server, alice, login, make_session):
    login(alice)
    make_session("long", owner=alice, max_messages=100, max_tokens=100000)
    script(fill_history, "long", 320)
    open_chat(page, server, "long")
    items = page.locator(MESSAGES)
    expect(items).to_have_count(50)
    expect(page.locator("#session-header [data-stat=history]")).to_have_text("320 messages in history")
    expect(page.locator("#session-header [data-stat=messages]")).to_have_text("100 in the list")
    divider = page.locator("#list-divider")
    expect(divider).to_be_hidden()  # its place (before #221) is not on the page yet
    load = page.get_by_role("link", name="Load earlier messages")
    for shown in (100, 150, 200, 250, 300, 320):
        load.click()
        expect(items).to_have_count(shown)
    expect(load).to_have_count(0)
    seqs = items.evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    assert seqs == list(range(1, 321))
    expect(divider).to_be_visible()
    expect(divider).to_have_text(
        "above: kept in history, no longer in the session's list of 100 — not sent to the model"
    )
    after = divider.evaluate("d => d.nextElementSibling.id")
    before = divider.evaluate("d => d.previousElementSibling.id")
    assert (before, after) == ("msg-220", "msg-221")

    # A new message and its reply push the two oldest listed messages out: the divider follows.
    box = page.locator("#composer textarea[name=content]")
    box.fill("one more")
    box.press("Enter")
    expect(items).to_have_count(322)
    expect(page.locator("#list-bounds")).to_have_attribute("data-low-seq", "223")
    page.wait_for_function("document.getElementById('list-divider').nextElementSibling.id === 'msg-223'")
    expect(page.locator("#session-header [data-stat=history]")).to_have_text("322 messages in history")


def test_an_idle_conversation_past_its_timeout_stays_readable(page, server, alice, login, make_session):
    login(alice)
    then = timezone.now() - dt.timedelta(hours=2)
    engine.session_create("idle", owner=alice, config=engine.SessionConfig(timeout_seconds=3600), now=then)
    engine.message_append("idle", "user", "What did we say?", now=then)
    engine.message_append("idle", "assistant", "All of it is still here.", now=then)
    open_chat(page, server, "idle")
    expect(page.get_by_role("alert")).to_contain_text("This conversation has expired")
    expect(page.locator(MESSAGES)).to_have_count(2)
    expect(page.locator(MESSAGES).last).to_contain_text("All of it is still here.")
    expect(page.get_by_role("button", name="Start fresh")).to_be_visible()
    has_continue = rendering.continue_url(engine.session_get("idle")) is not None
    expect(page.get_by_role("button", name="Continue", exact=True)).to_have_count(1 if has_continue else 0)
    assert page.title() == "What did we say? · Convo"


def test_rename_pin_and_archive(page, server, alice, login, make_session, shot):
    login(alice)
    for sid in ("first", "second", "third"):
        make_session(sid, owner=alice)
        script(engine.message_append, sid, "user", f"About the {sid} thing")
    open_chat(page, server, "first")
    assert page.title() == "About the first thing · Convo"
    expect(entry(page, "first")).to_have_class(re.compile(r"\bcurrent\b"))

    # Rename in the header: the header, the tab and the sidebar follow.
    page.locator("#session-title summary").click()
    page.fill("#title-input", "Renamed in the header")
    page.locator("#session-title").get_by_role("button", name="Save").click()
    expect(page.locator("#session-title h1")).to_have_text("Renamed in the header")
    expect(page).to_have_title("Renamed in the header · Convo")
    expect(entry(page, "first").locator(".session-title")).to_have_text("Renamed in the header")

    # Rename another from the sidebar.
    entry(page, "second").locator(".session-actions > summary").click()
    entry(page, "second").locator("input[name=title]").fill("Second, renamed")
    entry(page, "second").get_by_role("button", name="Rename").click()
    expect(entry(page, "second").locator(".session-title")).to_have_text("Second, renamed")
    assert engine.session_get("second").title == "Second, renamed"

    # Pin: it heads the sidebar under "Pinned".
    entry(page, "third").locator(".session-actions > summary").click()
    entry(page, "third").get_by_role("button", name="Pin").click()
    expect(page.locator("#sidebar-sections .section-title").first).to_have_text("Pinned")
    first_entry = page.locator("#sidebar-sections li.session-item").first
    expect(first_entry).to_have_attribute("data-session-id", "third")
    shot(page, "library-sidebar-pinned")

    # Archive: it leaves the list for the Archived section, and comes back.
    entry(page, "second").locator(".session-actions > summary").click()
    entry(page, "second").get_by_role("button", name="Archive").click()
    expect(entry(page, "second")).to_have_count(0)
    page.locator("#sidebar-archived > summary").click()
    archived = page.locator('#archived-list li[data-session-id="second"]')
    expect(archived).to_be_visible()
    archived.locator(".session-actions > summary").click()
    archived.get_by_role("button", name="Unarchive").click()
    expect(entry(page, "second")).to_have_count(1)
    assert not engine.session_get("second").archived


def test_the_sidebar_is_live_across_two_tabs(context, server, alice, login, make_session):
    login(alice)
    make_session("one", owner=alice)
    make_session("two", owner=alice)
    a, b = context.new_page(), context.new_page()
    open_chat(a, server, "one")
    open_chat(b, server, "two")

    # Renamed in A: B's sidebar follows (and B's own header, when it is B's conversation).
    entry(a, "two").locator(".session-actions > summary").click()
    entry(a, "two").locator("input[name=title]").fill("Named in tab A")
    entry(a, "two").get_by_role("button", name="Rename").click()
    expect(entry(b, "two").locator(".session-title")).to_have_text("Named in tab A")
    expect(b.locator("#session-title h1")).to_have_text("Named in tab A")
    expect(b).to_have_title("Named in tab A · Convo")
    expect(entry(b, "two")).to_have_class(re.compile(r"\bcurrent\b"))  # B still marks its own

    # Reordered by activity: a message in "one" moves it up in B, with its new title.
    expect(b.locator("#sidebar-sections li.session-item").first).to_have_attribute("data-session-id", "two")
    a.locator("#composer textarea[name=content]").fill("activity in one")
    a.locator("#composer textarea[name=content]").press("Enter")
    expect(b.locator("#sidebar-sections li.session-item").first).to_have_attribute("data-session-id", "one")
    expect(entry(b, "one").locator(".session-title")).to_have_text("activity in one")

    # New chat in one click: A opens it, B lists it first.
    a.get_by_role("button", name="New chat").click()
    expect(a).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    expect(a.locator(LIVE)).to_be_visible()
    new_id = a.url.rstrip("/").rsplit("/", 1)[1]
    expect(b.locator("#sidebar-sections li.session-item").first).to_have_attribute("data-session-id", new_id)
    assert engine.session_get(new_id).timeout_seconds == 30 * 24 * 3600  # CONVO_CHAT_TIMEOUT_SECONDS

    # Deleted in A: gone from B's sidebar.
    a.get_by_text("Delete conversation…").click()
    a.get_by_role("button", name="Yes, delete it permanently").click()
    expect(a).to_have_url(re.compile(r"/$"))
    expect(entry(b, new_id)).to_have_count(0)
    expect(entry(b, "one")).to_have_count(1)
