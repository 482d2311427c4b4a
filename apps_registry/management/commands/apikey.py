"""`manage.py apikey create|list|revoke` (also `digitorn apikey ...`).

The plaintext key is printed exactly once, at creation; only its SHA-256 hash is stored.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from digitorn_site.errors import DigitornError
from digitorn_site.principals import SCOPES


class Command(BaseCommand):
    help = "Create, list or revoke API keys."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="{create,list,revoke}", required=True)

        create = sub.add_parser("create", help="create a key and print it once")
        create.add_argument("--name", required=True, help="a label for the key (e.g. 'ci' or 'alice-laptop')")
        create.add_argument("--owner", default=None,
                            help="principal owning the sessions/approvals made with it (default: the name)")
        create.add_argument(
            "--scopes", default="apps:read,apps:run",
            help=f"comma-separated scopes among {', '.join(SCOPES)} (default: apps:read,apps:run)",
        )
        create.add_argument("--json", action="store_true", help="print {key, prefix, name, owner, scopes} as JSON")

        listing = sub.add_parser("list", help="list keys (never their values)")
        listing.add_argument("--all", action="store_true", help="include revoked keys")
        listing.add_argument("--json", action="store_true", help="machine-readable output")

        revoke = sub.add_parser("revoke", help="revoke a key by its prefix (or the whole key)")
        revoke.add_argument("prefix", help="the key's prefix as `apikey list` shows it, or the full key")

    def handle(self, *args, **options) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except DigitornError as exc:
            raise CommandError(exc.message)

    def _create(self, options: dict) -> None:
        from apps_registry.services import api_key_create

        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        key, raw = api_key_create(name=options["name"], owner=options["owner"], scopes=scopes)
        if options["json"]:
            self.stdout.write(json.dumps({"key": raw, "prefix": key.prefix, "name": key.name,
                                          "owner": key.owner, "scopes": key.scopes}))
            return
        self.stdout.write(raw)
        self.stderr.write(
            f"Created API key '{key.name}' (prefix {key.prefix}, owner {key.owner}, scopes {', '.join(key.scopes)}).\n"
            "Store it now: it is not saved anywhere and cannot be shown again. "
            f"Revoke it with `digitorn apikey revoke {key.prefix}`."
        )

    def _list(self, options: dict) -> None:
        from apps_registry.selectors import api_key_list

        keys = [k for k in api_key_list() if options["all"] or k.revoked_at is None]
        rows = [
            {
                "prefix": k.prefix,
                "name": k.name,
                "owner": k.owner,
                "scopes": list(k.scopes),
                "created_at": k.created_at.isoformat() if k.created_at else None,
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in keys
        ]
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not rows:
            self.stdout.write("No API keys. Create one with `digitorn apikey create --name NAME`.")
            return
        import io

        from rich.console import Console
        from rich.table import Table

        table = Table("prefix", "name", "owner", "scopes", "created", "last used", "revoked")
        for row in rows:
            table.add_row(row["prefix"], row["name"], row["owner"], ", ".join(row["scopes"]),
                          _short(row["created_at"]), _short(row["last_used_at"]), _short(row["revoked_at"]))
        import shutil

        buffer = io.StringIO()
        width = shutil.get_terminal_size((160, 24)).columns
        Console(file=buffer, width=width, highlight=False, soft_wrap=True).print(table)
        self.stdout.write(buffer.getvalue().rstrip("\n"))

    def _revoke(self, options: dict) -> None:
        from apps_registry.services import api_key_revoke

        key = api_key_revoke(prefix=options["prefix"])
        self.stdout.write(f"Revoked API key '{key.name}' (prefix {key.prefix}); it no longer authenticates.")


def _short(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "-"
