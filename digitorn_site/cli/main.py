"""The `digitorn` command: daemon lifecycle, app operations over the HTTP API, and admin commands.

Client commands find the daemon from ``--url``, ``DIGITORN_URL`` or the running daemon's pid file,
and authenticate with ``--api-key``, ``DIGITORN_API_KEY`` or the admin key in the data dir.
Exit codes: 0 ok, 1 an API or usage error, 2 the daemon is not reachable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from digitorn_site.cli.client import CliError
from digitorn_site.cli.output import fail

EPILOG = (
    "Environment: DIGITORN_DATA_DIR (data dir, default ~/.digitorn), DIGITORN_URL (daemon URL), "
    "DIGITORN_API_KEY (key for the CLI and bootstrap admin key of the daemon), "
    "DIGITORN_SERVER (daphne or uvicorn, for `start`)."
)


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """Import a command's module only when it runs, so `digitorn --help` stays fast."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(f"digitorn_site.cli.{module}"), name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitorn",
        description="Digitorn: a self-hosted daemon for AI-agent apps declared in YAML.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", help="daemon URL (default: DIGITORN_URL, else the running daemon's pid file)")
    client.add_argument("--api-key", help="API key (default: DIGITORN_API_KEY, else the admin key file)")

    # --- daemon lifecycle -----------------------------------------------------------------------
    p = sub.add_parser("start", help="start the daemon (migrations, ASGI workers, Celery worker and beat)",
                       description="Start the daemon and return once /api/health answers.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000; 0 picks a free one)")
    p.add_argument("--workers", type=int, default=1, help="ASGI worker processes sharing the port")
    p.add_argument("--server", choices=("daphne", "uvicorn"), default=None,
                   help="the ASGI server of the workers: daphne (the default) or uvicorn (uvloop + httptools); "
                        "default: DIGITORN_SERVER, else daphne")
    p.add_argument("--celery-workers", type=int, default=1,
                   help="Celery worker processes (0: none, e.g. when `digitorn worker` runs elsewhere)")
    p.add_argument("--celery-concurrency", type=int, default=min(4, os.cpu_count() or 2),
                   help="pool size of each Celery worker (default: CPU count, at most 4)")
    p.add_argument("--celery-pool", choices=("auto", "threads", "prefork", "solo"), default="auto",
                   help="Celery pool: auto (default) is threads on the embedded SQLite broker, which "
                        "keeps the daemon small, and prefork with REDIS_URL")
    p.add_argument("--no-beat", action="store_true", help="do not run the periodic scheduler (celery beat)")
    p.add_argument("--foreground", action="store_true", help="stay attached and log to the terminal")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds children get to stop gracefully before SIGKILL (default 10)")
    p.add_argument("--wait", type=float, default=90.0, help="seconds to wait for /api/health (default 90)")
    p.set_defaults(func=_lazy("daemon", "cmd_start"))

    p = sub.add_parser("stop", help="stop the daemon and every process it started")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds of grace before SIGKILL (default: the --grace the daemon started with)")
    p.set_defaults(func=_lazy("daemon", "cmd_stop"))

    p = sub.add_parser("status", help="show the daemon's URL, processes and health", parents=[client])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_lazy("daemon", "cmd_status"))

    p = sub.add_parser("worker", help="run only a Celery worker (for extra hosts; needs DATABASE_URL/REDIS_URL)")
    p.add_argument("--concurrency", type=int, default=min(4, os.cpu_count() or 2), help="pool size")
    p.add_argument("--hostname", default="", help="Celery node name (default: celery@<host>)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--beat", action="store_true", help="also run the periodic scheduler in this worker")
    p.set_defaults(func=_lazy("daemon", "cmd_worker"))

    # --- apps ---------------------------------------------------------------------------------
    p = sub.add_parser("deploy", help="deploy an app from a YAML file", parents=[client])
    p.add_argument("path", help="path to the app's YAML file (sent as an absolute path)")
    p.add_argument("--force", action="store_true", help="redeploy an app that is already deployed")
    p.set_defaults(func=_lazy("commands", "cmd_deploy"))

    p = sub.add_parser("validate", help="compile manifests offline (no daemon): errors with YAML path, line "
                       "and column, and warnings; exit 1 on errors")
    p.add_argument("paths", nargs="+", metavar="PATH", help="app YAML files")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_lazy("commands", "cmd_validate"))

    p = sub.add_parser("apps", help="list deployed apps", parents=[client])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_lazy("commands", "cmd_apps"))

    p = sub.add_parser("undeploy", help="remove a deployed app", parents=[client])
    p.add_argument("app", help="app id")
    p.set_defaults(func=_lazy("commands", "cmd_undeploy"))

    # --- secrets ------------------------------------------------------------------------------
    p = sub.add_parser("secret", help="manage per-app secrets")
    ssub = p.add_subparsers(dest="secret_command", metavar="SUBCOMMAND")
    ssub.required = True
    s = ssub.add_parser("set", help="set a secret (prompts, hidden, when VALUE is omitted)", parents=[client])
    s.add_argument("app")
    s.add_argument("key")
    s.add_argument("value", nargs="?", help="the value; omit it to be prompted (or pipe it on stdin)")
    s.set_defaults(func=_lazy("commands", "cmd_secret_set"))
    s = ssub.add_parser("list", help="list an app's secret names (never values)", parents=[client])
    s.add_argument("app")
    s.set_defaults(func=_lazy("commands", "cmd_secret_list"))
    s = ssub.add_parser("delete", help="delete a secret", parents=[client])
    s.add_argument("app")
    s.add_argument("key")
    s.set_defaults(func=_lazy("commands", "cmd_secret_delete"))
    s = ssub.add_parser("rotate", help="re-encrypt every stored secret with the newest encryption key "
                                       "(runs locally against the data dir's database)")
    s.set_defaults(func=_lazy("commands", "cmd_secret_rotate"))
    s = ssub.add_parser("genkey", help="print a new encryption key for DIGITORN_ENCRYPTION_KEYS (newest first)")
    s.set_defaults(func=_lazy("commands", "cmd_secret_genkey"))

    # --- runtime ------------------------------------------------------------------------------
    p = sub.add_parser("tasks", help="list an app's background tasks", parents=[client])
    p.add_argument("app")
    p.add_argument("--status", help="only tasks with this status (queued, running, completed, failed, cancelled)")
    p.set_defaults(func=_lazy("commands", "cmd_tasks"))

    p = sub.add_parser("approvals", help="list an app's pending approval requests", parents=[client])
    p.add_argument("app")
    p.set_defaults(func=_lazy("commands", "cmd_approvals"))

    p = sub.add_parser("chat", help="chat with an app in the terminal (reads lines from stdin)", parents=[client])
    p.add_argument("app")
    p.add_argument("--session", help="session id to use or resume (default: a new one)")
    p.set_defaults(func=_lazy("chat", "cmd_chat"))

    # --- admin --------------------------------------------------------------------------------
    p = sub.add_parser(
        "apikey",
        help="create, list or revoke API keys (runs locally against the data dir's database)",
        description="Same as `manage.py apikey ...`; run `digitorn apikey create --help` for options.",
        add_help=False,
    )
    p.add_argument("apikey_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_lazy("commands", "cmd_apikey"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        return fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
