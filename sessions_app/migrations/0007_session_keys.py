"""Sessions get a surrogate key; the caller's id becomes unique per owner (issue 9).

Every session gets a random UUID ``key``, the new primary key; its id moves to ``sid`` (unique per
owner, and among the sessions without an owner). Messages, turns, replies and idempotency records are
re-pointed from the id to the key, row for row: nothing is lost and every link is kept.

Going back works with rows in place while no two sessions share an id (the old schema has one namespace).
"""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def fill_session_keys(apps, schema_editor):
    Session = apps.get_model("sessions_app", "ConversationSession")
    db = schema_editor.connection.alias
    pending = list(Session.objects.using(db).filter(key__isnull=True).values_list("pk", flat=True))
    for pk in pending:
        Session.objects.using(db).filter(pk=pk).update(key=uuid.uuid4())


def fill_child_keys(apps, schema_editor):
    """Each message, turn and reply gets its session's key (they still point at the id here)."""
    Session = apps.get_model("sessions_app", "ConversationSession")
    db = schema_editor.connection.alias
    key_of = Subquery(Session.objects.using(db).filter(pk=OuterRef("session_id")).values("key")[:1])
    for name in ("Message", "Turn", "Reply"):
        apps.get_model("sessions_app", name).objects.using(db).update(session_key=key_of)
    # An idempotency record names the session by the user's id for it; the user owned it.
    Record = apps.get_model("sessions_app", "ApiIdempotencyKey")
    owned = Session.objects.using(db).filter(pk=OuterRef("session_id"), owner=OuterRef("user_id")).values("key")[:1]
    Record.objects.using(db).update(session_key=Subquery(owned))


def fill_child_ids(apps, schema_editor):
    """Backwards: point the rows at their session's id again."""
    Session = apps.get_model("sessions_app", "ConversationSession")
    db = schema_editor.connection.alias
    id_of = Subquery(Session.objects.using(db).filter(key=OuterRef("session_key")).values("pk")[:1])
    for name in ("Message", "Turn", "Reply"):
        apps.get_model("sessions_app", name).objects.using(db).update(session_id=id_of)
    Record = apps.get_model("sessions_app", "ApiIdempotencyKey")
    Record.objects.using(db).exclude(session_key=None).update(session_id=id_of)


def _fields(model):
    sid = models.CharField("id", max_length=128, help_text="The caller's id for the session, unique per owner.")
    sid.set_attributes_from_name("sid")
    key = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, serialize=False)
    key.set_attributes_from_name("key")
    for field in (sid, key):
        field.model = model
    return sid, key


def swap_primary_key(apps, schema_editor):
    """The primary key moves from ``sid`` to ``key``.

    PostgreSQL drops the old key's constraint when ``sid`` stops being the primary key, then adds the
    new one; SQLite rebuilds the table once, with ``key`` as its primary key (``sid`` demoted).
    """
    Session = apps.get_model("sessions_app", "ConversationSession")
    sid, key = _fields(Session)
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.alter_field(Session, Session._meta.get_field("key"), key)
    else:
        schema_editor.alter_field(Session, Session._meta.get_field("sid"), sid)
        schema_editor.alter_field(Session, Session._meta.get_field("key"), key)
        # The primary key's pattern index (for LIKE) kept its name from the column "id": drop it too.
        table = Session._meta.db_table
        with schema_editor.connection.cursor() as cursor:
            constraints = schema_editor.connection.introspection.get_constraints(cursor, table)
        for name, info in constraints.items():
            if info["index"] and info["columns"] == ["sid"] and name.endswith("_like"):
                schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def unswap_primary_key(apps, schema_editor):
    """Backwards: ``sid`` is the primary key again (``apps`` is the state before the swap)."""
    Session = apps.get_model("sessions_app", "ConversationSession")
    sid, key = _fields(Session)  # as the table has them now
    old_sid, old_key = Session._meta.get_field("sid"), Session._meta.get_field("key")
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.alter_field(Session, key, old_key)
    else:
        # Not the primary key any more, then nullable (a primary key column cannot drop NOT NULL).
        plain_key = models.UUIDField()
        plain_key.set_attributes_from_name("key")
        plain_key.model = Session
        schema_editor.alter_field(Session, key, plain_key)
        schema_editor.alter_field(Session, sid, old_sid)
        schema_editor.alter_field(Session, plain_key, old_key)


def _session_fk(related_name, **kwargs):
    return models.ForeignKey(
        db_index=False,
        on_delete=django.db.models.deletion.CASCADE,
        related_name=related_name,
        to="sessions_app.conversationsession",
        **kwargs,
    )


class Migration(migrations.Migration):

    dependencies = [
        ("sessions_app", "0006_derived_turns"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # 1. Every session gets its key; every row that points at a session learns that key.
        migrations.AddField(
            model_name="conversationsession", name="key", field=models.UUIDField(null=True, blank=True)
        ),
        migrations.RunPython(fill_session_keys, migrations.RunPython.noop),
        migrations.AddField(model_name="message", name="session_key", field=models.UUIDField(null=True)),
        migrations.AddField(model_name="turn", name="session_key", field=models.UUIDField(null=True)),
        migrations.AddField(model_name="reply", name="session_key", field=models.UUIDField(null=True)),
        migrations.AddField(
            model_name="apiidempotencykey", name="session_key", field=models.UUIDField(null=True, blank=True)
        ),
        # Nullable first, so that going back adds the columns before fill_child_ids fills them.
        migrations.AlterField(model_name="message", name="session", field=_session_fk("messages", null=True)),
        migrations.AlterField(model_name="turn", name="session", field=_session_fk("turns", null=True)),
        migrations.AlterField(model_name="reply", name="session", field=_session_fk("replies", null=True)),
        migrations.RunPython(fill_child_keys, fill_child_ids),
        # 2. The references by id go (with the constraints and indexes that hold them).
        migrations.RemoveConstraint(model_name="message", name="message_session_seq_unique"),
        migrations.RemoveIndex(model_name="message", name="message_tool_turn"),
        migrations.RemoveIndex(model_name="message", name="message_user_turn"),
        migrations.RemoveConstraint(model_name="turn", name="turn_session_number_unique"),
        migrations.RemoveConstraint(model_name="reply", name="reply_one_running_per_session"),
        migrations.RemoveIndex(model_name="reply", name="reply_session_recent"),
        migrations.AlterModelOptions(name="message", options={}),
        migrations.AlterModelOptions(
            name="turn", options={"verbose_name": "turn metadata", "verbose_name_plural": "turn metadata"}
        ),
        migrations.AlterModelOptions(name="reply", options={"verbose_name_plural": "replies"}),
        migrations.RemoveField(model_name="message", name="session"),
        migrations.RemoveField(model_name="turn", name="session"),
        migrations.RemoveField(model_name="reply", name="session"),
        migrations.RemoveField(model_name="apiidempotencykey", name="session_id"),
        # 3. The id becomes sid, and key the primary key.
        migrations.RenameField(model_name="conversationsession", old_name="id", new_name="sid"),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="conversationsession",
                    name="key",
                    field=models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False),
                ),
                migrations.AlterField(
                    model_name="conversationsession",
                    name="sid",
                    field=models.CharField(
                        help_text="The caller's id for the session, unique per owner.",
                        max_length=128,
                        verbose_name="id",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(swap_primary_key, unswap_primary_key)],
        ),
        migrations.AddConstraint(
            model_name="conversationsession",
            constraint=models.UniqueConstraint(fields=("sid", "owner"), name="session_id_owner_unique"),
        ),
        migrations.AddConstraint(
            model_name="conversationsession",
            constraint=models.UniqueConstraint(
                condition=models.Q(("owner__isnull", True)), fields=("sid",), name="session_id_ownerless_unique"
            ),
        ),
        # 4. The rows point at the key.
        migrations.RenameField(model_name="message", old_name="session_key", new_name="session"),
        migrations.RenameField(model_name="turn", old_name="session_key", new_name="session"),
        migrations.RenameField(model_name="reply", old_name="session_key", new_name="session"),
        migrations.AlterField(model_name="message", name="session", field=_session_fk("messages")),
        migrations.AlterField(model_name="turn", name="session", field=_session_fk("turns")),
        migrations.AlterField(model_name="reply", name="session", field=_session_fk("replies")),
        migrations.AlterModelOptions(name="message", options={"ordering": ["session", "seq"]}),
        migrations.AlterModelOptions(
            name="turn",
            options={
                "ordering": ["session", "number"],
                "verbose_name": "turn metadata",
                "verbose_name_plural": "turn metadata",
            },
        ),
        migrations.AlterModelOptions(
            name="reply", options={"ordering": ["session", "started_at", "id"], "verbose_name_plural": "replies"}
        ),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(fields=("session", "seq"), name="message_session_seq_unique"),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=models.Q(("role", "tool")), fields=["session", "turn_number"], name="message_tool_turn"
            ),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=models.Q(("role", "user")), fields=["session", "turn_number"], name="message_user_turn"
            ),
        ),
        migrations.AddConstraint(
            model_name="turn",
            constraint=models.UniqueConstraint(fields=("session", "number"), name="turn_session_number_unique"),
        ),
        migrations.AddConstraint(
            model_name="reply",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status", "running")), fields=("session",), name="reply_one_running_per_session"
            ),
        ),
        migrations.AddIndex(
            model_name="reply",
            index=models.Index(fields=["session", "-started_at"], name="reply_session_recent"),
        ),
    ]
