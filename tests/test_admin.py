"""The admin: list (no N+1), filters, search, session page, actions, messages and turns lists."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from sessions_app import engine
from sessions_app.models import ConversationSession

from .conftest import add

pytestmark = pytest.mark.django_db
PAST = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)


@pytest.fixture
def staff(admin_client, user):
    for i in range(6):
        engine.session_create(f"s{i}", owner=user, system_prompt="be nice")
        add(f"s{i}", "user", f"question number {i}")
        add(f"s{i}", "tool", "42", tool_call_id=f"call-{i}", name="calculator")
        add(f"s{i}", "assistant", f"answer {i}")
    engine.session_create("gone", config=engine.SessionConfig(timeout_seconds=1), now=PAST)
    add("gone", "user", "old", now=PAST)
    return admin_client


def test_changelist_columns_and_constant_query_count(staff):
    url = reverse("admin:sessions_app_conversationsession_changelist")
    with CaptureQueriesContext(connection) as few:
        response = staff.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    for column in ["messages", "Turn count", "Total tokens", "Expires at", "expired"]:
        assert column.lower() in body.lower()
    for i in range(6, 30):
        engine.session_create(f"more{i}")
    with CaptureQueriesContext(connection) as many:
        assert staff.get(url).status_code == 200
    assert len(many.captured_queries) == len(few.captured_queries)


def test_filters_and_search(staff):
    url = reverse("admin:sessions_app_conversationsession_changelist")
    expired = staff.get(url, {"expired": "yes"}).content.decode()
    assert ">gone<" in expired and ">s1<" not in expired
    live = staff.get(url, {"expired": "no"}).content.decode()
    assert ">gone<" not in live and ">s1<" in live
    found = staff.get(url, {"q": "number 3"}).content.decode()
    assert ">s3<" in found and ">s2<" not in found
    by_owner = staff.get(url, {"q": "alice"}).content.decode()
    assert ">s0<" in by_owner and ">gone<" not in by_owner


def key(session_id):
    """The admin names sessions by key (an id may be several owners')."""
    return str(engine.session_get(session_id).pk)


def test_session_page_shows_config_state_messages_and_turns(staff):
    engine.state_set("s1", "name", "Alice")
    engine.state_set_data("s1", "prefs", {"theme": "dark"})
    response = staff.get(reverse("admin:sessions_app_conversationsession_change", args=[key("s1")]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "&quot;theme&quot;: &quot;dark&quot;" in body
    assert "question number 1" in body and "answer 1" in body
    assert "call-1" in body and "calculator" in body
    assert "8192" in body


def test_purge_action_deletes_only_expired(staff):
    url = reverse("admin:sessions_app_conversationsession_changelist")
    response = staff.post(
        url, {"action": "purge_expired_sessions", "_selected_action": [key("gone"), key("s1")]}, follow=True
    )
    assert "Purged 1 expired session(s)" in response.content.decode()
    assert not ConversationSession.objects.filter(sid="gone").exists()
    assert ConversationSession.objects.filter(sid="s1").exists()


def test_clear_action_goes_through_the_engine(staff):
    url = reverse("admin:sessions_app_conversationsession_changelist")
    staff.post(url, {"action": "clear_messages", "_selected_action": [key("s2")]}, follow=True)
    session = engine.session_get("s2")
    assert [m.role for m in engine.messages_all(session)] == ["system"]
    assert session.turn_count == 0


def test_delete_goes_through_the_engine(staff):
    url = reverse("admin:sessions_app_conversationsession_delete", args=[key("s4")])
    staff.post(url, {"post": "yes"})
    assert not ConversationSession.objects.filter(sid="s4").exists()


def test_message_and_turn_lists_filter_by_role_and_session(staff):
    messages_url = reverse("admin:sessions_app_message_changelist")
    body = staff.get(messages_url, {"role": "tool", "session": "s2"}).content.decode()
    assert "call-2" in body and "call-3" not in body
    turns = staff.get(reverse("admin:sessions_app_turnentry_changelist"), {"session": "s5"})
    assert turns.status_code == 200
    assert "question number 5" in turns.content.decode()


def test_turn_list_is_derived_from_the_messages(staff):
    """One row per turn (its user message), with its tool calls and newest response; constant queries."""
    add("s1", "assistant", "a better answer")  # complete() again: the newest response is the turn's
    add("s1", "user", "still open")
    add("s2", "user", "next question")
    url = reverse("admin:sessions_app_turnentry_changelist")
    with CaptureQueriesContext(connection) as queries:
        body = staff.get(url, {"session": "s1"}).content.decode()
    rows = body.split("<tbody>")[1].split("</tbody>")[0].split("<tr")[1:]
    assert len(rows) == 2  # turns 2 and 1 of s1, newest first
    assert "still open" in rows[0] and "answer 1" not in rows[0] and 'alt="False"' in rows[0]
    assert "question number 1" in rows[1] and "a better answer" in rows[1] and "answer 1<" not in rows[1]
    assert '<td class="field-tool_call_count">1</td>' in rows[1] and 'alt="True"' in rows[1]
    everything = len(queries)
    with CaptureQueriesContext(connection) as queries:
        assert "next question" in staff.get(url).content.decode()
    assert len(queries) == everything


def test_non_staff_cannot_see_admin(client, user):
    client.force_login(user)
    response = client.get(reverse("admin:sessions_app_conversationsession_changelist"))
    assert response.status_code == 302


def test_session_page_shows_its_lineage(staff):
    branch = engine.session_branch("s1", 2)
    response = staff.get(reverse("admin:sessions_app_conversationsession_change", args=[branch.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Lineage" in body and "branch" in body
    assert reverse("admin:sessions_app_conversationsession_change", args=[engine.session_get("s1").pk]) in body


def test_titles_in_the_list_search_and_library_filters(staff, user):
    """Issue 11: the title is a column and searchable; pinned and archived filter the list."""
    engine.session_set_library("s4", owner=user, title="Quarterly budget review", pinned=True)
    engine.session_set_library("s5", owner=user, archived=True)
    url = reverse("admin:sessions_app_conversationsession_changelist")
    body = staff.get(url).content.decode()
    assert "Quarterly budget review" in body and "question number 1" in body  # titles from first messages
    found = staff.get(url, {"q": "budget"}).content.decode()
    assert ">s4<" in found and ">s1<" not in found
    pinned = staff.get(url, {"pinned__exact": "1"}).content.decode()
    assert ">s4<" in pinned and ">s1<" not in pinned
    archived = staff.get(url, {"archived__exact": "1"}).content.decode()
    assert ">s5<" in archived and ">s4<" not in archived
