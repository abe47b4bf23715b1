"""Search in a real browser: the sidebar's box finds a message as the user types, and the result opens
the conversation at that message (loaded around it, scrolled to and highlighted)."""

import re

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from sessions_app import engine

from .conftest import script

LIVE = "#live-status[data-state=live]"


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def bob(django_user_model, transactional_db):
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


def fill_conversation(owner, sid, count, special):
    session = engine.session_create(sid, owner=owner, config=engine.SessionConfig(max_messages=500))
    for i in range(1, count + 1):
        text = special.get(i, f"Line {i} about the weather and the garden.")
        engine.message_append(session.pk, "user" if i % 2 else "assistant", text)
    return session


def test_search_finds_a_message_and_opens_it_in_place(page, server, alice, bob, login, shot):
    login(alice)
    script(fill_conversation, alice, "zoo-notes", 120, {7: "The <b>quokka</b> smiled at the keeper."})
    script(fill_conversation, alice, "other", 3, {})
    script(fill_conversation, bob, "bobs", 3, {2: "Bob's own quokka, never shown to Alice."})

    page.goto(f"{server.url}/c/other/")
    expect(page.locator(LIVE)).to_be_visible()
    box = page.get_by_role("searchbox", name="Search your conversations")
    box.click()
    box.press_sequentially("quokka", delay=30)
    hits = page.locator("#search-results .search-hit")
    expect(hits).to_have_count(1)
    expect(hits.locator("mark")).to_have_text("quokka")
    expect(hits).to_contain_text("<b>")  # the message's markup is shown as text, not applied
    expect(hits).not_to_contain_text("Bob")
    shot(page, "search-results")
    audit = Axe().run(page, context="#search")  # the box and its results: no accessibility violations
    assert audit.response["passes"] and audit.violations_count == 0, audit.generate_report()

    # Keyboard: down into the results, Enter opens the message in its conversation.
    box.press("ArrowDown")
    link = hits.locator("a")
    expect(link).to_be_focused()
    link.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/zoo-notes/\?at=7$"))
    target = page.locator("#msg-7")
    expect(target).to_have_class(re.compile(r"\bsearch-target\b"))
    expect(target).to_be_in_viewport()
    expect(target).to_be_focused()
    expect(page.locator("#history-gap")).to_be_attached()  # newer messages follow, one link away
    expect(page.locator(LIVE)).to_be_visible()
    expect(target).to_be_attached()  # still there once live updates are on
    shot(page, "search-opened-at-message")

    # Escape clears the search.
    box = page.get_by_role("searchbox", name="Search your conversations")
    box.fill("weather")
    expect(page.locator("#search-results .search-hit").first).to_be_visible()
    box.press("Escape")
    expect(box).to_have_value("")
    expect(page.locator("#search-results .search-hit")).to_have_count(0)


def test_a_result_that_left_the_sessions_list_stays_on_the_page(page, server, alice, login):
    """The whole history counts: a message past max_messages opens in place and stays while live
    updates arrive."""
    login(alice)

    def fill():
        session = engine.session_create("short-list", owner=alice, config=engine.SessionConfig(max_messages=20))
        for i in range(1, 61):
            engine.message_append(session.pk, "user", "An old wallaby note." if i == 7 else f"Line {i}.")

    script(fill)
    page.goto(f"{server.url}/c/short-list/")
    box = page.get_by_role("searchbox", name="Search your conversations")
    box.press_sequentially("wallaby", delay=30)
    page.locator("#search-results .search-hit a").click()
    expect(page).to_have_url(re.compile(r"/c/short-list/\?at=7$"))
    expect(page.locator(LIVE)).to_be_visible()
    composer = page.locator("#composer textarea[name=content]")
    composer.fill("A new line while reading.")
    composer.press("Enter")
    expect(page.locator("#message-list li.role-user").last).to_contain_text("A new line while reading.")
    expect(page.locator("#message-list li.role-assistant").last).to_contain_text("built-in responder")
    expect(page.locator("#msg-7")).to_be_attached()
    expect(page.locator("#msg-7")).to_have_class(re.compile(r"\bsearch-target\b"))
