"""Migration 0009_search indexes the rows already there (and goes back without touching them)."""

import datetime as dt

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from sessions_app.engine.search import search

pytestmark = pytest.mark.django_db(transaction=True)
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def migrate(target):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([("sessions_app", target)])
    executor.loader.build_graph()
    return executor.loader.project_state([("sessions_app", target)]).apps


def latest():
    executor = MigrationExecutor(connection)
    return next(name for app, name in executor.loader.graph.leaf_nodes() if app == "sessions_app")


def test_existing_messages_and_titles_are_found_after_the_migration(user):
    apps = migrate("0008_shared_fields")
    try:
        Session, Message = (apps.get_model("sessions_app", m) for m in ("ConversationSession", "Message"))
        session = Session.objects.create(
            sid="old", owner_id=user.pk, title="Lighthouse keeping", max_messages=100, max_tokens=4096,
            persist_system_prompt=True, created_at=NOW, updated_at=NOW, last_seq=2, turn_count=1, total_tokens=8,
        )  # fmt: skip
        for seq, (role, text) in enumerate(
            [("user", "How bright is the lamp?"), ("assistant", "The lamp is bright.")], 1
        ):
            Message.objects.create(
                session=session, seq=seq, role=role, content=text, created_at=NOW, tokens=4, turn_number=1
            )
    finally:
        migrate(latest())
    assert [(hit.session_id, hit.seq) for hit in search(user, "lamp").hits] == [("old", 2), ("old", 1)]
    assert [(hit.kind, hit.title) for hit in search(user, "lighthouse").hits] == [("title", "Lighthouse keeping")]
    # Back to 0008 and forward again: the rows stay, and are found again.
    migrate("0008_shared_fields")
    migrate(latest())
    assert len(search(user, "lamp").hits) == 2
