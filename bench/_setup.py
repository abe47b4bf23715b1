"""Shared set-up of the benchmarks: Django on the bench database, and big sessions made fast."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def django_setup() -> None:
    """Configure Django on DATABASE_URL (or an SQLite file of the bench's own) and migrate it."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "convo_site.settings")
    if not os.environ.get("DATABASE_URL"):
        os.environ.setdefault("CONVO_SQLITE_PATH", str(Path(tempfile.gettempdir()) / "convo-ui-bench.sqlite3"))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def database_label() -> str:
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return "postgresql" if engine == "postgresql" else engine


def make_long_session(session_id: str, owner, n_messages: int, *, batch: int = 5000):
    """A session of ``n_messages`` alternating user/assistant messages in complete turns, inserted in
    bulk with exactly the bookkeeping the engine would have written (seq, turn numbers, tokens, low/last seq).
    """
    from django.db import transaction
    from django.utils import timezone

    from sessions_app import engine
    from sessions_app.models import ConversationSession, Message

    ConversationSession.objects.filter(sid=session_id, owner=owner).delete()
    session = engine.session_create(
        session_id,
        owner=owner,
        system_prompt="You are a benchmark assistant.",
        config=engine.SessionConfig(max_messages=max(n_messages + 10, 100), max_tokens=8192, timeout_seconds=None),
    )
    now = timezone.now()
    seq = session.last_seq
    total = session.total_tokens
    turn_number = 0
    with transaction.atomic():
        remaining = n_messages
        while remaining > 0:
            rows = []
            for _ in range(min(batch, remaining)):
                seq += 1
                user_turn = (seq - session.last_seq) % 2 == 1
                if user_turn:
                    turn_number += 1
                content = (
                    f"Question {turn_number}: how does step {turn_number} of the plan work?"
                    if user_turn
                    else f"Answer {turn_number}: step {turn_number} takes the output of the previous step and **refines** it."
                )
                tokens = engine.estimate_tokens(content)
                total += tokens
                rows.append(
                    Message(
                        session=session,
                        seq=seq,
                        role="user" if user_turn else "assistant",
                        content=content,
                        created_at=now,
                        tokens=tokens,
                        turn_number=turn_number,
                    )
                )
            Message.objects.bulk_create(rows)  # turns are read from the messages: no turn rows
            remaining -= len(rows)
        ConversationSession.objects.filter(pk=session.pk).update(
            last_seq=seq, turn_count=turn_number, total_tokens=total
        )
    # Fresh planner statistics, as autovacuum / a long-running database would have them.
    from django.db import connection

    with connection.cursor() as cursor:
        for model in (Message, ConversationSession):
            cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
    return engine.session_get(session.pk)
