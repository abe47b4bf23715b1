"""No one user can make the server do unbounded work (issue 9 §4): Markdown, the state panel,
sign-up, the API's rate limit and concurrent replies. (The websocket's frame limit and catch-up are
in test_consumers_bounded.py.)"""

import json
import re
import time

import pytest
from django.conf import settings
from django.test import Client

from sessions_app import engine, rendering, throttle
from sessions_app.models import Role

from .conftest import add

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_caches():
    rendering._markdown_cache.clear()
    throttle.reset()
    yield
    throttle.reset()


@pytest.fixture
def client(user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(user)
    return c


def big_table(chars=32000, columns=1000):
    """The audit's message: one table with a wide header and thousands of one-cell rows."""
    head = "|" + "|".join("h" for _ in range(columns)) + "|\n|" + "|".join("-" for _ in range(columns)) + "|\n"
    rows = "|a\n" * ((chars - len(head)) // 3 + 1)
    return (head + rows)[:chars]


def message_html(page, seq):
    match = re.search(rf'<li id="msg-{seq}" .*?</li>', page, re.S)
    assert match, f"message #{seq} is not on the page"
    return match.group(0)


# ---------------------------------------------------------------------------------------------
# Markdown


def test_a_huge_table_message_is_shown_as_plain_text(client, user, make_session):
    """The 32,000-character table (690 KB of HTML, seconds of CPU before) is shown as escaped
    preformatted text, no larger than the HTML cap."""
    make_session("t", owner=user)
    text = big_table()
    assert len(text) == 32000
    message = add("t", Role.USER, text)
    page = client.get("/c/t/").content.decode()
    html = message_html(page, message.seq)
    assert len(html) <= settings.CONVO_MARKDOWN_MAX_HTML_BYTES
    assert '<pre class="plain">' in html and "<table" not in html and "<td" not in html
    assert "|h|h|h|" in html


def test_ten_huge_tables_on_one_page_stay_small(client, user, make_session):
    make_session("t", owner=user)
    sent = [add("t", Role.USER if i % 2 == 0 else Role.ASSISTANT, big_table(32000 - i)) for i in range(10)]
    page = client.get("/c/t/").content.decode()
    for message in sent:
        html = message_html(page, message.seq)
        assert "<td" not in html and len(html) <= 33_000
    assert len(page) < 10 * 32000 + 100_000


def test_html_beyond_the_cap_is_plain_text(settings):
    links = "[a](https://example.com/) " * 2000  # about 50 KB of text, 270 KB of HTML
    settings.CONVO_MARKDOWN_MAX_HTML_BYTES = 64 * 1024
    html = rendering.markdown_html(links)
    assert html.startswith('<pre class="plain">') and "<a " not in html
    assert len(html) < 64 * 1024
    small = rendering.markdown_html("[a](https://example.com/)")
    assert "<a " in small


def test_a_small_table_is_still_a_table():
    text = "| a | b |\n|---|---|\n" + "| 1 | 2 |\n" * 100
    assert rendering.table_cells(text) <= rendering.MAX_TABLE_CELLS
    assert "<table>" in rendering.markdown_html(text)


def test_plain_text_is_escaped():
    text = big_table(5000) + "\n<script>alert(1)</script> & more"
    html = rendering.markdown_html(text)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html


def test_markdown_is_rendered_once_per_text(monkeypatch):
    calls = []
    render = rendering._markdown.render
    monkeypatch.setattr(rendering._markdown, "render", lambda text: calls.append(text) or render(text))
    for _ in range(3):
        assert "<strong>x</strong>" in rendering.markdown_html("**x** once")
    assert len(calls) == 1


def test_the_markdown_cache_is_bounded_in_bytes():
    cache = rendering._ByteBoundedCache(1000)
    for i in range(50):
        cache.put(f"text {i}", "x" * 100)
    assert cache._size <= 1000 and len(cache._items) == 10
    assert cache.get("text 49") is not None and cache.get("text 0") is None


def test_a_spent_render_budget_shows_the_rest_as_plain_text(client, user, make_session, settings):
    """With the request's budget spent, messages not rendered yet show as plain text; such pages are
    not cached as such: the next request (with a fresh budget) renders them."""
    make_session("t", owner=user)
    first = add("t", Role.USER, "**one**")
    second = add("t", Role.ASSISTANT, "**two**")
    settings.CONVO_MARKDOWN_BUDGET_MS = 0
    page = client.get("/c/t/").content.decode()
    assert '<pre class="plain">**one**</pre>' in message_html(page, first.seq)
    assert '<pre class="plain">**two**</pre>' in message_html(page, second.seq)
    settings.CONVO_MARKDOWN_BUDGET_MS = 300
    page = client.get("/c/t/").content.decode()
    assert "<strong>one</strong>" in message_html(page, first.seq)
    assert "<strong>two</strong>" in message_html(page, second.seq)


def test_the_budget_is_charged_with_render_time(monkeypatch):
    """The render that spends the budget finishes; the ones after it are plain text."""
    render = rendering._markdown_or_plain

    def slow(text):
        time.sleep(0.02)
        return render(text)

    monkeypatch.setattr(rendering, "_markdown_or_plain", slow)
    with rendering.render_budget(10):
        assert "<em>a</em>" in rendering.markdown_html("*a*")
        assert rendering.markdown_deferred("*b*")
        assert rendering.markdown_html("*b*") == '<pre class="plain">*b*</pre>'
        assert "<em>a</em>" in rendering.markdown_html("*a*")  # rendered already: no cost
    assert "<em>b</em>" in rendering.markdown_html("*b*")  # no budget outside a request


# ---------------------------------------------------------------------------------------------
# The state panel


def nested(depth, leaf):
    value = leaf
    for i in range(depth):
        value = {f"level{i}": value, "n": i, "tags": ["a", "b", "c"]} if i % 2 else [value, i, True, None]
    return value


def test_state_panel_grows_linearly_with_deeply_nested_data(client, user, make_session):
    """35 KB of nested data (within the state limits: depth ≤ 64) adds at most 3× its stored size."""
    make_session("s", owner=user)
    empty = len(client.get("/c/s/").content)
    stored = 0
    for k in range(22):
        value = nested(60, "x" * 10)
        text = json.dumps(value)
        response = client.post("/c/s/state/data/", {"key": f"k{k}", "value": text})
        assert response.status_code in (200, 302)
        stored += len(json.dumps(value, separators=(",", ":")))
    assert stored > 35_000
    page = client.get("/c/s/").content.decode()
    assert len(page.encode()) - empty <= 3 * stored + 20_000
    assert "level59" in page


def test_small_data_is_still_indented(client, user, make_session):
    make_session("s", owner=user)
    engine.state_set_data("s", "small", {"a": [1, 2]})
    page = client.get("/c/s/").content.decode()
    assert '{\n  "a": [\n    1,' in page


def test_pathologically_deep_data_is_compact(user, make_session):
    from sessions_app.templatetags.convo_ui import json_depth, pretty_json

    value = nested(900, 1)
    assert json_depth(value) == 900
    text = pretty_json(value)
    assert "\n" not in text and len(text) < 3 * len(json.dumps(value))
