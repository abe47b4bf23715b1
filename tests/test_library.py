"""The library (issue 11) and the sidebar's cost (issue 13): titles, pin and archive, the sidebar's
sections, its one query and its per-user cache, the whole history on the chat page, the chat's own
timeout, and the API's library fields."""

import datetime as dt
import re

import pytest
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions_app import engine, events, rendering
from sessions_app.models import ConversationSession

from .conftest import add
from .test_api_contract import api_for

HX = {"HTTP_HX_REQUEST": "true"}

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(user):
    c = Client()
    c.force_login(user)
    return c


def titles_in(html):
    return re.findall(r'<span class="session-title">([^<]*)</span>', html)


def age(session_id, owner, **delta):
    """Move a session's last activity back in time (as if it had been idle)."""
    when = timezone.now() - dt.timedelta(**delta)
    ConversationSession.objects.filter(sid=session_id, owner=owner).update(updated_at=when)


# ---------------------------------------------------------------------------------------------
# Titles


def test_the_first_user_message_titles_the_conversation(user):
    engine.session_create("t", owner=user, system_prompt="Be brief.")
    add("t", "system", "a system note")
    add("t", "assistant", "an assistant greeting")
    assert engine.session_get("t").title == ""  # only a user message gives a title
    add("t", "user", "\n\n   How do   tides\twork?  \nAnd why twice a day?")
    add("t", "user", "A second question")
    assert engine.session_get("t").title == "How do tides work?"


def test_a_long_first_message_is_cut_at_a_word():
    engine.session_create("long")
    add("long", "user", "word " * 100)
    title = engine.session_get("long").title
    assert title.endswith("…") and len(title) <= engine.values.AUTO_TITLE_CHARS
    assert "  " not in title and not title[:-1].endswith(" ")


def test_a_renamed_conversation_keeps_its_name(user):
    engine.session_create("r", owner=user)
    engine.session_set_library("r", owner=user, title="  My   name ")
    add("r", "user", "first question")
    assert engine.session_get("r").title == "My name"


@pytest.mark.django_db(transaction=True)
def test_titles_on_the_fast_append_path_too(user):
    """Outside a transaction (PostgreSQL's one-statement append, when it runs) the title is set too, and
    a rename made between the read and the write is not overwritten (title = '' is the write's test)."""
    engine.session_create("fast", owner=user)
    add("fast", "user", "Fast path title")
    add("fast", "user", "not this one")
    assert engine.session_get("fast", owner=user).title == "Fast path title"


def test_library_changes_check_their_input(user):
    engine.session_create("c", owner=user)
    with pytest.raises(engine.SessionValidationError):
        engine.session_set_library("c", owner=user, title="a\x00b")
    with pytest.raises(engine.SessionValidationError):
        engine.session_set_library("c", owner=user, title="lone \ud800 surrogate")
    with pytest.raises(engine.SessionValidationError):
        engine.session_set_library("c", owner=user, title="x" * 201)
    with pytest.raises(engine.SessionValidationError):
        engine.session_set_library("c", owner=user, pinned="yes")
    with pytest.raises(engine.SessionNotFound):
        engine.session_set_library("c", owner=None, pinned=True)


def test_library_changes_are_not_activity(user, now):
    session = engine.session_create("a", owner=user, config=engine.SessionConfig(timeout_seconds=60), now=now)
    engine.session_set_library(
        "a", owner=user, title="Kept", pinned=True, archived=True, now=now + dt.timedelta(hours=2)
    )
    after = engine.session_get("a")
    assert (after.title, after.pinned, after.archived) == ("Kept", True, True)
    assert (after.updated_at, after.expires_at) == (session.updated_at, session.expires_at)  # expired, and stays


def test_library_version_moves_after_commit_only(user, django_capture_on_commit_callbacks, settings):
    # In the writer, as with the in-memory layer (with Redis an append's bump is the sender thread's:
    # test_library_live covers that path end to end).
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    engine.session_create("v", owner=user)
    before = events.library_version(user.pk)
    with pytest.raises(RuntimeError), transaction.atomic():
        engine.session_set_library("v", owner=user, pinned=True)
        raise RuntimeError("rolled back")
    assert events.library_version(user.pk) == before
    with django_capture_on_commit_callbacks(execute=True):
        engine.session_set_library("v", owner=user, pinned=True)
    assert events.library_version(user.pk) == before + 1
    with django_capture_on_commit_callbacks(execute=True):
        add("v", "user", "activity moves it up the sidebar")
    assert events.library_version(user.pk) == before + 2
    # An evicted version starts again from the clock: never a version an old sidebar was cached under.
    from django.core.cache import caches

    caches["library"].delete(events.library_version_key(user.pk))
    events.bump_library_version(user.pk)
    assert events.library_version(user.pk) > before + 2


# ---------------------------------------------------------------------------------------------
# The sidebar


def test_sidebar_sections_by_day_pinned_first_archived_apart(client, user, other_user):
    for sid in ("today", "yesterday", "lastweek", "old", "pinned-old", "archived"):
        engine.session_create(sid, owner=user)
        add(sid, "user", f"about {sid}")
    engine.session_create("theirs", owner=other_user)
    age("yesterday", user, days=1)
    age("lastweek", user, days=5)
    age("old", user, days=40)
    age("pinned-old", user, days=90)
    engine.session_set_library("pinned-old", owner=user, pinned=True)
    engine.session_set_library("archived", owner=user, archived=True)
    html = client.get("/").content.decode()
    sidebar = html[html.index('id="sidebar-sections"') : html.index('id="sidebar-archived"')]
    headings = re.findall(r'<h3 class="section-title">([^<]*)</h3>', sidebar)
    assert headings == ["Pinned", "Today", "Yesterday", "Previous 7 days", "Older"]
    assert titles_in(sidebar) == ["about pinned-old", "about today", "about yesterday", "about lastweek", "about old"]
    assert "theirs" not in html and "about archived" not in sidebar
    archived = client.get("/sidebar/?archived=1", **HX).content.decode()
    assert titles_in(archived) == ["about archived"] and "Unarchive" in archived


def test_sidebar_days_are_the_viewers(user):
    """The same moment is "Today" in Tokyo and "Yesterday" in Honolulu; the page's cookie picks the zone."""
    from zoneinfo import ZoneInfo

    engine.session_create("tz", owner=user)
    touched = dt.datetime(2026, 5, 1, 23, 0, tzinfo=dt.UTC)  # May 2, 08:00 in Tokyo; May 1, 13:00 in Honolulu
    at = dt.datetime(2026, 5, 2, 11, 0, tzinfo=dt.UTC)  # May 2, 20:00 in Tokyo; May 2, 01:00 in Honolulu
    ConversationSession.objects.filter(sid="tz").update(updated_at=touched, expires_at=None)

    def labels(zone):
        return [s["label"] for s in rendering.sidebar_sections(user, tz=ZoneInfo(zone), now=at)["sections"]]

    assert labels("Asia/Tokyo") == ["Today"]
    assert labels("Pacific/Honolulu") == ["Yesterday"]
    assert str(rendering.viewer_timezone({"convo_tz": "Asia/Tokyo"})) == "Asia/Tokyo"
    assert rendering.viewer_timezone({"convo_tz": "../../etc/passwd"}) == timezone.get_default_timezone()
    assert rendering.viewer_timezone({}) == timezone.get_default_timezone()


def _sidebar_queries(user):
    events.bump_library_version(user.pk)  # not from the cache
    with CaptureQueriesContext(connection) as ctx:
        html = rendering.sidebar_html(user)
    return len(ctx.captured_queries), html


def test_sidebar_is_one_query_whatever_the_number_of_conversations(user, settings):
    settings.CONVO_SIDEBAR_PAGE_SIZE = 30
    for i in range(3):
        engine.session_create(f"few-{i}", owner=user)
        add(f"few-{i}", "user", f"question {i}")
    few, html = _sidebar_queries(user)
    assert len(titles_in(html)) == 3 and "revealed" not in html
    for i in range(80):
        engine.session_create(f"many-{i}", owner=user)
        add(f"many-{i}", "user", f"question {i}")
    many, html = _sidebar_queries(user)
    assert few == many == 1
    assert len(titles_in(html)) == 30  # the first page; the rest loads as it scrolls into view
    assert 'hx-trigger="revealed"' in html and "offset=30" in html


def test_sidebar_pages_load_on_scroll_without_repeating_a_heading(client, user, settings):
    settings.CONVO_SIDEBAR_PAGE_SIZE = 4
    for i in range(10):
        engine.session_create(f"s{i}", owner=user)
        add(f"s{i}", "user", f"q{i}")
    first = client.get("/").content.decode()
    assert titles_in(first) == ["q9", "q8", "q7", "q6"]
    second = client.get("/sidebar/?offset=4&after=Today", **HX).content.decode()
    assert titles_in(second) == ["q5", "q4", "q3", "q2"] and "section-title" not in second
    third = client.get("/sidebar/?offset=8&after=Today", **HX).content.decode()
    assert titles_in(third) == ["q1", "q0"] and "revealed" not in third
    assert client.get("/sidebar/?offset=-1").status_code == 400
    assert client.get("/sidebar/?offset=x").status_code == 400


def test_chat_pages_take_the_sidebar_from_the_cache_until_the_user_changes_something(
    client, user, django_capture_on_commit_callbacks
):
    engine.session_create("one", owner=user)
    engine.session_create("two", owner=user)
    client.get("/c/one/")
    with CaptureQueriesContext(connection) as ctx:
        page = client.get("/c/two/").content.decode()
    assert not [q for q in ctx.captured_queries if "ORDER BY" in q["sql"] and '"pinned" DESC' in q["sql"]]
    assert titles_in(page) == ["two", "one"]
    with django_capture_on_commit_callbacks(execute=True):
        engine.session_set_library("one", owner=user, title="Renamed")
    page = client.get("/c/two/").content.decode()
    assert titles_in(page) == ["two", "Renamed"]


def test_rename_pin_archive_from_the_sidebar(client, user, other_user, django_capture_on_commit_callbacks):
    engine.session_create("a", owner=user)
    engine.session_create("b", owner=user)
    engine.session_create("x", owner=other_user)
    with django_capture_on_commit_callbacks(execute=True):
        html = client.post("/c/a/title/", {"title": "Alpha"}, **HX).content.decode()
    assert 'id="sidebar-sections"' in html and "Alpha" in titles_in(html)
    refused = client.post("/c/a/title/", {"title": "x" * 201}, **HX)
    assert refused.status_code == 422 and refused["HX-Reswap"] == "none"  # the sidebar stays as it is
    assert engine.session_get("a").title == "Alpha"
    with django_capture_on_commit_callbacks(execute=True):
        html = client.post("/c/a/pin/", {"pinned": "1"}, **HX).content.decode()
    assert re.findall(r'<h3 class="section-title">([^<]*)</h3>', html)[0] == "Pinned" and "Unpin" in html
    with django_capture_on_commit_callbacks(execute=True):
        html = client.post("/c/b/archive/", {"archived": "1"}, **HX).content.decode()
    assert titles_in(html) == ["Alpha"]
    assert engine.session_get("b").archived
    assert client.post("/c/a/pin/", {"pinned": "maybe"}).status_code == 400
    assert client.post("/c/a/archive/", {}).status_code == 400
    assert client.post("/c/x/pin/", {"pinned": "1"}).status_code == 404  # another user's
    assert client.post("/c/x/title/", {"title": "mine now"}).status_code == 404
    assert engine.session_get("x").title == "" and not engine.session_get("x").pinned
    # Without htmx: back to the page.
    response = client.post("/c/a/archive/", {"archived": "0"})
    assert response.status_code == 302


def test_rename_in_the_header(client, user):
    engine.session_create("h", owner=user)
    html = client.post("/c/h/title/", {"title": "Header name", "where": "header"}, **HX).content.decode()
    assert 'id="session-title"' in html and 'data-title="Header name"' in html
    html = client.post("/c/h/title/", {"title": "x" * 300, "where": "header"}, **HX)
    assert html.status_code == 422 and "at most 200" in html.content.decode()
    page = client.get("/c/h/").content.decode()
    assert "<title>Header name · Convo</title>" in page
    response = client.post("/c/h/title/", {"title": "Plain form"})
    assert response.status_code == 302 and engine.session_get("h").title == "Plain form"


def test_new_chat_in_one_click_takes_the_chat_timeout(client, user, settings):
    response = client.post("/new/", {"quick": "1"})
    assert response.status_code == 302
    [session] = ConversationSession.objects.filter(owner=user)
    assert response["Location"] == f"/c/{session.sid}/"
    assert session.timeout_seconds == 30 * 24 * 3600 and session.max_messages == settings.CONVO_MAX_MESSAGES
    settings.CONVO_CHAT_TIMEOUT_SECONDS = None
    client.post("/new/", {"quick": "1"})
    assert ConversationSession.objects.filter(owner=user, timeout_seconds__isnull=True).count() == 1
    # The API's and the engine's default stay the spec's 3600 s.
    assert engine.SessionConfig.default().timeout_seconds == 3600
    page = client.get("/").content.decode()
    assert 'name="timeout_seconds" value=""' in page or 'name="timeout_seconds"' in page
    assert "<summary>Settings</summary>" in page and "New chat" in page


# ---------------------------------------------------------------------------------------------
# The whole history


@pytest.fixture
def long_chat(user):
    engine.session_create("long", owner=user, config=engine.SessionConfig(max_messages=100, max_tokens=100000))
    for i in range(160):
        add("long", "user", f"question {i}")
        add("long", "assistant", f"answer {i}")
    return engine.session_get("long")


def seqs(html):
    return [int(s) for s in re.findall(r'id="msg-(\d+)"', html)]


def test_the_chat_page_pages_through_the_whole_history(client, long_chat, settings):
    assert long_chat.message_count == 100 and long_chat.low_seq == 221
    page = client.get("/c/long/").content.decode()
    assert seqs(page) == list(range(271, 321))  # the newest page, all in the list
    divider = re.search(r'<li id="list-divider"[^>]*>', page).group(0)
    assert "hidden" in divider and 'data-unlisted="1"' in divider  # its place is on an older page
    assert "320 messages in history" in page and "100 in the list" in page
    shown = seqs(page)
    before = shown[0]
    while True:
        older = client.get(f"/c/long/messages/?before={before}", **HX).content.decode()
        got = seqs(older)
        if not got:
            break
        shown = got + shown
        before = got[0]
        if "Load earlier" not in older:
            break
    assert shown == list(range(1, 321))
    # Without JavaScript the page holding the boundary shows the divider just above message 221.
    plain = client.get("/c/long/messages/?before=241").content.decode()
    assert plain.index('id="msg-220"') < plain.index('id="list-divider"') < plain.index('id="msg-221"')
    assert "above: kept in history, no longer in the session's list of 100 — not sent to the model" in plain


def test_the_timeline_and_the_api_agree_with_the_page(long_chat, user):
    api = api_for(user)
    listed = api.get("/sessions/long/messages?limit=500").json()
    assert listed["count"] == 100 and [m["seq"] for m in listed["items"]] == list(range(221, 321))
    history = api.get("/sessions/long/messages?history=true&limit=500").json()
    assert history["count"] == 320 and [m["seq"] for m in history["items"]] == list(range(1, 321))
    page = api.get("/sessions/long/messages?history=true&after=300&limit=10").json()
    assert [m["seq"] for m in page["items"]] == list(range(301, 311)) and page["next_after"] == 310
    assert len(engine.turns(long_chat, numbers=range(1, 161))) == 160  # every turn, as the timeline shows


def test_an_expired_conversation_stays_readable_with_continue_and_start_fresh(client, user, settings, now):
    engine.session_create("idle", owner=user, config=engine.SessionConfig(timeout_seconds=60), now=now)
    add("idle", "user", "kept question", now=now)
    add("idle", "assistant", "kept answer", now=now)
    page = client.get("/c/idle/").content.decode()
    assert "This conversation has expired" in page
    assert "kept question" in page and "kept answer" in page
    assert "Start fresh" in page
    # Continue posts to the branches work's URL; it shows only where that URL exists.
    has_continue = rendering.continue_url(engine.session_get("idle")) is not None
    assert ("/c/idle/continue/" in page) == has_continue


def test_continue_is_offered_where_the_url_exists(client, user, settings, now):
    settings.ROOT_URLCONF = "tests.urls_with_continue"
    engine.session_create("idle", owner=user, config=engine.SessionConfig(timeout_seconds=60), now=now)
    page = client.get("/c/idle/").content.decode()
    assert 'action="/c/idle/continue/"' in page and ">Continue</button>" in page


# ---------------------------------------------------------------------------------------------
# The API


def test_api_patch_renames_pins_and_archives(user, other_user):
    api = api_for(user)
    api.put("/sessions/p")
    api.post("/sessions/p/messages", {"role": "user", "content": "Why is the sky blue?"})
    body = api.get("/sessions/p").json()
    assert (body["title"], body["pinned"], body["archived"]) == ("Why is the sky blue?", False, False)
    r = api.call("PATCH", "/sessions/p", {"title": "Sky", "pinned": True})
    assert r.status_code == 200 and (r.json()["title"], r.json()["pinned"]) == ("Sky", True)
    assert r.json()["updated_at"] == body["updated_at"]  # not activity
    r = api.call("PATCH", "/sessions/p", {"archived": True})
    assert r.json()["archived"] and r.json()["title"] == "Sky" and r.json()["pinned"]
    listed = api.get("/sessions").json()["items"][0]
    assert (listed["title"], listed["pinned"], listed["archived"]) == ("Sky", True, True)
    for bad in ({"title": None}, {"title": "a\x00"}, {"title": "x" * 201}, {"pinned": "yes"}, {"color": "red"}):
        r = api.call("PATCH", "/sessions/p", bad)
        assert r.status_code == 422, bad
    assert api.get("/sessions/p").json()["title"] == "Sky"
    assert api_for(other_user).call("PATCH", "/sessions/p", {"title": "theirs"}).status_code == 404


# ---------------------------------------------------------------------------------------------
# The migration


@pytest.mark.django_db(transaction=True)
def test_0010_titles_existing_conversations_from_their_first_user_message(user):
    from django.db.migrations.executor import MigrationExecutor

    engine.session_create("old", owner=user)
    add("old", "assistant", "hello")
    add("old", "user", "  The first question\nsecond line")
    add("old", "user", "The second question")
    engine.session_create("named", owner=user)
    add("named", "user", "question")
    engine.session_set_library("named", owner=user, title="Named by hand")
    engine.session_create("empty", owner=user)
    ConversationSession.objects.filter(sid="old").update(title="")
    executor = MigrationExecutor(connection)
    [before] = [p.key for p in executor.loader.graph.node_map[("sessions_app", "0010_library")].parents]
    executor.migrate([before])
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes("sessions_app"))
    titles = dict(ConversationSession.objects.values_list("sid", "title"))
    assert titles == {"old": "The first question", "named": "Named by hand", "empty": ""}


# ---------------------------------------------------------------------------------------------
# Titles from the model (CONVO_AUTO_TITLE=model, the openai responder against tests/fake_openai.py)


@pytest.mark.django_db(transaction=True)
def test_the_model_titles_the_conversation_after_its_first_reply(fake_llm, user, settings):
    from .fake_openai import text_chunks
    from .replies_support import drain_replies, reply_to

    settings.CONVO_AUTO_TITLE = "model"
    engine.session_create("m", owner=user)
    fake_llm.stream(*text_chunks("Tides come from the ", "Moon's pull."))
    fake_llm.stream(*text_chunks('"Why tides ', 'happen."\n'))
    reply = reply_to("m", "can you explain to me why there are tides on earth?", owner=user)
    drain_replies()
    assert reply.status == "done"
    assert engine.session_get("m").title == "Why tides happen"
    title_request = fake_llm.requests[1]["json"]
    assert title_request["messages"][0]["role"] == "system" and "title" in title_request["messages"][0]["content"]
    assert "why there are tides" in title_request["messages"][1]["content"]
    assert "Moon's pull." in title_request["messages"][1]["content"] and "tools" not in title_request
    # Later turns ask for no title.
    fake_llm.stream(*text_chunks("Twice a day."))
    reply_to("m", "How often?", owner=user)
    drain_replies()
    assert len(fake_llm.requests) == 3 and engine.session_get("m").title == "Why tides happen"


@pytest.mark.django_db(transaction=True)
def test_a_failed_title_request_keeps_the_first_title_and_a_rename_wins(fake_llm, user, settings):
    from .fake_openai import text_chunks
    from .replies_support import drain_replies, reply_to

    settings.CONVO_AUTO_TITLE = "model"
    engine.session_create("f", owner=user)
    fake_llm.stream(*text_chunks("An answer."))
    fake_llm.error(500, {"error": {"message": "overloaded"}})
    reply = reply_to("f", "First question here", owner=user)
    drain_replies()
    assert reply.status == "done" and engine.session_get("f").title == "First question here"

    from sessions_app.replies import titles
    from sessions_app.replies.responders import OpenAIResponder

    settings.CONVO_AUTO_TITLE = "first"
    engine.session_create("g", owner=user)
    fake_llm.stream(*text_chunks("An answer."))
    reply = reply_to("g", "Question", owner=user)
    drain_replies()
    engine.session_set_library("g", owner=user, title="Mine")
    fake_llm.stream(*text_chunks("Model title"))
    assert titles.title_from_model(reply, OpenAIResponder.from_settings(), "An answer.") is None
    assert engine.session_get("g").title == "Mine"  # a person's rename wins over the model
    assert titles.clean_title('Title: "Ocean tides explained."') == "Ocean tides explained"


def test_without_the_setting_no_title_request(settings):
    from sessions_app.replies import titles

    settings.CONVO_AUTO_TITLE = "first"
    reply = type("R", (), {"turn_number": 1, "regenerate": False})
    assert not titles.wanted(reply, type("O", (), {"name": "openai"}))
    settings.CONVO_AUTO_TITLE = "model"
    assert titles.wanted(reply, type("O", (), {"name": "openai"}))
    assert not titles.wanted(reply, type("B", (), {"name": "builtin"}))


def test_an_import_shows_in_the_cached_sidebar(client, user, django_capture_on_commit_callbacks):
    """Imported conversations join the sidebar at once (the import bumps the user's library version)."""
    import io

    from .transfer_support import fixture

    engine.session_create("here", owner=user)
    assert titles_in(client.get("/c/here/").content.decode()) == ["here"]  # now cached
    upload = io.BytesIO(fixture("chatgpt_conversations.json"))
    upload.name = "conversations.json"
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/import/", {"file": upload}).status_code in (200, 201)
    titles = titles_in(client.get("/c/here/").content.decode())
    assert len(titles) > 1 and "here" in titles
