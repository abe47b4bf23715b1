"""W1 append: 10,000 messages appended one by one to one session, each in its own commit — appends/s.

Convo: ``engine.message_append`` on a session with the default config (max_messages 100, so from the
101st message on every append also evicts the oldest one), in autocommit as a request would run it:
row lock, sequence number, message row, turn opened or completed, limits, expiry, change event.
Peer: LangChain's ``SQLChatMessageHistory.add_message`` (one INSERT per commit) with the same messages
in a database of its own on the same PostgreSQL.

The two run in alternating blocks of 1,000 so that noise from other work on the machine hits both.
Both run in a worker thread under an asyncio event loop, as Django's ASGI handler (daphne) runs a sync
view: the change event each Convo write sends after its commit then goes through the server's loop
and its open Redis connection, as in a real request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import warnings

from common import (
    db_name,
    drop_database,
    emit,
    emit_pair,
    log,
    message_text,
    recreate_database,
    setup_django,
    sqlalchemy_url,
)

SESSION_ID = "bench-w1"


def main() -> None:
    from asgiref.sync import sync_to_async

    asyncio.run(sync_to_async(run)())


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--block", type=int, default=1_000)
    parser.add_argument("--no-breakdown", action="store_true", help="skip the run without change events")
    args = parser.parse_args()

    setup_django()
    from django.db import connection

    from sessions_app import engine, events

    roles = ["user", "assistant"]
    texts = [message_text(i) for i in range(args.messages)]

    # Convo: a fresh session with the project's default config.
    with contextlib.suppress(engine.SessionNotFound):
        engine.session_delete(SESSION_ID)
    engine.session_create(SESSION_ID)
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE sessions_app_message")

    # Peer: its own database and table.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from langchain_community.chat_message_histories import SQLChatMessageHistory
    from langchain_core.messages import AIMessage, HumanMessage

    peer_db = db_name() + "_peer_w1"
    recreate_database(peer_db)
    history = SQLChatMessageHistory(session_id=SESSION_ID, connection=sqlalchemy_url(peer_db))
    peer_messages = [(HumanMessage if i % 2 == 0 else AIMessage)(content=t) for i, t in enumerate(texts)]

    # A breakdown, not a figure of its own: the same appends to a second session with the change
    # event's delivery switched off, to show what the engine's database work costs by itself.
    with contextlib.suppress(engine.SessionNotFound):
        engine.session_delete(SESSION_ID + "-quiet")
    engine.session_create(SESSION_ID + "-quiet")
    send = events._send

    convo_s = peer_s = quiet_s = 0.0
    for start in range(0, args.messages, args.block):
        stop = min(start + args.block, args.messages)
        t0 = time.perf_counter()
        for i in range(start, stop):
            engine.message_append(SESSION_ID, roles[i % 2], texts[i])
        convo_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(start, stop):
            history.add_message(peer_messages[i])
        peer_s += time.perf_counter() - t0
        if not args.no_breakdown:
            events._send = lambda batch: None
            t0 = time.perf_counter()
            for i in range(start, stop):
                engine.message_append(SESSION_ID + "-quiet", roles[i % 2], texts[i])
            quiet_s += time.perf_counter() - t0
            events._send = send
        log(f"w1: {stop}/{args.messages} appended (convo {stop / convo_s:.0f}/s, peer {stop / peer_s:.0f}/s)")

    # The engine's bookkeeping must be what the spec says after the run.
    session = engine.session_get(SESSION_ID)
    assert session.last_seq == args.messages, session.last_seq
    assert session.turn_count == (args.messages + 1) // 2, session.turn_count
    assert session.message_count == min(args.messages, session.max_messages), session.message_count
    assert len(history.messages) == args.messages

    emit_pair(
        "w1_append",
        "appends_per_s",
        "appends/s",
        args.messages / convo_s,
        args.messages / peer_s,
        better="higher",
        peer_name="langchain_community SQLChatMessageHistory.add_message",
        convo_extra={"seconds": round(convo_s, 3), "messages": args.messages, "max_messages": session.max_messages},
        peer_extra={"seconds": round(peer_s, 3), "messages": args.messages},
    )
    if not args.no_breakdown:
        emit(
            "w1_append",
            "convo",
            "appends_per_s_without_events",
            args.messages / quiet_s,
            "appends/s",
            ratio=round(peer_s / quiet_s, 3),
            note="breakdown: engine only, change-event delivery switched off",
        )
    history.engine.dispose()
    drop_database(peer_db)
    engine.session_delete(SESSION_ID)
    engine.session_delete(SESSION_ID + "-quiet")


if __name__ == "__main__":
    main()
