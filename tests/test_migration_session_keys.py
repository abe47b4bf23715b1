"""The migration to per-owner ids and session keys carries existing rows over without loss (issue 9)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = ("sessions_app", "0006_derived_turns")

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])
    return executor.loader.project_state([target]).apps


def _leaf():
    executor = MigrationExecutor(connection)
    return [key for key in executor.loader.graph.leaf_nodes() if key[0] == "sessions_app"][0]


def test_rows_keep_their_links():
    """Sessions, messages, turns, replies and idempotency records written before the migration keep
    their ids, owners and links after it; each session gets its own key."""
    old = _migrate(BEFORE)
    User = old.get_model("auth", "User")
    Session = old.get_model("sessions_app", "ConversationSession")
    Message = old.get_model("sessions_app", "Message")
    Turn = old.get_model("sessions_app", "Turn")
    Reply = old.get_model("sessions_app", "Reply")
    Record = old.get_model("sessions_app", "ApiIdempotencyKey")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    alice = User.objects.create(username="alice-m")
    bob = User.objects.create(username="bob-m")
    config = {"max_messages": 10, "max_tokens": 100, "persist_system_prompt": True, "created_at": now}
    for sid, owner in (("support-42", alice), ("b-1", bob), ("service", None)):
        session = Session.objects.create(
            id=sid, owner=owner, updated_at=now, last_seq=2, low_seq=1, turn_count=1, variables={"k": sid}, **config
        )
        Message.objects.create(
            session=session, seq=1, role="user", content=f"hi {sid}", created_at=now, tokens=1, turn_number=1
        )
        Message.objects.create(
            session=session, seq=2, role="assistant", content=f"yo {sid}", created_at=now, tokens=1, turn_number=1
        )
        Turn.objects.create(session=session, number=1, metadata={"t": sid})
        Reply.objects.create(
            session=session, turn_number=1, user_seq=1, base_seq=1, status="done", responder="builtin",
            worker="w", heartbeat_at=now, started_at=now, message_seq=2,
        )  # fmt: skip
    Record.objects.create(
        user=alice, key="k1", session_id="support-42", fingerprint="f", response={"a": 1}, created_at=now
    )
    Record.objects.create(user=bob, key="k1", session_id="support-42", fingerprint="f", response={}, created_at=now)

    new = _migrate(_leaf())
    Session = new.get_model("sessions_app", "ConversationSession")
    Message = new.get_model("sessions_app", "Message")
    Turn = new.get_model("sessions_app", "Turn")
    Reply = new.get_model("sessions_app", "Reply")
    Record = new.get_model("sessions_app", "ApiIdempotencyKey")
    sessions = {s.sid: s for s in Session.objects.all()}
    assert set(sessions) == {"support-42", "b-1", "service"}
    assert len({s.key for s in sessions.values()}) == 3
    assert all(isinstance(s.key, uuid.UUID) for s in sessions.values())
    assert sessions["support-42"].owner_id == alice.pk and sessions["service"].owner_id is None
    for sid, session in sessions.items():
        assert session.variables == {"k": sid}
        assert [(m.seq, m.content) for m in Message.objects.filter(session=session).order_by("seq")] == [
            (1, f"hi {sid}"),
            (2, f"yo {sid}"),
        ]
        turn = Turn.objects.get(session=session)
        assert turn.metadata == {"t": sid}
        assert Reply.objects.get(session=session).message_seq == 2
    assert Message.objects.count() == 6 and Turn.objects.count() == 3 and Reply.objects.count() == 3
    assert Record.objects.get(user_id=alice.pk).session_key == sessions["support-42"].key
    assert Record.objects.get(user_id=bob.pk).session_key is None  # bob never had a support-42

    # The new rules hold on the converted table: bob may now have his own support-42.
    Session.objects.create(
        sid="support-42", owner_id=bob.pk, updated_at=now, max_messages=1, max_tokens=1, persist_system_prompt=False,
        created_at=now,
    )  # fmt: skip
    assert Session.objects.filter(sid="support-42").count() == 2
