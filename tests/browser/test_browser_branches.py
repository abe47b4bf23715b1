"""Branches in a real browser: Branch from here, Edit with the ‹ n / m › switcher between the
versions, a regenerated answer's versions, and Continue on an expired conversation."""

import datetime as dt
import re

import pytest
from playwright.sync_api import expect

from sessions_app import engine
from sessions_app.models import ConversationSession

from .conftest import script
from .test_browser_chat import LIVE, open_chat, send

ANSWERS = "#message-list > li.role-assistant"


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def visible_answers(page):
    return page.locator(f"{ANSWERS}:not([hidden])")


def test_branch_from_a_message_and_back(page, server, alice, login, make_session, shot):
    login(alice)
    make_session("trip", owner=alice, system_prompt="Be brief.")
    open_chat(page, server, "trip")
    send(page, "remember that my color is blue")
    expect(visible_answers(page)).to_have_count(1)
    send(page, "what is my color?")
    expect(visible_answers(page)).to_have_count(2)

    # Branch from the first answer: a new conversation with the messages up to it.
    first_answer = page.locator(ANSWERS).first
    seq = first_answer.get_attribute("data-seq")
    first_answer.get_by_role("button", name="Branch from here").click()
    expect(page).not_to_have_url(re.compile(r"/c/trip/$"))
    expect(page.locator(LIVE)).to_be_visible()
    expect(page.locator("#message-list > li.msg")).to_have_count(int(seq))
    lineage = page.locator("#session-header .lineage")
    expect(lineage).to_contain_text(f"Branched from remember that my color is blue at message {seq}")  # the title
    shot(page, "branch-header")
    branch_url = page.url
    # The branch goes on by itself, its state copied.
    expect(page.locator('#state-panel tr[data-var="color"] input[name=value]')).to_have_value("blue")
    send(page, "what is my color?")
    expect(visible_answers(page)).to_have_count(2)

    # Back to the parent, which lists its branch.
    lineage.get_by_role("link", name="remember that my color is blue").click()
    expect(page).to_have_url(re.compile(r"/c/trip/#msg-" + seq))
    children = page.locator("#session-header .lineage-children")
    children.locator("summary").click()
    expect(children.get_by_role("link")).to_have_attribute("href", re.compile(branch_url.split(server.url)[1]))


def test_edit_a_message_and_switch_between_the_versions(page, server, alice, login, make_session, shot):
    login(alice)
    make_session("maths", owner=alice)
    open_chat(page, server, "maths")
    send(page, "what is 6*7?")
    expect(visible_answers(page)).to_have_count(1)
    expect(page.locator(ANSWERS).last).to_contain_text("6*7 = 42.")

    user_message = page.locator("#message-list > li.role-user").first
    user_message.get_by_role("link", name="Edit").click()
    box = user_message.locator("textarea[name=content]")
    expect(box).to_have_value("what is 6*7?")
    expect(box).to_be_focused()
    box.fill("what is 6*8?")
    user_message.get_by_role("button", name="Save and send").click()

    # The edit is a new conversation: the edited message, and its own answer.
    expect(page).not_to_have_url(re.compile(r"/c/maths/"))
    expect(page.locator(LIVE)).to_be_visible()
    expect(page.locator(ANSWERS)).to_have_count(1)
    expect(page.locator(ANSWERS)).to_contain_text("6*8 = 48.")
    edited = page.locator("#message-list > li.role-user").first
    expect(edited).to_contain_text("what is 6*8?")
    expect(edited.locator(".version-count")).to_have_text("2 / 2")
    expect(page.locator("#session-header .lineage")).to_contain_text(
        "Edited from what is 6*7? with message 1 rewritten"
    )  # the title
    shot(page, "edit-versions")
    edit_url = page.url

    # ‹ goes to the original, › comes back.
    edited.get_by_role("link", name="Previous version").click()
    expect(page).to_have_url(re.compile(r"/c/maths/#msg-1$"))
    original = page.locator("#message-list > li.role-user").first
    expect(original).to_contain_text("what is 6*7?")
    expect(original.locator(".version-count")).to_have_text("1 / 2")
    expect(page.locator(ANSWERS)).to_contain_text("6*7 = 42.")
    original.get_by_role("link", name="Next version").click()
    expect(page).to_have_url(edit_url.split("#")[0] + "#msg-1")
    expect(page.locator("#message-list > li.role-user").first).to_contain_text("what is 6*8?")


def test_regenerated_answers_show_one_at_a_time(context, server, alice, login, make_session, shot):
    login(alice)
    make_session("again", owner=alice)
    page, other = context.new_page(), context.new_page()
    open_chat(page, server, "again")
    open_chat(other, server, "again")
    send(page, "hello there")
    expect(visible_answers(page)).to_have_count(1)
    first = page.locator(ANSWERS).first.inner_text()

    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator(ANSWERS)).to_have_count(2)
    expect(visible_answers(page)).to_have_count(1)  # the earlier answer hides behind the new one
    shown = visible_answers(page)
    expect(shown).to_contain_text("regenerated")
    expect(shown.locator(".version-count")).to_have_text("2 / 2")
    shot(page, "regenerate-versions")

    expect(visible_answers(other).locator(".version-count")).to_have_text("2 / 2")  # the other tab too
    shown.get_by_role("button", name="Previous answer").click()
    shown = visible_answers(page)
    expect(shown.locator(".version-count")).to_have_text("1 / 2")
    expect(visible_answers(other).locator(".version-count")).to_have_text("1 / 2")  # pushed to the other tab
    expect(shown).not_to_contain_text("regenerated")
    assert shown.inner_text().split("\n")[-1] in first
    session = engine.session_get("again")
    turn = session.turns.get(number=1)
    assert turn.metadata[engine.CHOICE_KEY] == shown.get_attribute("data-seq")
    # The context panel shows what the next reply sends: the chosen answer only.
    page.get_by_role("button", name="Show").click()
    context = page.locator("#context-panel .context-list")
    expect(context.locator(f'li[data-seq="{shown.get_attribute("data-seq")}"]')).to_have_count(1)
    expect(context.locator("li.role-assistant")).to_have_count(1)

    shown.get_by_role("button", name="Next answer").click()
    expect(visible_answers(page).locator(".version-count")).to_have_text("2 / 2")
    page.reload()
    expect(visible_answers(page)).to_have_count(1)
    expect(visible_answers(page).locator(".version-count")).to_have_text("2 / 2")


def test_an_expired_conversation_continues_with_its_history(page, server, alice, login, make_session, shot):
    login(alice)
    make_session("old", owner=alice, timeout_seconds=60)
    script(engine.message_append, "old", "user", "remember that my color is green")
    script(engine.message_append, "old", "assistant", "I will remember: color is green.")
    script(engine.state_set, "old", "color", "green")
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    ConversationSession.objects.filter(sid="old").update(updated_at=past, expires_at=past)

    open_chat(page, server, "old")
    expect(page.locator("#expired-banner")).to_contain_text("expired")
    page.get_by_role("button", name="Continue").click()
    expect(page).not_to_have_url(re.compile(r"/c/old/"))
    expect(page.locator(LIVE)).to_be_visible()
    expect(page.locator("#expired-banner")).not_to_contain_text("expired")
    expect(page.locator("#message-list > li.msg")).to_have_count(2)
    expect(page.locator("#session-header .lineage")).to_contain_text(
        "Continued from remember that my color is green"
    )  # the title
    send(page, "what is my color?")
    expect(visible_answers(page).last).to_contain_text("green")
    shot(page, "continued")
