from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from sessions_app import engine, transfer
from sessions_app.models import ConversationSession


class Command(BaseCommand):
    help = (
        "Writes conversations as JSON Lines: one convo.export/1 document (the whole history) a line, read a "
        "page at a time, so any number and length of conversations export in constant memory. "
        "Without --owner or --id: every conversation."
    )

    def add_arguments(self, parser):
        parser.add_argument("--owner", metavar="USER", help="Only this user's conversations (a username).")
        parser.add_argument("--id", metavar="ID", dest="session_id", help="Only the conversation with this id.")
        parser.add_argument("--output", metavar="FILE", help="Write to this file (default: standard output).")

    def handle(self, *args, owner, session_id, output, **options):
        try:
            sessions = self._sessions(owner, session_id)
            if output:
                with open(output, "w", encoding="utf-8") as file:
                    count = self._write(file.write, sessions)
                self.stderr.write(f"Exported {count} conversation(s) to {output}.")
            else:
                self._write(lambda text: self.stdout.write(text, ending=""), sessions)
                self.stdout.flush()
        except (DatabaseError, engine.StorageError) as exc:
            raise CommandError(f"Cannot read the database: {exc}") from exc
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc}") from exc

    def _sessions(self, owner, session_id):
        user = engine.ANY_OWNER
        if owner is not None:
            user = get_user_model().objects.filter(username=owner).first()
            if user is None:
                raise CommandError(f"No user named {owner!r}.")
        if session_id is not None:
            try:
                session = engine.find_session(session_id, user)
            except engine.SessionNotFound:
                session = None
            except engine.SessionAmbiguous as exc:
                raise CommandError(f"{exc} (--owner USER)") from exc
            if session is None:
                raise CommandError(f"No conversation {session_id!r}" + (f" of {owner}." if owner else "."))
            return [session]
        if user is engine.ANY_OWNER:
            return transfer.iter_sessions(ConversationSession.objects.all())
        return transfer.user_sessions(user)

    def _write(self, write, sessions) -> int:
        count = 0
        for session in sessions:
            for piece in transfer.iter_json(session, lines=True):
                write(piece)
            write("\n")
            count += 1
        return count
