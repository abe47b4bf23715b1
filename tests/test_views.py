"""The chat UI's views and partials: status codes, owner-only 404s, validation errors, query counts."""

import datetime as dt
import re

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from sessions_app import engine, events
from sessions_app.models import Message

from .conftest import add, reload

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def client(user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(user)
    return c


@pytest.fixture
def anon():
    return Client(HTTP_HOST="localhost")


@pytest.fixture
def stranger(other_user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(other_user)
    return c


@pytest.fixture
def chat(user, make_session):
    return make_session("chat-1", owner=user, system_prompt="You are terse.", max_messages=1000)


def seqs(html):
    return [int(s) for s in re.findall(r'id="msg-(\d+)"', html)]


# ---------------------------------------------------------------------------------------------
# Accounts


def test_welcome_page_explains_sign_up(anon):
    """A newcomer's first page says how to start and links to sign-up and log-in."""
    page = anon.get("/").content.decode()
    assert 'href="/accounts/signup/"' in page and 'href="/accounts/login/"' in page
    assert "New conversation" in page


def test_sign_up_logs_in_and_lands_on_home(anon, django_user_model):
    response = anon.post(
        "/accounts/signup/", {"username": "carol", "password1": "s3cret-Passphrase", "password2": "s3cret-Passphrase"}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert django_user_model.objects.filter(username="carol").exists()
    assert "Your conversations" in anon.get("/").content.decode()


def test_sign_up_errors_are_inline(anon, django_user_model):
    response = anon.post("/accounts/signup/", {"username": "carol", "password1": "a", "password2": "b"})
    assert response.status_code == 422
    assert "field-error" in response.content.decode()
    assert not django_user_model.objects.filter(username="carol").exists()


def test_sign_up_can_be_switched_off(anon, settings, django_user_model):
    settings.CONVO_SIGNUP_ENABLED = False
    assert anon.get("/accounts/signup/").status_code == 404
    response = anon.post(
        "/accounts/signup/", {"username": "x", "password1": "s3cret-Pass!", "password2": "s3cret-Pass!"}
    )
    assert response.status_code == 404
    assert not django_user_model.objects.filter(username="x").exists()
    assert "Sign-up is closed" in anon.get("/").content.decode()


def test_log_in_and_log_out(anon, user):
    assert anon.get("/accounts/login/").status_code == 200
    response = anon.post("/accounts/login/", {"username": "alice", "password": "pw-alice-123"})
    assert response.status_code == 302
    assert anon.get("/").context["user"].is_authenticated
    assert anon.post("/accounts/logout/").status_code == 302
    assert not anon.get("/").context["user"].is_authenticated


def test_pages_need_a_login(anon, chat):
    for url in ["/c/chat-1/", "/c/chat-1/context/"]:
        response = anon.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert anon.post("/c/chat-1/send/", {"content": "hi", "role": "user"}).status_code == 302
    assert Message.objects.filter(session__sid="chat-1").count() == 1  # the system prompt only


def test_base_links_to_api_keys(client):
    assert 'href="/settings/api-keys/"' in client.get("/").content.decode()


# ---------------------------------------------------------------------------------------------
# Owner-only


OWNER_URLS_GET = ["/c/chat-1/", "/c/chat-1/messages/?before=5", "/c/chat-1/turns/?before=2", "/c/chat-1/context/"]
OWNER_URLS_POST = [
    ("/c/chat-1/send/", {"role": "user", "content": "x"}),
    ("/c/chat-1/state/variables/", {"key": "k", "value": "v"}),
    ("/c/chat-1/state/variables/delete/", {"key": "k"}),
    ("/c/chat-1/state/data/", {"key": "k", "value": "1"}),
    ("/c/chat-1/state/data/delete/", {"key": "k"}),
    ("/c/chat-1/edit/", {"max_messages": 5, "max_tokens": 5}),
    ("/c/chat-1/clear/", {"confirm": "yes"}),
    ("/c/chat-1/delete/", {"confirm": "yes"}),
    ("/c/chat-1/fresh/", {}),
]


def test_strangers_get_404_everywhere_and_change_nothing(stranger, chat):
    add("chat-1", "user", "mine")
    for url in OWNER_URLS_GET:
        assert stranger.get(url).status_code == 404, url
    for url, data in OWNER_URLS_POST:
        assert stranger.post(url, data).status_code == 404, url
    session = reload(chat)
    assert session.message_count == 2 and session.variables == {} and session.max_messages == 1000


def test_unknown_session_is_404(client):
    assert client.get("/c/nope/").status_code == 404


def test_sidebar_lists_only_mine_most_recent_first(client, user, other_user, make_session):
    make_session("older", owner=user)
    make_session("newer", owner=user)
    make_session("theirs", owner=other_user)
    add("older", "user", "Question about **tides**")
    page = client.get("/").content.decode()
    assert "theirs" not in page
    assert page.index("Question about **tides**") < page.index("newer")  # older was touched last
    assert "1 message" in page


def test_sidebar_shows_expired_badge(client, user, make_session):
    make_session("old", owner=user, timeout_seconds=1, at=timezone.now() - dt.timedelta(hours=1))
    assert "badge expired" in client.get("/").content.decode()


# ---------------------------------------------------------------------------------------------
# New conversation


def test_new_form_prefills_the_defaults(client, settings):
    settings.CONVO_MAX_MESSAGES = 77
    page = client.get("/").content.decode()
    assert 'name="max_messages" value="77"' in page
    assert 'name="max_tokens" value="8192"' in page
    assert 'name="timeout_seconds" value="2592000"' in page  # CONVO_CHAT_TIMEOUT_SECONDS, not the API's 3600
    assert re.search(r'name="persist_system_prompt"[^>]*checked', page)


def test_create_conversation(client, user):
    data = {"session_id": "my-chat", "system_prompt": "Be brief", "max_messages": 10, "max_tokens": 300,
            "timeout_seconds": "", "persist_system_prompt": "on"}  # fmt: skip
    response = client.post("/new/", data)
    assert response.status_code == 302 and response["Location"] == "/c/my-chat/"
    session = engine.session_get("my-chat", owner=user)
    assert (session.max_messages, session.max_tokens, session.timeout_seconds) == (10, 300, None)
    assert engine.messages_all(session)[0].content == "Be brief"


def test_create_with_htmx_redirects_the_client(client):
    data = {"max_messages": 10, "max_tokens": 300, "timeout_seconds": 60}
    response = client.post("/new/", data, **HX)
    assert response.status_code == 200 and response["HX-Redirect"].startswith("/c/")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_messages": 0, "max_tokens": 10}, "greater than or equal to 1"),
        ({"max_messages": "lots", "max_tokens": 10}, "Enter a whole number"),
        ({"max_messages": 5, "max_tokens": 10, "timeout_seconds": -1}, "greater than or equal to 0"),
        ({"max_messages": 5, "max_tokens": 99999999999}, "less than or equal to"),
        ({"session_id": "has space", "max_messages": 5, "max_tokens": 10}, "A session id is 1 to 128"),
        ({"max_messages": 5, "max_tokens": 10, "system_prompt": "nul\x00"}, "Null characters"),
    ],
)
def test_create_rejects_bad_values_inline(client, user, data, message):
    response = client.post("/new/", data, **HX)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert engine.session_list_for_user(user) == []


def test_create_with_a_taken_id(client, chat, user):
    response = client.post("/new/", {"session_id": "chat-1", "max_messages": 5, "max_tokens": 10})
    assert response.status_code == 422 and "That id is taken" in response.content.decode()


# ---------------------------------------------------------------------------------------------
# Chat page and composer


def test_chat_page_renders_messages_by_role(client, chat):
    add("chat-1", "user", "Hi")
    add("chat-1", "tool", "42", tool_call_id="call_7", name="calculator")
    add("chat-1", "assistant", "Hello *there*")
    page = client.get("/c/chat-1/").content.decode()
    assert seqs(page) == [1, 2, 3, 4]
    assert 'class="msg role-system"' in page and 'class="msg role-tool"' in page
    assert "<code>call_7</code>" in page and "calculator" in page
    assert "<em>there</em>" in page
    assert 'id="reply-stream"' in page
    assert 'ws-connect="/ws/sessions/chat-1/"' in page


def test_send_appends_and_returns_the_message(client, chat):
    response = client.post("/c/chat-1/send/", {"role": "user", "content": "Line 1\nLine 2"}, **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'hx-swap-oob="beforeend:#message-list"' in html and 'id="msg-2"' in html
    session = reload(chat)
    assert session.turn_count == 1
    assert engine.messages_all(session)[-1].content == "Line 1\nLine 2"


def test_send_without_htmx_redirects_back(client, chat):
    response = client.post("/c/chat-1/send/", {"role": "assistant", "content": "hand-written", "name": "bot"})
    assert response.status_code == 302 and response["Location"] == "/c/chat-1/"
    assert engine.messages_all(reload(chat))[-1].name == "bot"


def test_send_tool_message_with_call_id(client, chat):
    add("chat-1", "user", "q")
    client.post("/c/chat-1/send/", {"role": "tool", "content": "r", "tool_call_id": "c1", "name": "calc"}, **HX)
    msg = engine.messages_all(reload(chat))[-1]
    assert (msg.role, msg.tool_call_id, msg.name, msg.turn_number) == ("tool", "c1", "calc", 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"role": "user", "content": ""}, "the message is empty"),
        ({"role": "user", "content": "   \n "}, "the message is empty"),
        ({"role": "robot", "content": "x"}, "Select a valid choice"),
        ({"role": "tool", "content": "x"}, "needs the tool_call_id"),
        ({"role": "user", "content": "a\x00b"}, "Null characters are not allowed"),
    ],
)
def test_send_rejects_bad_input_and_stores_nothing(client, chat, data, message):
    response = client.post("/c/chat-1/send/", data, **HX)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert reload(chat).last_seq == 1


def test_send_over_the_length_limit(client, chat, settings):
    settings.CONVO_MAX_CONTENT_CHARS = 10
    response = client.post("/c/chat-1/send/", {"role": "user", "content": "x" * 11}, **HX)
    assert response.status_code == 422 and "the limit is 10" in response.content.decode()
    assert client.post("/c/chat-1/send/", {"role": "user", "content": "x" * 10}, **HX).status_code == 200
    assert reload(chat).last_seq == 2


def test_default_length_limit_is_32000(client, chat):
    assert client.post("/c/chat-1/send/", {"role": "user", "content": "y" * 32001}, **HX).status_code == 422
    assert client.post("/c/chat-1/send/", {"role": "user", "content": "y" * 32000}, **HX).status_code == 200


def test_send_to_an_expired_session(client, user, make_session):
    make_session("old", owner=user, timeout_seconds=1, at=timezone.now() - dt.timedelta(minutes=5))
    response = client.post("/c/old/send/", {"role": "user", "content": "hello?"}, **HX)
    assert response.status_code == 422 and "expired" in response.content.decode()
    page = client.get("/c/old/").content.decode()
    assert "This conversation has expired" in page and "Start fresh" in page


def test_start_fresh_replaces_an_expired_session(client, user, make_session):
    make_session("old", owner=user, system_prompt="Keep me", max_messages=7, timeout_seconds=1,
                 at=timezone.now() - dt.timedelta(minutes=5))  # fmt: skip
    add_old = Message.objects.filter(session__sid="old").count()
    assert add_old == 1
    response = client.post("/c/old/fresh/")
    assert response.status_code == 302
    session = engine.session_get_live("old", owner=user)
    assert session.max_messages == 7 and engine.messages_all(session)[0].content == "Keep me"
    assert client.post("/c/old/send/", {"role": "user", "content": "again"}, **HX).status_code == 200


def test_csrf_is_enforced(user, chat):
    c = Client(HTTP_HOST="localhost", enforce_csrf_checks=True)
    c.force_login(user)
    assert c.post("/c/chat-1/send/", {"role": "user", "content": "x"}, **HX).status_code == 403
    page = c.get("/c/chat-1/").content.decode()
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
    response = c.post("/c/chat-1/send/", {"role": "user", "content": "x"}, HTTP_X_CSRFTOKEN=token, **HX)
    assert response.status_code == 200


# ---------------------------------------------------------------------------------------------
# XSS


XSS = [
    "<script>window.pwned=1</script>",
    '<img src=x onerror="window.pwned=1">',
    "[click](javascript:window.pwned=1)",
    '<a href="javascript:alert(1)">raw</a>',
    "![img](javascript:alert(1))",
    '<svg onload="alert(1)"></svg>',
]


@pytest.mark.parametrize("payload", XSS)
def test_markdown_never_lets_script_through(client, chat, payload):
    for role in ("user", "assistant"):
        add("chat-1", role, payload)
    page = client.get("/c/chat-1/").content.decode()
    body = page[page.index('id="message-list"') :]
    body = body[: body.index("</ol>")]
    assert "<script" not in body
    assert not re.search(r"<[^>]+\son\w+=", body)
    assert not re.search(r"<(a|img)\s[^>]*(href|src)=\"?javascript:", body)


# ---------------------------------------------------------------------------------------------
# Long conversations


def test_page_shows_newest_50_and_loads_earlier(client, chat):
    for i in range(120):
        add("chat-1", "user" if i % 2 == 0 else "assistant", f"m{i}")
    page = client.get("/c/chat-1/").content.decode()
    assert seqs(page) == list(range(72, 122))
    assert "/c/chat-1/messages/?before=72" in page
    older = client.get("/c/chat-1/messages/?before=72", **HX).content.decode()
    assert seqs(older) == list(range(22, 72))
    assert "?before=22" in older and 'hx-swap-oob="afterbegin:#message-list"' in older
    oldest = client.get("/c/chat-1/messages/?before=22", **HX).content.decode()
    assert seqs(oldest) == list(range(1, 22))
    assert "before=" not in oldest
    assert client.get("/c/chat-1/messages/?before=x").status_code == 400


def _chat_page_queries(client, django_assert_max_num_queries, n_queries):
    events.bump_library_version(engine.session_get("chat-1").owner_id)  # the sidebar is rendered, not cached
    with django_assert_max_num_queries(n_queries) as ctx:
        assert client.get("/c/chat-1/").status_code == 200
    return len(ctx.captured_queries)


def test_chat_page_query_count_does_not_grow_with_the_conversation(client, chat, django_assert_max_num_queries):
    """The page costs the same handful of queries for 4 messages as for 900 (no N+1 anywhere)."""
    engine.session_update("chat-1", config=engine.SessionConfig(max_messages=1000, max_tokens=50))
    for i in range(2):
        add("chat-1", "user", f"q{i}")
        add("chat-1", "assistant", f"a{i}")
    small = _chat_page_queries(client, django_assert_max_num_queries, 14)
    for i in range(300):
        add("chat-1", "user", f"question {i}")
        add("chat-1", "tool", "t", tool_call_id=f"c{i}")
        add("chat-1", "assistant", f"answer {i}")
    big = _chat_page_queries(client, django_assert_max_num_queries, 14)
    assert big == small


# ---------------------------------------------------------------------------------------------
# Timeline


def test_timeline_shows_turns_with_tool_calls_and_status(client, chat):
    add("chat-1", "user", "What is 6*7?")
    add("chat-1", "tool", "42", tool_call_id="call_1", name="calculator")
    add("chat-1", "assistant", "It is 42.")
    add("chat-1", "user", "Thanks")
    page = client.get("/c/chat-1/").content.decode()
    timeline = page[page.index('id="timeline"') : page.index('id="state-panel"')]
    assert 'id="turn-1" class="turn complete"' in timeline and 'id="turn-2" class="turn open"' in timeline
    assert "What is 6*7?" in timeline and "<code>call_1</code>" in timeline and "It is 42." in timeline
    assert " s</span>" in timeline  # a duration


def test_timeline_keeps_turns_whose_messages_left_the_list(client, user, make_session):
    make_session("short", owner=user, max_messages=2)
    for i in range(5):
        add("short", "user", f"question {i}")
        add("short", "assistant", f"answer {i}")
    page = client.get("/c/short/").content.decode()
    # The whole history shows (issue 11), the divider just above the session's list (9 and 10).
    assert seqs(page) == list(range(1, 11))
    assert page.index('id="msg-8"') < page.index('id="list-divider"') < page.index('id="msg-9"')
    assert 'id="turn-1"' in page and "question 0" in page


def test_a_reopened_page_shows_what_changed_around_unchanged_messages(client, user, make_session):
    """The message list is cached whole (issue 13): what changes without any message changing (the
    divider, when a smaller limit drops messages from the session's list) shows on the next load."""
    make_session("trim", owner=user, max_messages=10)
    for i in range(3):
        add("trim", "user", f"question {i}")
        add("trim", "assistant", f"answer {i}")
    first = client.get("/c/trim/").content.decode()
    assert re.search(r'id="list-divider"[^>]* hidden', first)  # nothing left the list yet
    listed = re.compile(r'<ol id="message-list".*?</ol>', re.S)
    assert listed.search(client.get("/c/trim/").content.decode())[0] == listed.search(first)[0]  # (as it was)
    engine.session_update("trim", config=engine.SessionConfig(max_messages=2))
    again = client.get("/c/trim/").content.decode()
    assert seqs(again) == list(range(1, 7))
    assert again.index('id="msg-4"') < again.index('id="list-divider"') < again.index('id="msg-5"')
    assert not re.search(r'id="list-divider"[^>]* hidden', again)


def test_timeline_pages_earlier_turns(client, chat):
    for i in range(25):
        add("chat-1", "user", f"q{i}")
    page = client.get("/c/chat-1/").content.decode()
    assert 'id="turn-6"' in page and 'id="turn-5"' not in page
    older = client.get("/c/chat-1/turns/?before=6", **HX).content.decode()
    assert re.findall(r'id="turn-(\d+)"', older) == ["1", "2", "3", "4", "5"]


# ---------------------------------------------------------------------------------------------
# State panel


def test_variables_add_edit_delete(client, chat):
    r = client.post("/c/chat-1/state/variables/", {"key": "city", "value": "Lyon"}, **HX)
    assert r.status_code == 200 and "Lyon" in r.content.decode()
    client.post("/c/chat-1/state/variables/", {"key": "city", "value": "Nantes"}, **HX)
    assert reload(chat).variables == {"city": "Nantes"}
    r = client.post("/c/chat-1/state/variables/delete/", {"key": "city"}, **HX)
    assert r.status_code == 200 and reload(chat).variables == {}


def test_variable_needs_a_key(client, chat):
    r = client.post("/c/chat-1/state/variables/", {"key": "", "value": "v"}, **HX)
    assert r.status_code == 422 and "field-error" in r.content.decode()
    assert reload(chat).variables == {}


def test_data_json_edit_and_invalid_json(client, chat):
    r = client.post("/c/chat-1/state/data/", {"key": "prefs", "value": '{"units": "metric", "n": [1, 2]}'}, **HX)
    assert r.status_code == 200
    assert reload(chat).data == {"prefs": {"units": "metric", "n": [1, 2]}}
    r = client.post("/c/chat-1/state/data/", {"key": "prefs", "value": '{"units": '}, **HX)
    html = r.content.decode()
    assert r.status_code == 422 and "Not valid JSON" in html
    assert "{&quot;units&quot;: " in html  # the user's text is kept for fixing
    assert reload(chat).data == {"prefs": {"units": "metric", "n": [1, 2]}}
    client.post("/c/chat-1/state/data/delete/", {"key": "prefs"}, **HX)
    assert reload(chat).data == {}


def test_state_write_without_htmx_redirects(client, chat):
    r = client.post("/c/chat-1/state/variables/", {"key": "a", "value": "b"})
    assert r.status_code == 302
    r = client.post("/c/chat-1/state/data/", {"key": "a", "value": "nope"})
    assert r.status_code == 422 and "Not valid JSON" in r.content.decode()


# ---------------------------------------------------------------------------------------------
# Context panel


def test_context_panel_budget_and_cut(client, chat):
    add("chat-1", "user", "x" * 40)  # 11 tokens
    add("chat-1", "assistant", "y" * 40)  # 11 tokens
    add("chat-1", "user", "z" * 40)  # 11 tokens
    r = client.get("/c/chat-1/context/?budget=30", **HX)
    html = r.content.decode()
    assert r.status_code == 200
    assert re.findall(r'class="ctx role-\w+" data-seq="(\d+)"', html) == ["1", "3", "4"]
    assert "cut before #2" in html and 'data-total="26"' in html and 'data-budget="30"' in html
    full = client.get("/c/chat-1/context/", **HX).content.decode()
    assert 'data-budget="8192"' in full and "cut before" not in full


def test_context_panel_rejects_a_bad_budget(client, chat):
    r = client.get("/c/chat-1/context/?budget=-3", **HX)
    assert r.status_code == 422 and "field-error" in r.content.decode()


def test_context_panel_summarises_long_windows(client, chat):
    for i in range(80):
        add("chat-1", "user", f"m{i}")
    html = client.get("/c/chat-1/context/", **HX).content.decode()
    assert len(re.findall(r'class="ctx role-', html)) == 51  # the system prompt + the newest 50
    assert "30 earlier messages (#2–#31)" in html
    everything = client.get("/c/chat-1/context/?all=1", **HX).content.decode()
    assert len(re.findall(r'class="ctx role-', everything)) == 81


# ---------------------------------------------------------------------------------------------
# Session actions


def test_edit_settings(client, chat):
    data = {"system_prompt": "You are verbose.", "max_messages": 3, "max_tokens": 100, "timeout_seconds": 10,
            "persist_system_prompt": "on"}  # fmt: skip
    r = client.post("/c/chat-1/edit/", data, **HX)
    assert r.status_code == 200 and "Saved." in r.content.decode()
    session = reload(chat)
    assert (session.max_messages, session.max_tokens, session.timeout_seconds) == (3, 100, 10)
    assert engine.messages_all(session)[0].content == "You are verbose."


def test_edit_settings_rejects_bad_values(client, chat):
    r = client.post("/c/chat-1/edit/", {"max_messages": "0", "max_tokens": "x"}, **HX)
    assert r.status_code == 422
    html = r.content.decode()
    assert "greater than or equal to 1" in html and "Enter a whole number" in html
    assert reload(chat).max_messages == 1000


def test_clear_needs_confirmation(client, chat):
    add("chat-1", "user", "hello")
    assert client.post("/c/chat-1/clear/").status_code == 400
    assert reload(chat).message_count == 2
    r = client.post("/c/chat-1/clear/", {"confirm": "yes"}, **HX)
    assert r.status_code == 200 and r["HX-Redirect"] == "/c/chat-1/"
    session = reload(chat)
    assert session.message_count == 1 and session.turn_count == 0


def test_delete_needs_confirmation(client, chat, user):
    assert client.post("/c/chat-1/delete/").status_code == 400
    r = client.post("/c/chat-1/delete/", {"confirm": "yes"})
    assert r.status_code == 302 and r["Location"] == reverse("home")
    assert engine.session_list_for_user(user) == []
    assert client.get("/c/chat-1/").status_code == 404


@pytest.mark.parametrize("view", ["clear", "delete"])
def test_clear_and_delete_of_a_session_deleted_meanwhile_are_404(client, chat, monkeypatch, view):
    """The session vanishes between the view's read and its write (another tab deleted it): both
    views answer 404, not a server error."""
    name = {"clear": "session_clear_messages", "delete": "session_delete"}[view]
    write, delete = getattr(engine, name), engine.session_delete

    def deleted_first(session_id, **kwargs):
        delete(session_id)
        return write(session_id, **kwargs)

    monkeypatch.setattr(engine, name, deleted_first)
    assert client.post(f"/c/chat-1/{view}/", {"confirm": "yes"}, **HX).status_code == 404
    assert not engine.session_list()


def test_wrong_methods(client, chat):
    assert client.get("/c/chat-1/send/").status_code == 405
    assert client.post("/c/chat-1/").status_code == 405
