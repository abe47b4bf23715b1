"""The periodic sweep looks for recently interrupted replies to resume (issue 10): a partial index on
their finish time, so that look stays one small index scan however many replies are stored."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0009_search"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="reply",
            index=models.Index(
                condition=models.Q(("status", "interrupted")),
                fields=["finished_at"],
                name="reply_interrupted_finished",
            ),
        ),
    ]
