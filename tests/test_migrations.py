"""Migrations carry existing rows over: run from the previous migration with rows in place."""

import datetime as dt

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from sessions_app import engine

pytestmark = pytest.mark.django_db(transaction=True)
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([("sessions_app", target)])
    executor.loader.build_graph()
    return executor.loader.project_state([("sessions_app", target)]).apps


def latest():
    """The newest migration: the tests that follow (and the current models) need it."""
    executor = MigrationExecutor(connection)
    return next(name for app, name in executor.loader.graph.leaf_nodes() if app == "sessions_app")


def test_0006_keeps_turn_metadata_and_derives_the_rest():
    apps = migrate("0005_hot_session_updates")
    try:
        Session, Message, Turn = (apps.get_model("sessions_app", m) for m in ("ConversationSession", "Message", "Turn"))
        session = Session.objects.create(
            id="old", max_messages=100, max_tokens=4096, persist_system_prompt=True, created_at=NOW, updated_at=NOW,
            last_seq=4, turn_count=2, total_tokens=8,
        )  # fmt: skip
        rows = [("user", 1, "q1"), ("assistant", 1, "a1"), ("user", 2, "q2"), ("tool", 2, "t2")]
        messages = [
            Message.objects.create(
                session=session,
                seq=seq,
                role=role,
                content=text,
                created_at=NOW + dt.timedelta(seconds=seq),
                tokens=2,
                turn_number=turn,
            )  # fmt: skip
            for seq, (role, turn, text) in enumerate(rows, start=1)
        ]
        Turn.objects.create(
            session=session, number=1, user_message=messages[0], assistant_response=messages[1],
            started_at=messages[0].created_at, completed_at=messages[1].created_at,
        )  # fmt: skip
        Turn.objects.create(
            session=session, number=2, user_message=messages[2], started_at=messages[2].created_at,
            metadata={"reply_error": "HTTP 500"},
        )  # fmt: skip
    finally:
        migrate(latest())

    from sessions_app.models import Turn

    assert list(Turn.objects.values_list("session__sid", "number", "metadata")) == [
        ("old", 2, {"reply_error": "HTTP 500"})
    ]
    first, second = engine.turns(engine.session_get("old"))
    assert (first.user_message.content, first.assistant_response.content, first.metadata) == ("q1", "a1", {})
    assert (first.started_at, first.completed_at) == (NOW + dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=2))
    assert (second.user_message.content, second.assistant_response, [m.content for m in second.tool_calls]) == (
        "q2",
        None,
        ["t2"],
    )
    assert second.metadata == {"reply_error": "HTTP 500"} and not second.is_complete

    # And back: one row per turn again, rebuilt from the messages, the metadata kept.
    apps = migrate("0005_hot_session_updates")
    try:
        Turn = apps.get_model("sessions_app", "Turn")
        rebuilt = Turn.objects.order_by("number").values_list(
            "number", "user_message__content", "assistant_response__content", "completed_at", "metadata"
        )
        assert list(rebuilt) == [
            (1, "q1", "a1", NOW + dt.timedelta(seconds=2), {}),
            (2, "q2", None, None, {"reply_error": "HTTP 500"}),
        ]
    finally:
        migrate(latest())
