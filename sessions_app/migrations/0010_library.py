"""Titles for the conversations that existed before titles were stored (issue 11): each untitled
session takes its first user message's (as an append now gives it), in batches; nothing else changes.
Going back leaves the titles in place (the column itself belongs to 0008)."""

from django.db import migrations

BATCH = 500


def fill_titles(apps, schema_editor):
    from sessions_app.engine.values import title_from

    Session = apps.get_model("sessions_app", "ConversationSession")
    Message = apps.get_model("sessions_app", "Message")
    last = None
    while True:
        qs = Session.objects.filter(title="").order_by("key")
        if last is not None:
            qs = qs.filter(key__gt=last)
        keys = list(qs.values_list("key", flat=True)[:BATCH])
        if not keys:
            return
        last = keys[-1]
        for key in keys:
            first = (
                Message.objects.filter(session_id=key, role="user").order_by("seq").values_list("content", flat=True)
            ).first()
            if first:
                title = title_from(first)
                if title:
                    Session.objects.filter(key=key, title="").update(title=title)


class Migration(migrations.Migration):
    dependencies = [("sessions_app", "0012_reply_fencing")]  # the integrator re-chains (0011 is elsewhere)

    operations = [migrations.RunPython(fill_titles, migrations.RunPython.noop, elidable=True)]
