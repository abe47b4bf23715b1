"""Full-text search over message content and conversation titles (issue 11), kept in step on every write.

PostgreSQL: a stored generated ``tsvector`` column on messages with a GIN index (computed for the rows
already there when the column is added), and a GIN expression index on titles (an expression index,
not a stored column: the session row is updated on every append, and a stored column would be
recomputed on each of those updates; the index on ``title`` alone keeps those updates HOT).

SQLite: an FTS5 index of message content (external content: the text stays in the message table only)
and one of titles, kept in step by triggers on insert, update and delete, and filled from the rows
already there.

Both use the same words: runs of letters and digits, lower-cased, no stemming, no stop words (the
``simple`` configuration over the text with every other character made a space; FTS5's ``unicode61``
tokenizer, which splits at the same characters). See ``sessions_app.engine.search``.
"""

from django.db import migrations

from sessions_app.engine import search_schema


def forward(apps, schema_editor):
    search_schema.install(schema_editor.connection)


def backward(apps, schema_editor):
    search_schema.uninstall(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0008_shared_fields"),
    ]

    operations = [migrations.RunPython(forward, backward)]
