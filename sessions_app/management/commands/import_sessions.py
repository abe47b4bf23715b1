from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from sessions_app import engine, transfer
from sessions_app.transfer import formats


class Command(BaseCommand):
    help = (
        "Imports conversations as new ones of a user, from a Convo export (JSON, JSON Lines, or the zip of "
        "'Export all'), ChatGPT's conversations.json or an Open WebUI chat export. The whole file is checked "
        "first: a bad one imports nothing. Each conversation is then written in its own transaction."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", metavar="FILE")
        parser.add_argument("--owner", metavar="USER", required=True, help="The user the conversations go to.")

    def handle(self, *args, file, owner, **options):
        user = get_user_model().objects.filter(username=owner).first()
        if user is None:
            raise CommandError(f"No user named {owner!r}.")
        try:
            # First pass: every conversation read and checked (one at a time for JSON Lines).
            total = 0
            for conversation in formats.read_documents(formats.path_documents(file)):
                transfer.check(conversation)
                total += 1
            # Second pass: written, one transaction each.
            now = timezone.now()
            linker = transfer.ParentLinker(user)
            for conversation in formats.read_documents(formats.path_documents(file)):
                result = linker.imported(conversation, transfer.import_conversation(conversation, owner=user, now=now))
                renamed = f" (its id {result.requested_id} was taken)" if result.renamed else ""
                self.stdout.write(f"Imported {result.id}{renamed}: {result.messages} message(s)")
            linker.finish()
            engine.analyze()  # a bulk load: the planner's statistics follow at once (engine/stats.py)
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from exc
        except transfer.ImportInvalid as exc:
            raise CommandError(f"Nothing was imported. {exc}") from exc
        except (DatabaseError, engine.StorageError) as exc:
            raise CommandError(f"Cannot write to the database: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"Imported {total} conversation(s) for {owner}."))
