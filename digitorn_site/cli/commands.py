"""Client commands: thin wrappers over the HTTP API (and two local admin commands)."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from digitorn_site.cli.client import ApiClient, CliError, path_part
from digitorn_site.cli.output import console, info


def _client(args) -> ApiClient:
    return ApiClient(url=getattr(args, "url", None), api_key=getattr(args, "api_key", None))


def _when(value: Any) -> str:
    """Timestamps arrive as epoch floats or ISO strings; show them the same way."""
    if value in (None, ""):
        return "-"
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("T", " ")[:19]


def _join(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value in (None, "") else str(value)


# --- apps -------------------------------------------------------------------------------------
def cmd_deploy(args) -> int:
    path = Path(args.path).expanduser()
    if not path.exists():
        raise CliError(f"{args.path}: no such file.")
    with _client(args) as api:
        data = api.post("/api/apps/deploy", json={"yaml_path": str(path.resolve()), "force": bool(args.force)})
    info(f"deployed {data.get('app_id')} ({data.get('name')}, version {data.get('version')}): "
         f"{len(data.get('agents') or [])} agent(s), {data.get('total_tools', 0)} tool(s) "
         f"in {data.get('total_categories', 0)} categor{'y' if data.get('total_categories') == 1 else 'ies'}.")
    if missing := data.get("missing_secrets"):
        info(f"missing secrets: {', '.join(missing)} — set them with "
             f"`digitorn secret set {data.get('app_id')} KEY`.")
    return 0


def cmd_validate(args) -> int:
    """Compile each manifest with the daemon's compiler, locally: nothing is stored or sent."""
    from digitorn_site.cli.config import django_setup

    django_setup()
    from apps_registry.manifest.compiler import compile_manifest
    from apps_registry.services import _folder_files
    from digitorn_site.errors import DigitornError, ManifestError

    failed = 0
    report = []
    for raw in args.paths:
        path = Path(raw).expanduser()
        entry: dict = {"path": raw, "valid": False, "errors": [], "warnings": []}
        try:
            text = path.read_bytes()
        except OSError as exc:
            entry["errors"] = [{"path": "", "message": f"cannot read the file: {exc.strerror}"}]
        else:
            try:
                result = compile_manifest(text, files=_folder_files(path.resolve().parent))
            except ManifestError as exc:
                entry["errors"] = list(exc.errors)
            except DigitornError as exc:
                entry["errors"] = [{"path": "", "message": str(exc)}]
            else:
                entry.update(valid=True, app_id=result.app.app_id, warnings=list(result.warnings),
                             missing_secrets=list(result.missing_secrets))
        failed += not entry["valid"]
        report.append(entry)
        if args.json:
            continue
        if entry["valid"]:
            print(f"{raw}: ok (app {entry['app_id']})")
        for err in entry["errors"]:
            where = f":{err['line']}:{err['column']}" if "line" in err else ""
            print(f"{raw}{where}: error: {err['path'] + ': ' if err.get('path') else ''}{err['message']}")
        for warning in entry["warnings"]:
            print(f"{raw}: warning: {warning}")
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    return 1 if failed else 0


def cmd_apps(args) -> int:
    with _client(args) as api:
        data = api.get("/api/apps/")
    apps = data if isinstance(data, list) else (data or {}).get("apps", [])
    if args.json:
        print(json.dumps(apps, indent=2))
        return 0
    if not apps:
        info("no apps deployed; deploy one with `digitorn deploy PATH`.")
        return 0
    table = Table("app_id", "name", "version", "mode", "agents", "modules", "tools", "deployed")
    for app in apps:
        table.add_row(str(app.get("app_id")), str(app.get("name", "")), str(app.get("version", "")),
                      str(app.get("mode", "")), _join(app.get("agents")), _join(app.get("modules")),
                      str(app.get("total_tools", "")), _when(app.get("deployed_at")))
    console.print(table)
    return 0


def cmd_undeploy(args) -> int:
    with _client(args) as api:
        api.delete(f"/api/apps/{path_part(args.app)}")
    info(f"undeployed {args.app}.")
    return 0


# --- secrets ----------------------------------------------------------------------------------
def _read_secret_value(app: str, key: str) -> str:
    """Hidden prompt on a terminal; otherwise the first line of stdin (so it can be piped)."""
    if sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(f"value for {app}/{key} (hidden): ")
    else:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        value = line.rstrip("\r\n")
    if not value:
        raise CliError("no value given; pass VALUE, type it at the prompt, or pipe it on stdin.")
    return value


def cmd_secret_set(args) -> int:
    value = args.value if args.value is not None else _read_secret_value(args.app, args.key)
    with _client(args) as api:
        data = api.put(f"/api/apps/{path_part(args.app)}/secrets/{path_part(args.key)}", json={"value": value})
    # Secrets may be set before the deploy (the original's order); say which case this was.
    later = isinstance(data, dict) and data.get("reloaded") is False
    info(f"secret {args.key} set for {args.app}" + (" (not deployed yet: the deploy will use it)." if later else "."))
    return 0


def cmd_secret_list(args) -> int:
    with _client(args) as api:
        data = api.get(f"/api/apps/{path_part(args.app)}/secrets")
    keys = (data or {}).get("keys", []) if isinstance(data, dict) else list(data or [])
    if not keys:
        info(f"{args.app} has no secrets.")
        return 0
    table = Table(f"secrets of {args.app}")
    for key in keys:
        table.add_row(str(key))
    console.print(table)
    return 0


def cmd_secret_delete(args) -> int:
    with _client(args) as api:
        api.delete(f"/api/apps/{path_part(args.app)}/secrets/{path_part(args.key)}")
    info(f"secret {args.key} deleted from {args.app}.")
    return 0


def cmd_secret_rotate(args) -> int:
    from digitorn_site.cli.config import django_setup

    django_setup()
    from django.core.management import CommandError, call_command

    try:
        call_command("rotate_secrets")
    except CommandError as exc:
        raise CliError(str(exc))
    return 0


def cmd_secret_genkey(args) -> int:
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode())
    print("Put it first in DIGITORN_ENCRYPTION_KEYS (comma-separated, newest first), restart the daemon, "
          "then run `digitorn secret rotate`.", file=sys.stderr)
    return 0


# --- runtime ----------------------------------------------------------------------------------
def cmd_tasks(args) -> int:
    params = {"status": args.status} if args.status else None
    with _client(args) as api:
        data = api.get(f"/api/apps/{path_part(args.app)}/background-tasks", params=params)
    tasks = (data or {}).get("tasks", []) if isinstance(data, dict) else list(data or [])
    if not tasks:
        info(f"{args.app} has no background tasks{f' with status {args.status}' if args.status else ''}.")
        return 0
    table = Table("task_id", "tool", "status", "created", "elapsed", "error")
    for task in tasks:
        elapsed = task.get("elapsed_seconds")
        table.add_row(str(task.get("task_id")), str(task.get("tool_name") or task.get("tool")), str(task.get("status")),
                      _when(task.get("created_at")), "-" if elapsed is None else f"{float(elapsed):.1f}s",
                      str(task.get("error") or "")[:80])
    console.print(table)
    return 0


def cmd_approvals(args) -> int:
    with _client(args) as api:
        data = api.get(f"/api/apps/{path_part(args.app)}/approvals")
    pending = (data or {}).get("pending", []) if isinstance(data, dict) else list(data or [])
    if not pending:
        info(f"{args.app} has no pending approval requests.")
        return 0
    table = Table("request_id", "tool", "risk", "session", "description", "params", "expires")
    for item in pending:
        table.add_row(str(item.get("request_id")), str(item.get("tool_name")), str(item.get("risk_level", "")),
                      str(item.get("session_id") or "-"), str(item.get("description") or ""),
                      json.dumps(item.get("tool_params"), ensure_ascii=False)[:80], _when(item.get("expires_at")))
    console.print(table)
    info(f"decide with the API (POST /api/apps/{args.app}/approve) or in `digitorn chat {args.app}`.")
    return 0


# --- admin ------------------------------------------------------------------------------------
def cmd_apikey(args) -> int:
    """Exactly `manage.py apikey ...` (same parser, help and errors), against the local database."""
    from digitorn_site.cli.config import django_setup

    django_setup()
    from django.core.management import ManagementUtility

    argv = list(args.apikey_args) or ["--help"]
    try:
        ManagementUtility(["digitorn", "apikey", *argv]).execute()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
