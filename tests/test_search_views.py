"""The sidebar's search box and its results (htmx and plain), and the chat page opened at a result
(?at=<seq>): the messages around it from the whole history."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from sessions_app import engine
from sessions_app.models import ConversationSession

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def client(user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(user)
    return c


@pytest.fixture
def history(user, make_session):
    """120 messages, the session's list keeping only the newest 100: #7 left the list."""
    s = make_session("long-talk", owner=user, max_messages=100)
    for i in range(1, 121):
        engine.message_append(s.pk, "user" if i % 2 else "assistant", f"line {i}" + (" quokka" if i == 7 else ""))
    ConversationSession.objects.filter(pk=s.pk).update(title="Marsupials & <friends>")
    return engine.session_get(s.pk)


def seqs(html):
    return [int(s) for s in re.findall(r'id="msg-(\d+)"', html)]


def test_the_sidebar_has_the_search_box(client, history):
    html = client.get(reverse("chat", args=["long-talk"])).content.decode()
    assert (
        'role="search"' in html and 'id="search-q"' in html and 'hx-trigger="input changed delay:250ms, search"' in html
    )
    assert html.index('id="search-q"') < html.index('class="session-list"')
    assert 'src="/static/convo/search.js"' in html


def test_live_results_are_the_partial_with_links_to_the_message(client, history):
    r = client.get(reverse("search"), {"q": "quokka"}, **HX)
    assert r.status_code == 200
    html = r.content.decode()
    assert "<html" not in html
    assert 'href="/c/long-talk/?at=7"' in html and "<mark>quokka</mark>" in html
    assert "Marsupials &amp; &lt;friends&gt;" in html  # the title, escaped


def test_other_users_results_never_show(client, history, other_user, make_session):
    s = make_session("theirs", owner=other_user)
    engine.message_append(s.pk, "user", "their quokka")
    html = client.get(reverse("search"), {"q": "quokka"}, **HX).content.decode()
    assert "theirs" not in html and html.count('class="search-hit ') == 1


def test_no_matches_and_an_empty_box(client, history):
    assert "No matches for “wombat”" in client.get(reverse("search"), {"q": "wombat"}, **HX).content.decode()
    r = client.get(reverse("search"), {"q": "  "}, **HX)
    assert r.status_code == 200 and r.content.decode().strip() == ""


def test_a_query_with_nothing_to_find_is_explained(client, history):
    r = client.get(reverse("search"), {"q": "-quokka"}, **HX)
    assert r.status_code == 422 and 'role="alert"' in r.content.decode() and "needs a word" in r.content.decode()


def test_more_results_load_the_next_items(client, history):
    first = client.get(reverse("search"), {"q": "line"}, **HX).content.decode()
    assert first.count('class="search-hit ') == 20
    more = re.search(r'hx-get="([^"]+cursor=[^"]+)"', first).group(1).replace("&amp;", "&")
    second = client.get(more, **HX).content.decode()
    assert "<ol" not in second and second.count('class="search-hit ') == 20
    firsts = set(re.findall(r"\?at=(\d+)", first))
    assert firsts.isdisjoint(re.findall(r"\?at=(\d+)", second))


def test_without_javascript_the_results_page(client, history):
    r = client.get(reverse("search"), {"q": "quokka"})
    html = r.content.decode()
    assert r.status_code == 200 and "<html" in html and 'href="/c/long-talk/?at=7"' in html
    assert 'value="quokka"' in html  # the box keeps the query


def test_search_needs_a_login(history):
    r = Client(HTTP_HOST="localhost").get(reverse("search"), {"q": "quokka"})
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]


def test_chat_at_a_message_loads_the_messages_around_it(client, history, settings):
    settings.CONVO_CHAT_PAGE_SIZE = 10
    plain = seqs(client.get(reverse("chat", args=["long-talk"])).content.decode())
    assert 7 not in plain  # the plain page shows the newest messages
    html = client.get(reverse("chat", args=["long-talk"]), {"at": 7}).content.decode()
    assert seqs(html) == list(range(2, 13))  # five before, the message, five after: from the whole history
    assert 'id="history-gap"' in html and 'href="/c/long-talk/"' in html  # newer messages follow
    assert 'id="load-earlier"' in html and "?before=2" in html


def test_chat_at_the_newest_messages_has_no_gap(client, history, settings):
    settings.CONVO_CHAT_PAGE_SIZE = 10
    html = client.get(reverse("chat", args=["long-talk"]), {"at": 118}).content.decode()
    assert seqs(html) == list(range(113, 121)) and 'id="history-gap"' not in html


@pytest.mark.parametrize("at", ["abc", "", "-1", "0", str(2**63)])
def test_chat_at_must_be_a_sequence_number(client, history, at):
    r = client.get(reverse("chat", args=["long-talk"]), {"at": at})
    assert r.status_code == 400


def test_chat_at_is_owner_only(history, other_user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(other_user)
    assert c.get(reverse("chat", args=["long-talk"]), {"at": 7}).status_code == 404
