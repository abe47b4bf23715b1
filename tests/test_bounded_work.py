"""No one user can make the server do unbounded work (issue 9 §4): Markdown, the state panel,
sign-up, the API's rate limit and concurrent replies. (The websocket's frame limit and catch-up are
in test_consumers_bounded.py.)"""

import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from sessions_app import engine, rendering, replies, throttle
from sessions_app.models import ConversationSession, Reply, Role

from .conftest import ON_REDIS, add
from .test_api_support import Api, api_for, assert_error

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


# ---------------------------------------------------------------------------------------------
# Sign-up


def signup(client, username, password="s3cret-Passphrase", confirm=None):
    data = {"username": username, "password1": password, "password2": confirm or password}
    return client.post("/accounts/signup/", data)


def test_sign_up_is_throttled_per_address(settings, django_user_model):
    """Every attempt from one address counts, failed or not; past the limit: 429 with a clear message
    and Retry-After, and no account is made. Another address is not affected."""
    settings.CONVO_SIGNUP_PER_HOUR = 3
    client = Client(HTTP_HOST="localhost", REMOTE_ADDR="203.0.113.7")
    assert signup(client, "carol", confirm="other").status_code == 422
    assert signup(client, "carol", confirm="again").status_code == 422
    assert signup(client, "carol").status_code == 302
    client.logout()
    response = signup(client, "dave")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "Too many sign-up attempts from your address (3 an hour)" in response.content.decode()
    assert not django_user_model.objects.filter(username="dave").exists()
    elsewhere = Client(HTTP_HOST="localhost", REMOTE_ADDR="203.0.113.8")
    assert signup(elsewhere, "dave").status_code == 302


def test_sign_up_says_no_more_about_a_taken_name_than_the_form_must(settings, user):
    """A taken user name gets the form's own error on that field and nothing else differs: the
    same status, the same page; and the attempts count against the throttle like any other."""
    settings.CONVO_SIGNUP_PER_HOUR = 2
    client = Client(HTTP_HOST="localhost", REMOTE_ADDR="203.0.113.9")
    taken = signup(client, "alice", confirm="mismatch")
    fresh = signup(client, "zed-new", confirm="mismatch")
    assert taken.status_code == fresh.status_code == 422
    taken_html, fresh_html = _comparable(taken.content.decode()), _comparable(fresh.content.decode())
    error = '<p class="field-error" role="alert">A user with that username already exists.</p>'
    assert error in taken_html
    assert taken_html.replace(error, "") == fresh_html
    assert signup(client, "bob-probe").status_code == 429


def _comparable(html):
    """A sign-up page without what differs by design: the values typed, the CSRF token, the marks
    of a field with errors."""
    html = re.sub(r'\s*(value|aria-invalid|aria-describedby)="[^"]*"', "", html)
    html = re.sub(r'"X-CSRFToken": "[^"]*"', "", html)
    return html.replace(" has-error", "")


# ---------------------------------------------------------------------------------------------
# The API's rate limit


def test_the_api_is_rate_limited_per_key(user, settings):
    """Past CONVO_API_RATE_LIMIT requests a minute with one key: 429, Retry-After and the API's
    error shape; another key of the same user has its own count."""
    settings.CONVO_API_RATE_LIMIT = 5
    api = api_for(user)
    for _ in range(5):
        assert api.get("/sessions").status_code == 200
    response = api.get("/sessions")
    body = assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert "at most 5 requests a minute" in body["detail"]
    assert api.post("/sessions", {"id": "x"}).status_code == 429  # writes too, and nothing is made
    assert not ConversationSession.objects.filter(owner=user).exists()
    assert api_for(user).get("/sessions").status_code == 200


def test_browser_sessions_are_rate_limited_per_user(client, settings):
    settings.CONVO_API_RATE_LIMIT = 2
    for _ in range(2):
        assert client.get("/api/v1/sessions").status_code == 200
    assert_error(client.get("/api/v1/sessions"), 429, "rate_limited")


def test_a_bad_key_is_refused_before_it_counts(user, settings):
    settings.CONVO_API_RATE_LIMIT = 1
    for _ in range(3):
        assert_error(Api("convo_not-a-key").get("/sessions"), 401)
    assert api_for(user).get("/sessions").status_code == 200


@pytest.mark.redis
def test_the_rate_limit_is_shared_by_processes(user, settings):
    """With Redis, another process's requests count against the same limit (two daphne processes
    serve one site): hits from a separate Python process, then this one is over the limit."""
    assert ON_REDIS and settings.REDIS_URL
    script = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'convo_site.settings'); django.setup()\n"
        "from sessions_app import throttle\n"
        "print([throttle.hit('api', 'key:shared', limit=3, window=60) for _ in range(3)])\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[None, None, None]", out.stderr
    assert throttle.hit("api", "key:shared", limit=3, window=60) is not None


def test_the_window_resets():
    assert throttle.hit("t", "a", limit=1, window=60, now=120.0) is None
    assert throttle.hit("t", "a", limit=1, window=60, now=150.0) == 30
    assert throttle.hit("t", "a", limit=1, window=60, now=180.0) is None


# ---------------------------------------------------------------------------------------------
# Concurrent replies


def running(session_id, *, age=0.0):
    """A reply row as a live process running it would leave it (heartbeat ``age`` seconds old)."""
    session = engine.session_get(session_id)
    at = timezone.now() - dt.timedelta(seconds=age)
    return Reply.objects.create(
        session=session, turn_number=1, user_seq=1, base_seq=1, responder="builtin", worker="elsewhere:1:x",
        heartbeat_at=at, started_at=at,
    )  # fmt: skip


@pytest.fixture
def four_chats(user, make_session):
    for i in range(4):
        make_session(f"c{i}", owner=user)
        add(f"c{i}", Role.USER, "hi")


def test_concurrent_replies_are_capped_per_user(user, other_user, make_session, four_chats, settings, replies_env):
    """With CONVO_MAX_CONCURRENT_REPLIES running in a user's other conversations, starting one more
    is refused (TooManyReplies) and the append that would start it stores nothing; other users and
    dead replies do not count."""
    settings.CONVO_MAX_CONCURRENT_REPLIES = 3
    for i in range(3):
        running(f"c{i}")
    with pytest.raises(replies.TooManyReplies, match="at most 3 at once"):
        replies.start_reply("c3", owner=user)
    with pytest.raises(replies.TooManyReplies):
        replies.append_and_reply("c3", "again", owner=user)
    assert engine.session_get("c3").last_seq == 1
    make_session("theirs", owner=other_user)
    add("theirs", Role.USER, "hi")
    assert replies.start_reply("theirs", owner=other_user).is_running
    Reply.objects.filter(session=engine.session_get("c0")).update(heartbeat_at=timezone.now() - dt.timedelta(hours=1))
    assert replies.start_reply("c3", owner=user).is_running  # (a test transaction never launches its thread)


def test_the_api_answers_409_past_the_reply_cap(user, four_chats, settings, replies_env):
    settings.CONVO_MAX_CONCURRENT_REPLIES = 1
    running("c0")
    api = api_for(user)
    assert_error(api.post("/sessions/c3/reply", {}), 409, "too_many_replies")
    body = assert_error(api.post("/sessions/c3/messages", {"role": "user", "content": "x", "respond": True}), 409)
    assert body["error"] == "too_many_replies"
    assert engine.session_get("c3").last_seq == 1


def test_the_chat_says_so_past_the_reply_cap(client, user, four_chats, settings, replies_env):
    settings.CONVO_MAX_CONCURRENT_REPLIES = 1
    running("c0")
    response = client.post("/c/c3/send/", {"role": "user", "content": "more"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 409
    assert "replies running (at most 1 at once)" in response.content.decode()
    assert engine.session_get("c3").last_seq == 1


def test_the_admin_shows_state_linearly_too(django_user_model, make_session):
    admin = django_user_model.objects.create_superuser("root", password="pw-root-123")
    client = Client(HTTP_HOST="localhost")
    client.force_login(admin)
    session = make_session("s")
    url = reverse("admin:sessions_app_conversationsession_change", args=[session.pk])
    empty = len(client.get(url).content)
    stored = 0
    for k in range(22):
        value = nested(60, "x" * 10)
        engine.state_set_data("s", f"k{k}", value)
        stored += len(json.dumps(value, separators=(",", ":")))
    page = client.get(url).content.decode()
    assert "level59" in page
    assert len(page.encode()) - empty <= 3 * stored + 20_000
