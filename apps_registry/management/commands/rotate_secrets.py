"""`manage.py rotate_secrets` (also `digitorn secret rotate`): re-encrypt every app secret with the
newest key of DIGITORN_ENCRYPTION_KEYS, so an old key can then be retired."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from digitorn_site.errors import DigitornError


class Command(BaseCommand):
    help = "Re-encrypt every stored app secret with the newest encryption key."

    def handle(self, *args, **options) -> None:
        from apps_registry.services import secrets_rotate

        try:
            count = secrets_rotate()
        except DigitornError as exc:
            raise CommandError(exc.message)
        self.stdout.write(f"Re-encrypted {count} secret{'s' if count != 1 else ''} with the newest key.")
