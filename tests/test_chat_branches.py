"""The chat UI's branches: Branch from here, Edit (a branch with the new text and a reply, with the
‹ n / m › switcher between versions), Continue on an expired conversation, and a regenerated answer's
versions (one answer shown, the chosen one sent)."""

import datetime as dt
import re

import pytest
from django.test import Client

from sessions_app import engine, events, rendering, replies
from sessions_app.models import ConversationSession, Message, Turn

from .conftest import add

pytestmark = pytest.mark.django_db(transaction=True)

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def client(user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(user)
    return c


@pytest.fixture
def stranger(other_user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(other_user)
    return c


@pytest.fixture
def talk(user, make_session, replies_env):
    make_session("talk", owner=user, system_prompt="Be brief.")
    add("talk", "user", "What is 2+2?")  # 2
    add("talk", "assistant", "It is 4.")  # 3
    add("talk", "user", "Thanks")  # 4
    add("talk", "assistant", "You're welcome.")  # 5
    engine.state_set("talk", "color", "blue")
    ConversationSession.objects.filter(sid="talk").update(title="Arithmetic")
    return engine.session_get("talk")


def newest_other(user, exclude="talk"):
    return ConversationSession.objects.filter(owner=user).exclude(sid=exclude).order_by("-created_at").first()


def li(html, seq):
    """The <li> of message ``seq`` on a page."""
    start = html.index(f'<li id="msg-{seq}"')
    return html[start : html.index("</li>", start)]


def test_every_message_offers_branch_and_user_messages_edit(client, talk):
    html = client.get("/c/talk/").content.decode()
    assert 'id="lineage-actions"' in html
    for seq in (2, 3, 4, 5):
        assert f'name="at_seq" value="{seq}"' in li(html, seq)
    assert "/c/talk/messages/2/edit/" in li(html, 2) and "/edit/" not in li(html, 3)


def test_branch_from_here_opens_the_branch_which_links_back(client, talk, user):
    response = client.post("/c/talk/branch/", {"at_seq": "3"})
    branch = newest_other(user)
    assert response.status_code == 302 and response["Location"] == f"/c/{branch.sid}/"
    assert (branch.parent_seq, branch.lineage, branch.variables) == (3, "branch", {"color": "blue"})
    assert [m.seq for m in engine.messages_all(branch)] == [1, 2, 3]
    html = client.get(f"/c/{branch.sid}/").content.decode()
    start = html.index('id="session-header"')
    header = html[start : html.index("</header>", start)]
    assert re.search(r'Branched from\s*<a href="/c/talk/#msg-3" data-parent>Arithmetic</a>\s*at message 3', header)
    parent = client.get("/c/talk/").content.decode()
    children = parent[
        parent.index('class="lineage-children"') : parent.index("</details>", parent.index("lineage-children"))
    ]
    assert f'href="/c/{branch.sid}/"' in children and "branch at message 3" in children
    # With htmx, the page is sent to the branch.
    response = client.post("/c/talk/branch/", {"at_seq": "5"}, **HX)
    assert response.status_code == 200 and response["HX-Redirect"] == f"/c/{newest_other(user).sid}/"


@pytest.mark.parametrize(
    "at_seq, status", [("", 400), ("x", 400), ("0", 422), ("6", 422), ("99999999999999999999999", 422)]
)
def test_a_bad_branch_point_is_refused(client, talk, user, at_seq, status):
    response = client.post("/c/talk/branch/", {"at_seq": at_seq})
    assert response.status_code == status
    assert not ConversationSession.objects.exclude(sid="talk").exists()


def test_others_cannot_branch_continue_edit_or_choose(stranger, talk):
    assert stranger.post("/c/talk/branch/", {"at_seq": "2"}).status_code == 404
    assert stranger.post("/c/talk/continue/").status_code == 404
    assert stranger.get("/c/talk/messages/2/edit/").status_code == 404
    assert stranger.post("/c/talk/messages/2/edit/", {"content": "mine"}).status_code == 404
    assert stranger.post("/c/talk/turns/1/response/", {"seq": "3"}).status_code == 404
    assert ConversationSession.objects.count() == 1


def test_an_expired_conversation_continues_in_a_new_one(client, talk, user):
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    ConversationSession.objects.filter(sid="talk").update(updated_at=past, expires_at=past)
    html = client.get("/c/talk/").content.decode()
    assert 'action="/c/talk/continue/"' in html
    response = client.post("/c/talk/continue/")
    new = newest_other(user)
    assert response.status_code == 302 and response["Location"] == f"/c/{new.sid}/"
    assert not new.is_expired() and new.lineage == "continue" and new.parent_seq == 5
    assert [m.content for m in engine.messages_all(new)] == [m.content for m in engine.messages_all(talk)]
    page = client.get(f"/c/{new.sid}/").content.decode()
    assert "Continued from" in page and "This conversation has expired" not in page
    assert client.post(f"/c/{new.sid}/send/", {"role": "user", "content": "hello again"}).status_code == 302
    assert replies.wait_reply(replies.latest_reply(new.pk).pk).status == "done"


def test_edit_branches_before_the_message_and_replies_there(client, talk, user):
    form = client.get("/c/talk/messages/4/edit/", **HX)
    assert form.status_code == 200 and ">Thanks</textarea>" in form.content.decode()
    assert client.get("/c/talk/messages/3/edit/").status_code == 404  # an assistant message
    assert client.get("/c/talk/messages/4/edit/").status_code == 200  # a page of its own without htmx

    response = client.post("/c/talk/messages/4/edit/", {"content": "Thanks a lot!"})
    edit = newest_other(user)
    assert response.status_code == 302 and response["Location"] == f"/c/{edit.sid}/"
    reply = replies.wait_reply(replies.latest_reply(edit.pk).pk)
    assert reply.status == "done"
    assert [(m.seq, m.role, m.content) for m in engine.messages_all(engine.session_get(edit.pk))][:4] == [
        (1, "system", "Be brief."),
        (2, "user", "What is 2+2?"),
        (3, "assistant", "It is 4."),
        (4, "user", "Thanks a lot!"),
    ]
    assert (edit.lineage, edit.parent_seq) == ("edit", 3)
    # The edited message shows ‹ 2 / 2 › here, ‹ 1 / 2 › in the original, each linking to the other.
    mine = li(client.get(f"/c/{edit.sid}/").content.decode(), 4)
    assert '<span class="version-count" data-versions="2">2 / 2</span>' in mine
    assert 'href="/c/talk/#msg-4" aria-label="Previous version"' in mine
    original = li(client.get("/c/talk/").content.decode(), 4)
    assert '<span class="version-count" data-versions="2">1 / 2</span>' in original
    assert f'href="/c/{edit.sid}/#msg-4" aria-label="Next version"' in original
    assert "version-count" not in li(client.get("/c/talk/").content.decode(), 2)


def test_a_page_seen_before_an_edit_shows_its_versions_after_it(client, talk, user):
    """The original's message list was cached before the edit (issue 13); its message 4 itself did not
    change, yet the next load shows ‹ 1 / 2 ›, and once the conversation expired, the answer switcher
    of a regenerated turn is disabled."""
    assert "version-count" not in li(client.get("/c/talk/").content.decode(), 4)
    assert client.post("/c/talk/messages/4/edit/", {"content": "Thanks a lot!"}).status_code == 302
    replies.wait_reply(replies.latest_reply(newest_other(user).pk).pk)
    assert '<span class="version-count" data-versions="2">1 / 2</span>' in li(
        client.get("/c/talk/").content.decode(), 4
    )

    assert client.post("/c/talk/reply/regenerate/", **HX).status_code == 200
    replies.wait_reply(replies.latest_reply("talk").pk)
    assert 'aria-label="Previous answer">' in li(client.get("/c/talk/").content.decode(), 6)
    ConversationSession.objects.filter(sid="talk").update(expires_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert 'aria-label="Previous answer" disabled>' in li(client.get("/c/talk/").content.decode(), 6)


@pytest.mark.parametrize("content, status", [("", 422), ("   ", 422), ("x\x00y", 422), ("x" * 40_000, 422)])
def test_a_refused_edit_leaves_no_branch(client, talk, content, status, settings):
    settings.CONVO_MAX_CONTENT_CHARS = 32_000
    response = client.post("/c/talk/messages/4/edit/", {"content": content})
    assert response.status_code == status
    assert 'role="alert"' in response.content.decode()
    assert ConversationSession.objects.count() == 1


def test_regenerate_shows_one_answer_with_its_versions_and_sends_the_chosen(client, talk):
    assert client.post("/c/talk/reply/regenerate/", **HX).status_code == 200
    done = replies.wait_reply(replies.latest_reply("talk").pk)
    assert done.status == "done" and done.message_seq == 6
    assert Turn.objects.get(session=talk, number=2).metadata == {engine.CHOICE_KEY: "latest"}
    html = client.get("/c/talk/").content.decode()
    assert "hidden data-version-hidden" in li(html, 5)
    shown = li(html, 6)
    assert "hidden" not in shown.split(">")[0] and '<span class="version-count" data-versions="2">2 / 2</span>' in shown
    assert 'formaction="/c/talk/turns/2/response/" name="seq" value="5"' in shown
    session = engine.session_get("talk")
    assert [m.seq for m in replies.reply_context_window(session).messages] == [1, 2, 3, 4, 6]

    # ‹ goes back to the first answer: the page gets both answers again, the choice is stored and sent.
    response = client.post("/c/talk/turns/2/response/", {"seq": "5"}, **HX)
    assert response.status_code == 200
    swapped = response.content.decode()
    assert 'id="msg-5"' in swapped and 'id="msg-6"' in swapped and swapped.count('hx-swap-oob="true"') == 2
    assert "hidden data-version-hidden" in li(swapped, 6) and "1 / 2" in li(swapped, 5)
    assert [m.seq for m in replies.reply_context_window(engine.session_get("talk")).messages] == [1, 2, 3, 4, 5]
    assert "hidden data-version-hidden" in li(client.get("/c/talk/").content.decode(), 6)
    # The context panel shows what is sent.
    panel = client.get("/c/talk/context/", **HX).content.decode()
    assert 'data-seq="5"' in panel and 'data-seq="6"' not in panel
    # Without htmx: back to the page, at that answer.
    response = client.post("/c/talk/turns/2/response/", {"seq": "6"})
    assert response.status_code == 302 and response["Location"] == "/c/talk/#msg-6"


@pytest.mark.parametrize(
    "turn, seq, status", [(2, "", 400), (2, "4", 422), (2, "3", 422), (1, "5", 422), (9, "5", 422)]
)
def test_choosing_something_that_is_not_an_answer_of_the_turn_is_refused(client, talk, turn, seq, status):
    response = client.post(f"/c/talk/turns/{turn}/response/", {"seq": seq}, **HX)
    assert response.status_code == status
    assert not Turn.objects.exists()


def test_a_pushed_new_answer_hides_the_earlier_one_on_open_pages(talk):
    """What a page receives when a regenerated answer is stored: the new answer with its switcher,
    and the earlier one again, hidden, replacing its element."""
    add("talk", "assistant", "Anytime.")  # 6: a second answer to turn 2
    session = engine.session_get("talk")
    html = rendering.render_messages_oob([Message.objects.get(session=session, seq=6)], session)
    assert "2 / 2" in li(html, 6)
    assert 'hx-swap-oob="true"' in li(html, 5) and "hidden data-version-hidden" in li(html, 5)


def test_an_edit_whose_reply_is_refused_leaves_no_branch(client, talk, settings):
    settings.CONVO_MAX_CONCURRENT_REPLIES = 0
    response = client.post("/c/talk/messages/4/edit/", {"content": "Thanks a lot!"})
    assert response.status_code == 409 and "replies running" in response.content.decode()
    assert ConversationSession.objects.count() == 1 and Message.objects.count() == 5


def test_the_page_costs_the_same_queries_with_one_edited_message_or_many(client, talk, django_assert_max_num_queries):
    def queries():
        events.bump_library_version(engine.session_get("talk").owner_id)  # the sidebar rendered each time
        with django_assert_max_num_queries(30) as ctx:
            assert client.get("/c/talk/").status_code == 200
        return len(ctx.captured_queries)

    engine.session_edit_branch("talk", 2)
    one = queries()
    for _ in range(3):
        engine.session_edit_branch("talk", 4)
    for i in range(8):
        add("talk", "user", f"q{i}")
        engine.session_edit_branch("talk", engine.session_get("talk").last_seq)
    html = client.get("/c/talk/").content.decode()
    assert html.count('class="version-count"') == 10 and "1 / 4" in li(html, 4)
    assert queries() == one


@pytest.mark.parametrize("seq", [2**63, 2**70])
def test_sequence_numbers_beyond_64_bits_are_refused_without_a_query_error(client, talk, seq):
    assert client.get(f"/c/talk/messages/{seq}/edit/").status_code == 404
    assert client.post(f"/c/talk/messages/{seq}/edit/", {"content": "x"}).status_code == 404
    assert client.post("/c/talk/turns/2/response/", {"seq": str(seq)}, **HX).status_code == 422
    assert client.post(f"/c/talk/turns/{seq}/response/", {"seq": "5"}, **HX).status_code == 422
    assert client.post("/c/talk/branch/", {"at_seq": str(seq)}).status_code == 422


def test_a_page_opened_at_a_message_shows_versions_and_the_found_answer(client, talk):
    add("talk", "assistant", "Anytime.")  # 6: a second answer to turn 2; 5 is hidden behind it
    html = client.get("/c/talk/?at=3").content.decode()
    assert "hidden data-version-hidden" in li(html, 5) and "2 / 2" in li(html, 6)
    html = client.get("/c/talk/?at=5").content.decode()  # a search found the earlier answer: it shows
    assert "hidden" not in li(html, 5).split(">")[0]
