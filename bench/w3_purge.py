"""W3 purge: 100,000 expired sessions of 10 messages each among 100,000 live ones — seconds, rows/s, peak RSS.

Convo: ``manage.py purge_expired_sessions`` (batches of 1,000 sessions, each delete re-checking expiry
under the row lock, a DELETED event per session) as a subprocess, the way cron runs it. Every session,
live or expired, has 10 messages (user/assistant, ~200 characters) in 5 turns (read from the messages:
no turn rows, as none has metadata), so the command deletes 1,100,000 rows: 100,000 sessions and
1,000,000 messages.
Peer: Django's ``manage.py clearsessions`` on 100,000 expired + 100,000 live ``django_session`` rows in
the same database.

Both commands run as subprocesses of this script; their wall time includes Django's start-up, and
their peak RSS comes from ``os.wait4``. Rows/s = rows the command deleted / its wall time.
"""

from __future__ import annotations

import argparse
import time

from common import emit, emit_pair, log, message_text, run_command, setup_django

WORDS = message_text(0).split(": ", 1)[1]


def seed_convo(cur, expired: int, live: int, per_session: int) -> None:
    """Sessions and messages written in bulk, with the bookkeeping the engine would have written (turns
    are read from the messages; a turn row exists only for a turn with metadata)."""
    from sessions_app.models import ConversationSession, Message, Turn

    sess, msg, turn = (m._meta.db_table for m in (ConversationSession, Message, Turn))
    for table in (turn, msg, sess):
        cur.execute(
            f"DELETE FROM {table} WHERE session_id IN (SELECT key FROM {sess} WHERE sid LIKE 'w3-%%')"
            if table != sess
            else f"DELETE FROM {table} WHERE sid LIKE 'w3-%%'"
        )
    # Expired: touched 2 to 3 hours ago with a one-hour timeout (expiry spread over the past hour).
    # Live: touched within the last 10 minutes.
    cur.execute(
        f"""
        INSERT INTO {sess} (key, sid, owner_id, system_prompt, variables, data, metadata, max_messages, max_tokens,
                            timeout_seconds, persist_system_prompt, created_at, updated_at, expires_at,
                            last_seq, low_seq, head_seq, turn_count, total_tokens)
        SELECT gen_random_uuid(), g.kind || lpad(g.i::text, 7, '0'), NULL, NULL, '{{}}', '{{}}', '{{}}', 100, 8192, 3600, true,
               g.touched - interval '1 minute', g.touched,
               date_trunc('second', g.touched) + interval '3601 seconds',
               %(per)s, 1, NULL, (%(per)s + 1) / 2, 0
        FROM (
            SELECT 'w3-exp-' AS kind, i, now() - interval '2 hours' - (i * interval '36 milliseconds') AS touched
            FROM generate_series(1, %(expired)s) i
            UNION ALL
            SELECT 'w3-live-', i, now() - (i * interval '6 milliseconds') FROM generate_series(1, %(live)s) i
        ) g
        """,
        {"expired": expired, "live": live, "per": per_session},
    )
    cur.execute(
        f"""
        INSERT INTO {msg} (session_id, seq, role, content, name, tool_call_id, metadata, created_at, tokens,
                           turn_number)
        SELECT s.key, k.seq, CASE WHEN k.seq %% 2 = 1 THEN 'user' ELSE 'assistant' END, c.text, NULL, NULL,
               '{{}}'::jsonb, s.updated_at, octet_length(c.text) / 4 + 1, (k.seq + 1) / 2
        FROM {sess} s
        CROSS JOIN generate_series(1, %(per)s) AS k(seq)
        CROSS JOIN LATERAL (SELECT left('message ' || k.seq || ': ' || %(words)s, 200) AS text) c
        WHERE s.sid LIKE 'w3-%%'
        """,
        {"per": per_session, "words": WORDS},
    )
    cur.execute(
        f"""
        UPDATE {sess} s SET total_tokens = t.total
        FROM (SELECT session_id, sum(tokens) AS total FROM {msg} GROUP BY session_id) t
        WHERE s.key = t.session_id AND s.sid LIKE 'w3-%%'
        """
    )


def seed_peer(cur, expired: int, live: int) -> None:
    """django_session rows: the peer's sessions, with a session_data of the usual size."""
    cur.execute("DELETE FROM django_session")
    cur.execute(
        """
        INSERT INTO django_session (session_key, session_data, expire_date)
        SELECT md5('w3-' || i) || lpad(i::text, 8, '0'), repeat('x', 120),
               CASE WHEN i <= %(expired)s THEN now() - interval '1 hour' - (i * interval '36 milliseconds')
                    ELSE now() + interval '14 days' - (i * interval '6 milliseconds') END
        FROM generate_series(1, %(total)s) i
        """,
        {"expired": expired, "total": expired + live},
    )


def counts(cur) -> dict[str, int]:
    from sessions_app.models import ConversationSession, Message, Turn

    sess, msg, turn = (m._meta.db_table for m in (ConversationSession, Message, Turn))
    result = {}
    for name, sql in {
        "expired_sessions": f"SELECT count(*) FROM {sess} WHERE sid LIKE 'w3-exp-%%'",
        "live_sessions": f"SELECT count(*) FROM {sess} WHERE sid LIKE 'w3-live-%%'",
        "messages": f"SELECT count(*) FROM {msg} WHERE session_id IN (SELECT key FROM {sess} WHERE sid LIKE 'w3-%%')",
        "turns": f"SELECT count(*) FROM {turn} WHERE session_id IN (SELECT key FROM {sess} WHERE sid LIKE 'w3-%%')",
        "django_sessions": "SELECT count(*) FROM django_session",
        "django_sessions_expired": "SELECT count(*) FROM django_session WHERE expire_date < now()",
    }.items():
        cur.execute(sql)
        result[name] = cur.fetchone()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expired", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=10, help="messages per session")
    args = parser.parse_args()

    setup_django()
    from django.db import connection

    with connection.cursor() as cur:
        t0 = time.perf_counter()
        seed_convo(cur, args.expired, args.live, args.messages)
        seed_peer(cur, args.expired, args.live)
        for table in (
            "sessions_app_conversationsession",
            "sessions_app_message",
            "sessions_app_turn",
            "django_session",
        ):
            cur.execute(f"VACUUM ANALYZE {table}")
        before = counts(cur)
        log(f"w3: seeded in {time.perf_counter() - t0:.1f} s: {before}")
        expected_turns = 0  # turn rows: only for turns with metadata
        assert before["expired_sessions"] == args.expired and before["live_sessions"] == args.live
        assert before["messages"] == (args.expired + args.live) * args.messages
        assert before["turns"] == (args.expired + args.live) * expected_turns
        assert before["django_sessions_expired"] == args.expired
        cur.execute("CHECKPOINT")
    connection.close()  # no open connection of ours while the commands run

    peer_s, peer_rss, peer_out = run_command("clearsessions")
    with connection.cursor() as cur:
        cur.execute("CHECKPOINT")
    connection.close()
    convo_s, convo_rss, convo_out = run_command("purge_expired_sessions")
    log(f"w3: purge said: {convo_out.splitlines()[-1] if convo_out else ''}")

    with connection.cursor() as cur:
        after = counts(cur)
    assert after["expired_sessions"] == 0 and after["live_sessions"] == args.live, after
    assert after["messages"] == args.live * args.messages and after["turns"] == args.live * expected_turns, after
    assert after["django_sessions"] == args.live and after["django_sessions_expired"] == 0, after
    convo_rows = sum(before[k] - after[k] for k in ("expired_sessions", "messages", "turns"))
    peer_rows = before["django_sessions"] - after["django_sessions"]

    common = {"better": "higher"}
    emit_pair(
        "w3_purge",
        "rows_per_s",
        "rows/s",
        convo_rows / convo_s,
        peer_rows / peer_s,
        peer_name="manage.py clearsessions",
        convo_extra={"rows": convo_rows, "sessions": args.expired, "seconds": round(convo_s, 3)},
        peer_extra={"rows": peer_rows, "sessions": args.expired, "seconds": round(peer_s, 3)},
        **common,
    )
    emit_pair(
        "w3_purge",
        "sessions_per_s",
        "sessions/s",
        args.expired / convo_s,
        args.expired / peer_s,
        peer_name="manage.py clearsessions",
        **common,
    )
    emit_pair("w3_purge", "seconds", "s", convo_s, peer_s, better="lower", peer_name="manage.py clearsessions")
    emit_pair("w3_purge", "peak_rss_mb", "MB", convo_rss, peer_rss, better="lower", peer_name="manage.py clearsessions")
    emit("w3_purge", "convo", "peak_rss_target", convo_rss, "MB", target="< 150", met=convo_rss < 150)

    with connection.cursor() as cur:  # leave the bench database small
        seed_cleanup(cur)


def seed_cleanup(cur) -> None:
    from sessions_app.models import ConversationSession, Message, Turn

    sess, msg, turn = (m._meta.db_table for m in (ConversationSession, Message, Turn))
    cur.execute(f"DELETE FROM {turn} WHERE session_id IN (SELECT key FROM {sess} WHERE sid LIKE 'w3-%%')")
    cur.execute(f"DELETE FROM {msg} WHERE session_id IN (SELECT key FROM {sess} WHERE sid LIKE 'w3-%%')")
    cur.execute(f"DELETE FROM {sess} WHERE sid LIKE 'w3-%%'")
    cur.execute("DELETE FROM django_session")


if __name__ == "__main__":
    main()
