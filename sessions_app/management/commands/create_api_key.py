from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sessions_app import keys


class Command(BaseCommand):
    help = (
        "Creates a personal API key for USERNAME and prints it. The key is shown only this once "
        "(only its hash is stored); list and revoke keys at /settings/api-keys/ or in the admin."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to recognise the key by (default: 'API key').")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive: its keys would not authenticate.")
        try:
            key, secret = keys.create_api_key(user, name)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(f"Created API key {key.name!r} for {username}. Store it now: it cannot be shown again.")
        self.stdout.write(secret)
