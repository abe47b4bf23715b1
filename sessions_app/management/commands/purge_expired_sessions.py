from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection

from sessions_app import engine
from sessions_app.api.idempotency import expired_keys, purge_expired_keys

DRY_RUN_LISTED = 20  # expired sessions a dry run names


class Command(BaseCommand):
    help = (
        "Deletes expired conversation sessions with their messages and turns, in batches, and API "
        "Idempotency-Keys older than CONVO_API_IDEMPOTENCY_TTL_SECONDS. "
        "Safe to run from cron: a session that becomes active while it runs is kept."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="Sessions deleted per transaction (default 1000)."
        )
        parser.add_argument("--dry-run", action="store_true", help="Print how many would go; delete nothing.")

    def handle(self, *args, batch_size, dry_run, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            connection.ensure_connection()
            if dry_run:
                found = engine.count_expired()
                self.stdout.write(
                    f"Dry run: would delete {found.sessions} expired session(s) with {found.messages} message(s)."
                )
                # Named by owner and id: ids are per owner, so the id alone may be several sessions.
                for session in engine.expired_sessions(limit=DRY_RUN_LISTED):
                    self.stdout.write(
                        f"  {session.owner_label} / {session.sid} (expired {session.expires_at:%Y-%m-%d %H:%M})"
                    )
                if found.sessions > DRY_RUN_LISTED:
                    self.stdout.write(f"  … and {found.sessions - DRY_RUN_LISTED} more")
                self.stdout.write(f"Dry run: would delete {expired_keys()} expired Idempotency-Key(s).")
                return
            progress = self._progress if self.stdout.isatty() else None
            result = engine.purge_expired(batch_size=batch_size, progress=progress)
            keys = purge_expired_keys(batch_size=batch_size)
            if result.sessions:
                engine.analyze()  # the tables shrank: plans follow at once, not at autovacuum's pace
        except (DatabaseError, engine.StorageError) as exc:
            raise CommandError(f"Cannot reach the database: {exc}") from exc
        if progress:
            self.stdout.write("")
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {result.sessions} expired session(s) with {result.messages} message(s).")
        )
        self.stdout.write(self.style.SUCCESS(f"Deleted {keys} expired Idempotency-Key(s)."))

    def _progress(self, result: engine.PurgeResult) -> None:
        self.stdout.write(f"\rDeleted {result.sessions} session(s), {result.messages} message(s)…", ending="")
        self.stdout.flush()
