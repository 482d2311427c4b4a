"""database: SQL over an SQLite database, read-only unless the app lets ``execute`` run.

Config: ``url`` (``sqlite:///relative/to/workspace.db`` or ``sqlite:////absolute/path.db``; default
an SQLite file ``database.sqlite3`` in the workspace), ``workspace`` (default: the filesystem
module's), ``max_rows`` (row limit of a query, default 1000), ``timeout`` (seconds to wait for a
lock, default 10).

``query`` opens the file read-only (``mode=ro`` plus ``PRAGMA query_only``), so no statement it runs
can write. Both actions refuse ``ATTACH`` through an SQLite authorizer: a query may not reach files
other than the configured database (the daemon's own database least of all).
"""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings

from tooling.modules._workspace import resolve_in, workspace_root
from tooling.modules.base import Module, ToolError, action

DEFAULT_MAX_ROWS = 1000
DEFAULT_FILE = "database.sqlite3"
_DENIED_OPS = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}
_SQL_PARAMS = {
    "type": "array",
    "items": {"type": ["string", "number", "integer", "boolean", "null"]},
    "description": "Values bound to ? placeholders.",
    "default": [],
}


def _authorizer(action_code: int, *_: Any) -> int:
    return sqlite3.SQLITE_DENY if action_code in _DENIED_OPS else sqlite3.SQLITE_OK


def _cell(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return value


class DatabaseModule(Module):
    id = "database"
    description = "Query and change the app's SQLite database."
    config_schema = {
        "type": "object",
        "properties": {
            "url": {
                "type": "string",
                "description": "sqlite:///relative.db (workspace) or sqlite:////abs/path.db",
            },
            "workspace": {"type": "string"},
            "max_rows": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_ROWS},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "default": 10},
        },
        "additionalProperties": False,
    }

    def _path(self) -> Path:
        configured = self.config.get("workspace") or self.context.app_modules.get("filesystem", {}).get(
            "workspace"
        )
        root = workspace_root(self.context.app_id, configured)
        url = self.config.get("url") or ""
        if not url:
            return resolve_in(root, DEFAULT_FILE, field="url", source="config")
        if not url.startswith("sqlite:///"):
            raise ToolError(
                f"config.url: '{url.split(':', 1)[0]}:' databases are not supported; use sqlite:///file.db "
                "(relative to the workspace) or sqlite:////absolute/path.db."
            )
        rest = url[len("sqlite:///") :]
        if not rest:
            raise ToolError("config.url: names no database file; use sqlite:///file.db.")
        if rest.startswith("/"):
            path = Path(os.path.realpath(rest))
            data_dir = Path(os.path.realpath(settings.DATA_DIR))
            if path.is_relative_to(data_dir) and not path.is_relative_to(root):
                raise ToolError("config.url: the database file may not live in the daemon's data dir.")
            return path
        return resolve_in(root, rest, field="url", source="config")

    def _connect(self, *, read_only: bool) -> sqlite3.Connection:
        path = self._path()
        timeout = float(self.config.get("timeout") or 10)
        if read_only:
            if not path.exists():
                raise ToolError(
                    f"The database file {path.name} does not exist yet; create tables with database.execute first."
                )
            conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=timeout)
            conn.execute("PRAGMA query_only = ON")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=timeout)
        conn.set_authorizer(_authorizer)
        return conn

    def _run(self, conn: sqlite3.Connection, sql: str, params: list[Any]) -> sqlite3.Cursor:
        try:
            return conn.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            message = str(exc)
            if "not authorized" in message:
                message += " (ATTACH/DETACH are refused: a query may only use the app's database)"
            elif "readonly" in message or "read-only" in message:
                message += " (database.query is read-only; use database.execute to change data)"
            raise ToolError(f"params.sql: {message}.")

    @action(
        description="Run a read-only SQL query (SELECT) and return columns and rows, up to a row limit.",
        parameters={
            "properties": {
                "sql": {"type": "string", "minLength": 1},
                "params": _SQL_PARAMS,
                "limit": {"type": "integer", "minimum": 1},
            },
            "required": ["sql"],
        },
        aliases=("select", "sql", "read_table", "requete", "interroger"),
        tags=("sql", "query", "database", "read"),
    )
    def query(self, sql: str, params: list[Any] | None = None, limit: int | None = None) -> dict[str, Any]:
        max_rows = int(self.config.get("max_rows") or DEFAULT_MAX_ROWS)
        limit = min(limit or max_rows, max_rows)
        conn = self._connect(read_only=True)
        try:
            cursor = self._run(conn, sql, params or [])
            columns = [d[0] for d in cursor.description or ()]
            fetched = cursor.fetchmany(limit + 1) if cursor.description else []
        finally:
            conn.close()
        rows = [[_cell(v) for v in row] for row in fetched[:limit]]
        return {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": len(fetched) > limit}

    @action(
        description="Run a statement that changes the database (INSERT, UPDATE, DELETE, CREATE ...); "
        "script=true runs several statements separated by semicolons (no params).",
        parameters={
            "properties": {
                "sql": {"type": "string", "minLength": 1},
                "params": _SQL_PARAMS,
                "script": {"type": "boolean", "default": False},
            },
            "required": ["sql"],
        },
        risk_level="high",
        side_effects=("database_write",),
        irreversible=True,
        aliases=("insert", "update", "write_sql", "modify_table", "create_table"),
        tags=("sql", "write", "database"),
    )
    def execute(self, sql: str, params: list[Any] | None = None, script: bool = False) -> dict[str, Any]:
        if script and params:
            raise ToolError(
                "params.params: a script takes no bound params; run one statement per call instead."
            )
        conn = self._connect(read_only=False)
        try:
            if script:
                try:
                    conn.executescript(sql)
                except sqlite3.DatabaseError as exc:
                    raise ToolError(f"params.sql: {exc}.")
                conn.commit()
                return {"rows_affected": conn.total_changes, "last_row_id": None}
            cursor = self._run(conn, sql, params or [])
            conn.commit()
            return {"rows_affected": cursor.rowcount, "last_row_id": cursor.lastrowid}
        finally:
            conn.close()

    @action(
        description="List the tables and views of the database.",
        aliases=("tables", "show_tables", "schema"),
        tags=("sql", "schema", "database"),
    )
    def list_tables(self) -> dict[str, Any]:
        conn = self._connect(read_only=True)
        try:
            rows = conn.execute(
                "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
        finally:
            conn.close()
        return {"tables": [{"name": n, "type": t} for n, t in rows], "count": len(rows)}

    @action(
        description="Describe a table: its columns (name, type, nullability, default, primary key) and row count.",
        parameters={"properties": {"table": {"type": "string", "minLength": 1}}, "required": ["table"]},
        aliases=("columns", "table_info", "describe_table", "decrire"),
        tags=("sql", "schema", "database"),
    )
    def describe(self, table: str) -> dict[str, Any]:
        conn = self._connect(read_only=True)
        try:
            names = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")
            ]
            if table not in names:
                raise ToolError(
                    f"params.table: no table '{table}'; tables: {', '.join(sorted(names)) or '(none)'}."
                )
            cols = conn.execute(
                'SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(?)', [table]
            ).fetchall()
            quoted = '"' + table.replace('"', '""') + '"'
            count = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
        finally:
            conn.close()
        return {
            "table": table,
            "columns": [
                {"name": n, "type": t, "nullable": not nn, "default": d, "primary_key": bool(pk)}
                for n, t, nn, d, pk in cols
            ],
            "row_count": count,
        }
