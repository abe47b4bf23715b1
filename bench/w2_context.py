"""W2 context: the 4,096-token context window of a 10,000- and a 100,000-message session — median ms.

Convo: ``engine.context_window(session, 4096)``, which reads the stored token estimates of the newest
rows and then the chosen messages from the database on every call (max_messages is the message
count, so every message is in the list; the first message is a pinned system prompt).
Peer: ``SQLChatMessageHistory.messages`` (every message of the session, from its own database on the
same PostgreSQL) then ``langchain_core.messages.trim_messages(strategy="last", include_system=True,
max_tokens=4096)`` with the same token estimate (UTF-8 bytes // 4 + 1).

The sessions are built in bulk (INSERT ... SELECT over generate_series) with exactly the rows and
bookkeeping the engine would have written, and checked against the engine's own readers first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import warnings

from common import (
    db_name,
    drop_database,
    emit,
    emit_pair,
    log,
    median_ms,
    message_text,
    recreate_database,
    setup_django,
    sqlalchemy_url,
)

SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and cite the earlier messages you rely on."
BUDGET = 4096


def estimate(text: str) -> int:
    return len(text.encode("utf-8")) // 4 + 1


def build_convo_session(session_id: str, count: int) -> None:
    """A session of ``count`` messages (the system prompt, then user/assistant pairs), written in bulk."""
    from django.db import connection, transaction

    from sessions_app import engine
    from sessions_app.models import ConversationSession, Message

    with contextlib.suppress(engine.SessionNotFound):
        engine.session_delete(session_id)
    key = engine.session_create(
        session_id,
        system_prompt=SYSTEM_PROMPT,
        config=engine.SessionConfig(max_messages=count, timeout_seconds=None),
    ).pk
    msg, sess = Message._meta.db_table, ConversationSession._meta.db_table
    # Messages 2..count: i = seq - 2; even i is a user message opening turn i/2 + 1, odd i its answer.
    # The text is message_text(i)'s pattern, built in SQL; tokens is the spec's estimate of it.
    words = message_text(0).split(": ", 1)[1]
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            f"""
            INSERT INTO {msg} (session_id, seq, role, content, name, tool_call_id, metadata, created_at, tokens,
                               turn_number)
            SELECT %(sid)s, g.i + 2, CASE WHEN g.i %% 2 = 0 THEN 'user' ELSE 'assistant' END, c.text, NULL, NULL,
                   '{{}}'::jsonb, now(), octet_length(c.text) / 4 + 1, g.i / 2 + 1
            FROM generate_series(0, %(n)s - 2) AS g(i)
            CROSS JOIN LATERAL (SELECT left('message ' || g.i || ': ' || %(words)s, 200) AS text) c
            """,
            {"sid": key, "n": count, "words": words},
        )
        cur.execute(
            f"""
            UPDATE {sess} s SET last_seq = %(n)s, turn_count = (%(n)s - 1 + 1) / 2,
                   total_tokens = (SELECT sum(tokens) FROM {msg} WHERE session_id = s.key)
            WHERE key = %(sid)s
            """,
            {"sid": key, "n": count},
        )
    with connection.cursor() as cur:
        cur.execute(f"VACUUM ANALYZE {msg}")


def spec_context(messages, budget: int):
    """The spec's get_context over a whole list, in plain Python: the reference for the check."""
    result, used = [], 0
    start = 0
    if messages and messages[0].role == "system":
        result.append(messages[0])
        used = messages[0].tokens
        start = 1
    picked = []
    for m in reversed(messages[start:]):
        if m.role == "system":
            continue
        if used + m.tokens > budget:
            break
        used += m.tokens
        picked.append(m)
    return result + picked[::-1]


def check_convo_session(session_id: str, count: int) -> None:
    """The bulk-built session reads back through the engine as if every message had been appended."""
    from sessions_app import engine

    session = engine.session_get(session_id)
    assert session.message_count == count, (session.message_count, count)
    listed = engine.messages_all(session)
    assert [m.seq for m in listed] == list(range(1, count + 1))
    assert session.total_tokens == sum(m.tokens for m in listed)
    assert all(m.tokens == estimate(m.content) for m in listed)
    assert engine.current_turn(session) == (count - 1 + 1) // 2
    last = engine.last_turn(session)
    assert last.user_message.seq in (count, count - 1)
    assert engine.get_turn(session, 1).assistant_response.seq == 3
    window = engine.context_window(session, BUDGET)
    assert [m.seq for m in window.messages] == [m.seq for m in spec_context(listed, BUDGET)]
    assert window.total_tokens == sum(m.tokens for m in window.messages) <= BUDGET


def build_peer(url: str, session_id: str, count: int):
    from langchain_community.chat_message_histories import SQLChatMessageHistory
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    history = SQLChatMessageHistory(session_id=session_id, connection=url)
    history.clear()
    batch = [SystemMessage(content=SYSTEM_PROMPT)]
    for i in range(count - 1):
        batch.append((HumanMessage if i % 2 == 0 else AIMessage)(content=message_text(i)))
        if len(batch) == 10_000:
            history.add_messages(batch)
            batch = []
    if batch:
        history.add_messages(batch)
    return history


def peer_context(history):
    from langchain_core.messages import trim_messages

    return trim_messages(
        history.messages,
        strategy="last",
        include_system=True,
        max_tokens=BUDGET,
        token_counter=lambda messages: sum(estimate(m.content) for m in messages),
    )


def main() -> None:
    from asgiref.sync import sync_to_async

    asyncio.run(sync_to_async(run)())


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--calls", type=int, default=300, help="timed Convo calls per size")
    parser.add_argument("--peer-calls", default="15,3", help="timed peer calls per size (the peer is slow)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    peer_calls = [int(s) for s in args.peer_calls.split(",")]

    setup_django()
    from sessions_app import engine

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    peer_db = db_name() + "_peer_w2"
    recreate_database(peer_db)
    url = sqlalchemy_url(peer_db)

    convo_ms: dict[int, float] = {}
    for size, pcalls in zip(sizes, peer_calls, strict=False):
        session_id = f"bench-w2-{size}"
        log(f"w2: building a {size}-message session (convo and peer)")
        build_convo_session(session_id, size)
        check_convo_session(session_id, size)
        history = build_peer(url, session_id, size)
        session = engine.session_get(session_id)
        window = engine.context_window(session, BUDGET)
        trimmed = peer_context(history)
        # Same rule, same estimate: both must pick the same messages.
        assert [m.content for m in trimmed] == [m.content for m in window.messages], (
            len(trimmed),
            len(window.messages),
        )

        convo_ms[size] = median_ms(lambda s=session: engine.context_window(s, BUDGET), calls=args.calls)
        peer = median_ms(lambda h=history: peer_context(h), calls=pcalls, warmup=1)
        emit_pair(
            "w2_context",
            f"context_ms_{size}",
            "ms",
            convo_ms[size],
            peer,
            better="lower",
            peer_name="SQLChatMessageHistory.messages + trim_messages",
            convo_extra={"messages": size, "window_messages": len(window.messages), "calls": args.calls},
            peer_extra={"messages": size, "window_messages": len(trimmed), "calls": pcalls},
        )
        log(f"w2: {size}: convo {convo_ms[size]:.2f} ms, peer {peer:.1f} ms")
        history.clear()
        history.engine.dispose()
        engine.session_delete(session_id)

    if len(sizes) >= 2:
        small, big = sizes[0], sizes[-1]
        emit(
            "w2_context",
            "convo",
            f"growth_{big}_vs_{small}",
            convo_ms[big] / convo_ms[small],
            "x",
            target="<= 1.3",
        )
    drop_database(peer_db)


if __name__ == "__main__":
    main()
