"""Full-text search (engine.search): the query language, owner scoping, the whole history, the indexes
kept in step on every write, ranking, snippets and pages — with the same expected results on SQLite
(FTS5) and PostgreSQL (tsvector), so that passing on both configurations shows they agree."""

import datetime as dt
import re

import pytest
from django.db import connection

from sessions_app import engine
from sessions_app.engine import search_schema
from sessions_app.engine.search import Alternative, Phrase, parse_query, search
from sessions_app.models import ConversationSession, Message

from .conftest import ON_POSTGRES, add

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC)


def found(page):
    return [(hit.session_id, hit.seq) for hit in page.hits]


def titled(session, title):
    ConversationSession.objects.filter(pk=session.pk).update(title=title)


# ---------------------------------------------------------------------------------------------
# The query language (websearch_to_tsquery's)


def test_words_phrases_exclusions_and_or():
    q = parse_query('Tomato "green  Pepper" -rain -"cold day" or basil')
    assert q.alternatives == (
        Alternative(
            include=(Phrase(("tomato",)), Phrase(("green", "pepper"))),
            exclude=(Phrase(("rain",)), Phrase(("cold", "day"))),
        ),
        Alternative(include=(Phrase(("basil",)),)),
    )
    assert q.canonical == 'tomato "green pepper" -rain -"cold day" or basil'
    assert q.ranked == 'tomato "green pepper" or basil'
    assert q.fts5 == '(("tomato" AND "green pepper") NOT ("rain" OR "cold day")) OR ("basil")'


def test_words_are_runs_of_letters_and_digits():
    """Punctuation splits words as the indexes do: foo-bar, example.com and 3.11 are phrases of two."""
    q = parse_query("foo-bar example.com 3.11 x_y Ünïcode")
    assert [p.words for p in q.alternatives[0].include] == [
        ("foo", "bar"),
        ("example", "com"),
        ("3", "11"),
        ("x", "y"),
        ("ünïcode",),
    ]


def test_or_at_the_edges_and_unclosed_quotes():
    assert parse_query("or tomato or").canonical == "tomato"
    assert parse_query('"green pepper').canonical == '"green pepper"'
    assert parse_query("a OR b").canonical == "a or b"
    assert parse_query('"or"').canonical == '"or"'  # the word itself, quoted


@pytest.mark.parametrize(
    ("q", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("!!! ... ---", "no words"),
        ("-rain", "needs a word to find"),
        ("tomato or -rain", "needs a word to find"),
        ("x" * 501, "too long"),
        ("a\x00b", "NUL"),
        (" ".join(["w"] * 33), "too many words"),
        (None, "must be a string"),
    ],
)
def test_queries_with_nothing_to_search_for_are_refused(q, message):
    with pytest.raises(engine.SessionValidationError, match=message) as exc:
        parse_query(q)
    assert exc.value.field == "q"


# ---------------------------------------------------------------------------------------------
# A corpus whose ranking is unambiguous: equal-length messages (8 words) whose matches differ in
# how often the words occur, so ts_rank (length-normalised) and bm25 order them alike.

ALICE_A = [  # session "garden", title "Garden planning"
    "tomato tomato tomato soil water light seed row",
    "tomato tomato soil water light seed row bed",
    "green pepper green pepper plant pot sun day",
    "pepper basil basil oil salt lemon garlic onion",
]
ALICE_B = [  # session "kitchen", title "Kitchen remodel", max_messages 3: its first two left the list
    "tomato soil water light seed row bed fence",
    "green pepper plant pot sun day rain wind",
    "pepper pepper green plant pot sun rain wind",
    "cucumber salad mint yogurt dill water ice cold",
    "garden hose garden tap water pipe leak fix",
]


@pytest.fixture
def corpus(user, other_user, make_session):
    garden = make_session("garden", owner=user, max_messages=100)
    kitchen = make_session("kitchen", owner=user, max_messages=3)
    filler = make_session("filler", owner=user)
    theirs = make_session("garden", owner=other_user)  # the same id and words, another user's
    for i, text in enumerate(ALICE_A):
        add(garden.pk, "user" if i % 2 == 0 else "assistant", text, now=T0 + dt.timedelta(minutes=i))
        add(theirs.pk, "user", text, now=T0)
    for i, text in enumerate(ALICE_B):
        add(kitchen.pk, "user" if i % 2 == 0 else "assistant", text, now=T0 + dt.timedelta(minutes=10 + i))
        add(theirs.pk, "user", text, now=T0)
    for i in range(30):
        add(filler.pk, "user", f"note{i} alpha beta gamma delta epsilon zeta eta", now=T0)
    titled(garden, "Garden planning")
    titled(kitchen, "Kitchen remodel")
    titled(theirs, "Garden planning")
    return garden, kitchen


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("tomato", [("garden", 1), ("garden", 2), ("kitchen", 1)]),
        ("TOMATO", [("garden", 1), ("garden", 2), ("kitchen", 1)]),
        ('"green pepper"', [("garden", 3), ("kitchen", 2)]),
        ("green pepper", [("garden", 3), ("kitchen", 3), ("kitchen", 2)]),
        ("pepper -rain", [("garden", 3), ("garden", 4)]),
        ('pepper -"rain wind" -basil', [("garden", 3)]),
        ("basil or cucumber", [("garden", 4), ("kitchen", 4)]),
        ("garden", [("garden", None), ("kitchen", 5)]),  # the title first, then the messages
        ("planning or hose", [("garden", None), ("kitchen", 5)]),
        ("nothing-like-it", []),
    ],
)
def test_same_results_and_order_on_both_databases(user, corpus, q, expected):
    """The same expected list on SQLite (FTS5, bm25) and PostgreSQL (tsvector, ts_rank): the two
    configurations agree on what matches and on the order."""
    page = search(user, q)
    assert found(page) == expected
    assert [hit.rank for hit in page.hits if hit.kind == "message"] == sorted(
        (hit.rank for hit in page.hits if hit.kind == "message"), reverse=True
    )


def test_never_another_users_conversations(user, other_user, corpus):
    mine = search(user, "tomato")
    theirs = search(other_user, "tomato")
    assert {hit.session_key for hit in mine.hits}.isdisjoint({hit.session_key for hit in theirs.hits})
    assert all(ConversationSession.objects.get(pk=hit.session_key).owner_id == user.pk for hit in mine.hits)
    assert len(theirs.hits) == 3 and {hit.session_id for hit in theirs.hits} == {"garden"}


def test_a_user_without_conversations_finds_nothing(django_user_model, corpus):
    nobody = django_user_model.objects.create_user("carol")
    assert search(nobody, "tomato").hits == []


def test_whole_history_counts(user, corpus):
    """Messages that left the session's list (max_messages) are still stored rows, and found."""
    garden, kitchen = corpus
    kitchen = engine.session_get(kitchen.pk)
    assert kitchen.low_seq > 2  # kitchen #1 and #2 are no longer in its list
    assert ("kitchen", 1) in found(search(user, "fence"))
    assert ("kitchen", 2) in found(search(user, '"rain wind" green'))


def test_hits_carry_what_the_results_show(user, corpus):
    title_hit, message_hit = search(user, "garden").hits
    assert (title_hit.kind, title_hit.title, title_hit.seq, title_hit.role) == ("title", "Garden planning", None, None)
    assert title_hit.snippet == "<mark>Garden</mark> planning"
    assert (message_hit.kind, message_hit.title, message_hit.seq, message_hit.role) == (
        "message",
        "Kitchen remodel",
        5,
        "user",
    )
    assert message_hit.created_at == T0 + dt.timedelta(minutes=14)
    assert message_hit.snippet.count("<mark>") == 2 and "hose" in message_hit.snippet


# ---------------------------------------------------------------------------------------------
# Snippets: safe HTML


def test_snippets_escape_everything_but_the_marks(user, make_session):
    s = make_session("html", owner=user)
    add(s.pk, "user", 'Use <script>alert("x")</script> & the <b>budget</b> "quotes" budget')
    titled(s, "<img src=x onerror=alert(1)> budget")
    hits = search(user, "budget").hits
    assert [hit.kind for hit in hits] == ["title", "message"]
    for hit in hits:
        without_marks = hit.snippet.replace("<mark>", "").replace("</mark>", "")
        assert "<" not in without_marks and ">" not in without_marks
        assert "<mark>budget</mark>" in hit.snippet.lower()
    assert "&lt;/script&gt;" in hits[1].snippet and "&lt;b&gt;" in hits[1].snippet
    assert "&lt;img src=x onerror=alert(1)&gt;" in hits[0].snippet


def test_marker_lookalikes_in_the_text_stay_text(user, make_session):
    """The highlight markers are unguessable per request: text that imitates them is escaped text."""
    s = make_session("fake", owner=user)
    add(s.pk, "user", "budget \x02abc[ not a mark ]abc\x03 </mark><mark>")
    titled(s, "")  # (the first user message titled it: only the message here)
    (hit,) = search(user, "budget").hits
    assert hit.snippet.count("<mark>") == hit.snippet.count("</mark>") == 1
    assert "&lt;/mark&gt;&lt;mark" in hit.snippet


# ---------------------------------------------------------------------------------------------
# Kept in step on every write


def test_index_follows_appends_edits_clears_deletes_and_purges(user, make_session, now):
    s = make_session("live", owner=user, timeout_seconds=60, at=now)
    add(s.pk, "user", "zephyr arrives", now=now)
    assert found(search(user, "zephyr")) == [("live", None), ("live", 1)]  # its title (the library's) too
    titled(s, "")

    Message.objects.filter(session=s, seq=1).update(content="mistral arrives")
    assert found(search(user, "zephyr")) == []
    assert found(search(user, "mistral")) == [("live", 1)]

    titled(s, "Winds of the south")
    assert found(search(user, "winds")) == [("live", None)]
    titled(s, "Calm")
    assert found(search(user, "winds")) == []

    engine.session_clear_messages(s.pk, owner=user, now=now)
    assert found(search(user, "mistral")) == []

    add(s.pk, "user", "sirocco arrives", now=now)
    later = now + dt.timedelta(hours=2)
    assert engine.purge_expired(now=later).sessions == 1
    assert found(search(user, "sirocco")) == [] and found(search(user, "calm")) == []

    other = make_session("gone", owner=user)
    add(other.pk, "user", "bora arrives")
    titled(other, "Bora")
    engine.session_delete("gone", owner=user)
    assert found(search(user, "bora")) == []


def test_a_rolled_back_append_is_not_found(user, make_session):
    from django.db import transaction

    s = make_session("rb", owner=user)
    with pytest.raises(RuntimeError), transaction.atomic():
        add(s.pk, "user", "levanter arrives")
        raise RuntimeError
    assert found(search(user, "levanter")) == []


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite's triggers (PostgreSQL computes the column itself)")
def test_sqlite_puts_back_triggers_a_table_rebuild_dropped(user, make_session):
    """A later migration that rebuilds the message table drops its triggers: search puts them back and
    re-indexes what was written meanwhile."""
    s = make_session("heal", owner=user)
    with connection.cursor() as cursor:
        for name in search_schema.SQLITE_TRIGGERS:
            cursor.execute(f"DROP TRIGGER {name}")
    add(s.pk, "user", "chinook arrives")
    titled(s, "Foehn")
    assert found(search(user, "chinook")) == [("heal", 1)]
    assert found(search(user, "foehn")) == [("heal", None)]
    assert search_schema.ensure_sqlite(connection) is False  # all back: one catalogue query from now on


# ---------------------------------------------------------------------------------------------
# Pages


def test_cursor_pages_walk_every_result_once(user, make_session):
    s = make_session("many", owner=user, max_messages=500)
    for i in range(23):
        add(s.pk, "user", "monsoon " * (1 + i % 4) + f"filler{i}")
    titled(s, "Monsoon season")
    everything = found(search(user, "monsoon", limit=100))
    assert len(everything) == 24 and everything[0] == ("many", None)
    seen, cursor, pages = [], None, 0
    for _ in range(10):  # 5 pages; a cursor that does not move on must not loop forever
        page = search(user, "monsoon", limit=5, cursor=cursor)
        seen += found(page)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 5 and seen == everything


def test_cursor_exactly_at_the_end_of_the_titles(user, make_session):
    a, b = make_session("a", owner=user), make_session("b", owner=user)
    titled(a, "Sahara")
    titled(b, "Sahara dunes")
    add(a.pk, "user", "sahara crossing")
    first = search(user, "sahara", limit=2)
    assert [hit.kind for hit in first.hits] == ["title", "title"] and first.next_cursor
    second = search(user, "sahara", limit=2, cursor=first.next_cursor)
    assert found(second) == [("a", 1)] and second.next_cursor is None


@pytest.mark.parametrize("cursor", ["garbage", "eyJnIjogNX0", "e30", "!!!!", "x" * 500])
def test_bad_cursors_are_refused(user, cursor):
    with pytest.raises(engine.SessionValidationError, match="cursor") as exc:
        search(user, "tomato", cursor=cursor)
    assert exc.value.field == "cursor"


def test_a_cursor_belongs_to_its_query(user, make_session):
    s = make_session("c", owner=user)
    for _ in range(3):
        add(s.pk, "user", "harmattan wind")
    page = search(user, "harmattan", limit=1)
    with pytest.raises(engine.SessionValidationError, match="another search"):
        search(user, "wind", limit=1, cursor=page.next_cursor)


@pytest.mark.parametrize("limit", [0, -1, 101, True, "5", 2.5])
def test_bad_limits_are_refused(user, limit):
    with pytest.raises(engine.SessionValidationError, match="limit") as exc:
        search(user, "tomato", limit=limit)
    assert exc.value.field == "limit"


# ---------------------------------------------------------------------------------------------
# Messages around a sequence number (what a result opens)


def test_messages_around_reads_the_whole_history(user, make_session):
    s = make_session("around", owner=user, max_messages=5)
    for i in range(1, 31):
        add(s.pk, "user", f"message {i}")
    s = engine.session_get(s.pk)
    window = engine.messages_around(s, 10, before=3, after=2)
    assert [m.seq for m in window.messages] == [7, 8, 9, 10, 11, 12]
    assert window.has_earlier and window.has_later
    start = engine.messages_around(s, 2, before=3, after=2)
    assert [m.seq for m in start.messages] == [1, 2, 3, 4] and not start.has_earlier
    end = engine.messages_around(s, 29, before=3, after=2)
    assert [m.seq for m in end.messages] == [26, 27, 28, 29, 30] and not end.has_later


def test_index_sizes_are_reported_by_the_database():
    """The indexes exist under the names the benchmark and the README use."""
    with connection.cursor() as cursor:
        if ON_POSTGRES:
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE indexname IN ('message_search', 'session_title_search')"
            )
            assert {row[0] for row in cursor.fetchall()} == {"message_search", "session_title_search"}
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE name LIKE 'sessions_app_%fts'")
            assert {row[0] for row in cursor.fetchall()} == {search_schema.MESSAGE_FTS, search_schema.TITLE_FTS}


def test_snippets_are_short_for_long_messages(user, make_session):
    s = make_session("long", owner=user)
    add(s.pk, "user", " ".join(f"word{i}" for i in range(400)) + " simoom " + " ".join(f"tail{i}" for i in range(400)))
    (hit,) = search(user, "simoom").hits
    words = re.sub(r"</?mark>", "", hit.snippet).split()
    assert "simoom" in words and len(words) < 60


@pytest.mark.postgres
def test_raw_reads_leave_the_search_column_in_the_database(user, make_session):
    """The context window's and the turns' raw reads name their columns: the tsvector stays out."""
    s = make_session("raw", owner=user, system_prompt="Be brief.")
    add(s.pk, "user", "a question")
    add(s.pk, "assistant", "an answer")
    s = engine.session_get(s.pk)
    window = engine.context_window(s)
    assert [m.seq for m in window.messages] == [1, 2, 3]
    assert not any(hasattr(m, "search_vector") for m in window.messages)
    (turn,) = engine.turns(s)
    assert not hasattr(turn.user_message, "search_vector")
