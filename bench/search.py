"""Search: one user's full-text search among 1,000,000 messages in 10,000 conversations of 100 users —
p50 / p99 of ``engine.search`` against the naive ``icontains`` scan, in the same run; index sizes.

Corpus (PostgreSQL, loaded with COPY): 100 users × 100 conversations × 100 messages, user/assistant
turns; each message 10 to 40 words drawn from a 5,000-word vocabulary with Zipf weights, plus the
words the queries look for, planted at known rates:

- common word ``kubernetes``: in 5 % of the messages (about 500 of each user's 10,000);
- rare word ``zanzibar``: in 0.01 % (about one per user);
- phrase ``"connection pool"``: in 0.5 % (``connection`` and ``pool`` also appear apart, 2 % each).

Each query runs as a different user in turn (the 100 users' data, not one cached row set), through
the code the API and the sidebar call: ``engine.search(user, q, limit=20)`` (ranked, with snippets), and
the naive scan the same page: ``Message.objects.filter(session__owner=user, content__icontains=...)``
newest first, 20 rows (plus the titles' icontains). Both read the whole history.

    python bench/search.py [--users 100] [--sessions 100] [--messages 100] [--runs 200] [--keep]

``--keep`` reuses a corpus of the same size loaded by an earlier run. Targets (issue 11): p50 ≤ 30 ms,
p99 ≤ 100 ms, ≥ 50× faster than the icontains scan.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import time
import uuid

from common import emit, emit_pair, log, setup_django

COMMON, RARE, PHRASE = "kubernetes", "zanzibar", ("connection", "pool")
PREFIX = "bench-search-"


def vocabulary(size: int = 5000) -> tuple[list[str], list[float]]:
    """Pronounceable made-up words (none is a query word), with Zipf weights."""
    rng = random.Random(7)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        n = rng.randint(2, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n)))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered, [1 / (rank + 1) for rank in range(size)]


def message_text(rng: random.Random, words: list[str], cum_weights: list[float]) -> str:
    text = rng.choices(words, cum_weights=cum_weights, k=rng.randint(10, 40))
    roll = rng.random()
    if roll < 0.05:
        text.insert(rng.randrange(len(text)), COMMON)
    if rng.random() < 0.0001:
        text.insert(rng.randrange(len(text)), RARE)
    if rng.random() < 0.005:
        at = rng.randrange(len(text))
        text[at:at] = list(PHRASE)
    for word in PHRASE:
        if rng.random() < 0.02:
            text.insert(rng.randrange(len(text)), word)
    return " ".join(text)


def load(users: int, sessions: int, messages: int) -> list:
    """Replace the bench users and their conversations, COPY the messages in, index, ANALYZE."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from sessions_app.engine import search_schema
    from sessions_app.models import ConversationSession, Message

    User = get_user_model()
    sess_table, msg_table = ConversationSession._meta.db_table, Message._meta.db_table
    rng = random.Random(11)
    words, weights = vocabulary()
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    started = time.perf_counter()
    with connection.cursor() as cur:
        log("deleting an earlier corpus")
        cur.execute(
            f"DELETE FROM {msg_table} WHERE session_id IN (SELECT s.key FROM {sess_table} s JOIN auth_user u "
            "ON u.id = s.owner_id WHERE u.username LIKE %s)",
            [PREFIX + "%"],
        )
        cur.execute(
            f"DELETE FROM {sess_table} WHERE owner_id IN (SELECT id FROM auth_user WHERE username LIKE %s)",
            [PREFIX + "%"],
        )
    User.objects.filter(username__startswith=PREFIX).delete()
    people = User.objects.bulk_create([User(username=f"{PREFIX}{i:03d}") for i in range(users)])
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    # Without the GIN index while loading (built once at the end, as CREATE INDEX does best).
    with connection.cursor() as cur:
        cur.execute("DROP INDEX IF EXISTS message_search")
    with transaction.atomic(), connection.cursor() as cur:
        raw = cur.cursor  # psycopg's own cursor: COPY
        log(f"COPY {users * sessions:,} conversations")
        with raw.copy(
            f"COPY {sess_table} (key, sid, owner_id, system_prompt, variables, data, metadata, max_messages, "
            "max_tokens, timeout_seconds, persist_system_prompt, created_at, updated_at, expires_at, last_seq, "
            "low_seq, head_seq, turn_count, total_tokens, title, pinned, archived, parent_id, parent_seq, lineage) "
            "FROM STDIN"
        ) as copy:
            keys = []
            for person in people:
                for j in range(sessions):
                    key = uuid.UUID(int=rng.getrandbits(128), version=4)
                    keys.append(key)
                    created = now - dt.timedelta(days=j)
                    title = " ".join(rng.choices(words, cum_weights=cum, k=3)).capitalize()
                    copy.write_row(
                        (key, f"c{j:03d}", person.pk, None, "{}", "{}", "{}", max(messages, 100), 8192, None, True,
                         created, created, None, messages, max(1, messages - 99), None, (messages + 1) // 2, 0,
                         title, False, False, None, None, "")
                    )  # fmt: skip
        log(f"COPY {users * sessions * messages:,} messages")
        done = 0
        for key in keys:
            buf = []
            for seq in range(1, messages + 1):
                text = message_text(rng, words, cum)
                buf.append(
                    (key, seq, "user" if seq % 2 else "assistant", text, "{}", now, len(text) // 4 + 1, (seq + 1) // 2)
                )
            with raw.copy(
                f"COPY {msg_table} (session_id, seq, role, content, metadata, created_at, tokens, turn_number) FROM STDIN"
            ) as copy:
                for row in buf:
                    copy.write_row(row)
            done += messages
            if done % 100_000 == 0:
                log(f"  {done:,} messages ({time.perf_counter() - started:.0f} s)")
    with connection.cursor() as cur:
        log("CREATE INDEX message_search (GIN)")
        cur.execute("SET maintenance_work_mem = '512MB'")
        cur.execute(search_schema.PG_INSTALL[1])
        cur.execute("RESET maintenance_work_mem")
        for table in (msg_table, sess_table):
            cur.execute(f"VACUUM ANALYZE {table}")
    log(f"loaded in {time.perf_counter() - started:.0f} s")
    return people


def corpus_users(users: int, sessions: int, messages: int) -> list | None:
    """The bench users when a corpus of this size is already loaded."""
    from django.contrib.auth import get_user_model

    from sessions_app.models import Message

    people = list(get_user_model().objects.filter(username__startswith=PREFIX).order_by("username"))
    if len(people) != users:
        return None
    count = Message.objects.filter(session__owner__in=people[:1]).count()
    return people if count == sessions * messages else None


def naive(user, text: str) -> list:
    """The naive scan: every message (and title) of the user's containing the text, newest first."""
    from sessions_app.models import ConversationSession, Message

    titles = list(ConversationSession.objects.filter(owner=user, title__icontains=text).order_by("-created_at")[:20])
    rows = list(
        Message.objects.filter(session__owner=user, content__icontains=text)
        .select_related("session")
        .order_by("-created_at", "-id")[: 20 - len(titles)]
    )
    return titles + rows


def timed(func, users: list, runs: int) -> tuple[list[float], list[int]]:
    times, counts = [], []
    for i in range(runs):
        user = users[i % len(users)]
        start = time.perf_counter()
        result = func(user)
        times.append((time.perf_counter() - start) * 1000)
        counts.append(len(result))
    return times, counts


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def index_sizes() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT pg_relation_size('message_search'), pg_relation_size('session_title_search'), "
            "pg_total_relation_size('sessions_app_message')"
        )
        gin, title, table = cur.fetchone()
        cur.execute("SELECT sum(pg_column_size(search_vector))::bigint FROM sessions_app_message")
        (column,) = cur.fetchone()
    return {"gin_bytes": gin, "title_gin_bytes": title, "tsvector_column_bytes": column, "message_table_bytes": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=100, help="conversations per user")
    parser.add_argument("--messages", type=int, default=100, help="messages per conversation")
    parser.add_argument("--runs", type=int, default=200, help="searches per query kind")
    parser.add_argument("--naive-runs", type=int, default=40, help="icontains scans per query kind")
    parser.add_argument("--keep", action="store_true", help="reuse a corpus of this size loaded earlier")
    args = parser.parse_args()
    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from sessions_app.engine.search import search

    people = corpus_users(args.users, args.sessions, args.messages) if args.keep else None
    if people is None:
        people = load(args.users, args.sessions, args.messages)
    total = args.users * args.sessions * args.messages
    sizes = index_sizes()
    emit("search", "convo", "index_size", sizes["gin_bytes"] / 2**20, "MiB", **sizes, messages=total)

    queries = {"common": COMMON, "rare": RARE, "phrase": '"' + " ".join(PHRASE) + '"'}
    plain = {"common": COMMON, "rare": RARE, "phrase": " ".join(PHRASE)}
    for kind, q in queries.items():
        timed(lambda u, q=q: search(u, q, limit=20).hits, people, 20)  # warm-up
        fts, fts_counts = timed(lambda u, q=q: search(u, q, limit=20).hits, people, args.runs)
        timed(lambda u, t=plain[kind]: naive(u, t), people, 3)
        scan, scan_counts = timed(lambda u, t=plain[kind]: naive(u, t), people, args.naive_runs)
        for metric, p in (("p50", 50), ("p99", 99)):
            emit_pair(
                "search",
                f"{kind}_{metric}",
                "ms",
                percentile(fts, p),
                percentile(scan, p),
                better="lower",
                peer_name="icontains scan",
                convo_extra={"q": q, "runs": args.runs, "mean_hits": round(statistics.mean(fts_counts), 1)},
                peer_extra={"runs": args.naive_runs, "mean_rows": round(statistics.mean(scan_counts), 1)},
            )
        emit(
            "search",
            "convo",
            f"{kind}_speedup",
            percentile(scan, 50) / percentile(fts, 50),
            "x",
            target=">= 50",
            p50_target_ms=30,
            p99_target_ms=100,
        )


if __name__ == "__main__":
    main()
