"""Every SQL statement the project writes by hand, as named functions: the one module that opens a
cursor (besides the SQLite backend, migrations and bench/).

Why hand-written at all: on the 2-core bench machine the ORM spends ~0.6 ms compiling a statement
that SQLite runs in ~0.05 ms, and a turn makes dozens, many inside write transactions (on SQLite,
under the database's one write lock, so that time serialises every worker). Each statement here is
built once per database vendor (and per shape, e.g. the length of an IN list) from the models'
metadata and cached, so a call costs the cursor round trip and the value conversions, nothing more.

What cannot go wrong by construction:

- values in: each placeholder is declared with the model field it stands for, and the value goes
  through that field's ``get_db_prep_value`` (``get_db_prep_save`` for ``insert``/``update``), so
  a datetime is adapted, a JSON value dumped, exactly as the ORM would do it;
- values out: each result column is declared with its field, and goes through the backend's and
  the field's converters (aware datetimes on SQLite, parsed JSON, bools), so what comes back is
  what a queryset would return: ``tests/test_sql_parity.py`` checks each function against the ORM
  on SQLite and PostgreSQL.

No signals are sent: use it only for models nothing listens to. Models are looked up by label in
the app registry (this module is plumbing: it imports no app).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connection, connections, models

# The IN lists of the stream poller are cut in chunks of this many values (SQLite's default
# variable limit is far higher; one statement shape per chunk length stays cached).
IN_CHUNK = 500


# --- the statement machinery ---------------------------------------------------------------------


@cache
def _model(label: str) -> type[models.Model]:
    return apps.get_model(label)


def _field(label: str, name: str) -> models.Field:
    return _model(label)._meta.get_field(name)


def _table(label: str) -> str:
    return connection.ops.quote_name(_model(label)._meta.db_table)


def _col(label: str, name: str) -> str:
    return connection.ops.quote_name(_field(label, name).column)


def _lock_clause() -> str:
    """FOR NO KEY UPDATE where the database has row locks (PostgreSQL); SQLite's IMMEDIATE
    transactions hold the database's write lock already."""
    if not connection.features.has_select_for_update:
        return ""
    return " FOR NO KEY UPDATE" if connection.features.has_select_for_no_key_update else " FOR UPDATE"


class _Stmt:
    """One statement: its SQL, the field of each placeholder and the converters of each column."""

    __slots__ = ("sql", "params", "converters", "model", "attnames")

    def __init__(
        self,
        sql: str,
        params: Sequence[models.Field | None] = (),
        out: Sequence[tuple[str, str] | None] = (),
        model: str | None = None,
    ):
        self.sql = sql
        # None: a value with no field (a count, a limit), passed as is.
        self.params = tuple(params)
        converters = []
        for index, spec in enumerate(out):
            if spec is None:  # a value with no field (COUNT, SELECT 1): no converter
                continue
            field = _field(*spec)
            col = field.get_col(_model(spec[0])._meta.db_table)
            # The compiler's chain: backend converters first, then the expression's (from_db_value).
            chain = tuple(connection.ops.get_db_converters(col) + col.get_db_converters(connection))
            if chain:
                converters.append((index, col, chain))
        self.converters = tuple(converters)
        self.model = _model(model) if model else None
        self.attnames = tuple(f.attname for f in self.model._meta.concrete_fields) if model else ()

    # The connection is resolved once per call (the ``connection`` proxy looks it up on every
    # attribute access) and handed to every conversion.

    def _prep(self, values: Sequence[Any], conn) -> list:
        return [
            value if field is None else field.get_db_prep_value(value, conn)
            for field, value in zip(self.params, values, strict=True)
        ]

    def rows(self, *values: Any) -> list[list]:
        conn = connections[DEFAULT_DB_ALIAS]
        with conn.cursor() as cursor:
            cursor.execute(self.sql, self._prep(values, conn))
            rows = cursor.fetchall()
        return [self._convert(row, conn) for row in rows]

    def one(self, *values: Any) -> list | None:
        """The first row (RETURNING one, or a single-row SELECT), converted; None without one."""
        conn = connections[DEFAULT_DB_ALIAS]
        with conn.cursor() as cursor:
            cursor.execute(self.sql, self._prep(values, conn))
            row = cursor.fetchone()
        return None if row is None else self._convert(row, conn)

    def write(self, *values: Any) -> int:
        """Run a write without RETURNING; the number of rows it touched."""
        conn = connections[DEFAULT_DB_ALIAS]
        with conn.cursor() as cursor:
            cursor.execute(self.sql, self._prep(values, conn))
            return cursor.rowcount

    def instances(self, *values: Any) -> list:
        model, attnames = self.model, self.attnames
        return [model.from_db(DEFAULT_DB_ALIAS, attnames, row) for row in self.rows(*values)]

    def _convert(self, row: Sequence[Any], conn) -> list:
        out = list(row)
        for index, col, chain in self.converters:
            for converter in chain:
                out[index] = converter(out[index], col, conn)
        return out


def _statement(build: Callable[..., _Stmt]) -> Callable[..., _Stmt]:
    """Build once per (vendor, shape): ``build(*shape)`` runs on the first call only."""
    cached = cache(lambda vendor, *shape: build(*shape))

    def get(*shape: Any) -> _Stmt:
        return cached(connection.vendor, *shape)

    return get


def _select_model(
    label: str, where: str, where_fields: Sequence[tuple[str, str] | None], tail: str = ""
) -> _Stmt:
    """SELECT every concrete column of ``label`` (for model instances); a None in ``where_fields``
    is a placeholder with no field (a LIMIT)."""
    fields = _model(label)._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    return _Stmt(
        f"SELECT {columns} FROM {_table(label)} WHERE {where}{tail}",
        [None if spec is None else _field(*spec) for spec in where_fields],
        [(label, f.name) for f in fields],
        model=label,
    )


# --- generic single-row writes (statements built from the model's fields) -----------------------


@cache
def _insert_statement(model: type[models.Model], vendor: str) -> tuple[str, tuple[models.Field, ...]]:
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(model._meta.pk.column)}"
    )
    return sql, fields


def insert(obj: models.Model) -> models.Model:
    """INSERT ``obj`` (a new, unsaved instance) and set its primary key; returns it.

    Values go through each field's ``pre_save`` and ``get_db_prep_save`` as ``obj.save()`` would.
    """
    sql, fields = _insert_statement(type(obj), connection.vendor)
    values = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        obj.pk = cursor.fetchone()[0]
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


@cache
def _insert_many_statement(model: type[models.Model], rows: int, vendor: str) -> tuple[str, tuple[models.Field, ...]]:
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    quote = connection.ops.quote_name
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES {', '.join([one] * rows)}"
    )
    return sql, fields


def insert_many(objs: Sequence[models.Model]) -> None:
    """INSERT new instances of one model in one statement (primary keys are not read back).

    Values go through each field's ``pre_save`` and ``get_db_prep_save`` as ``save()`` would.
    """
    if not objs:
        return
    sql, fields = _insert_many_statement(type(objs[0]), len(objs), connection.vendor)
    values = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for obj in objs for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)


@cache
def _update_statement(
    model: type[models.Model], names: tuple[str, ...], vendor: str
) -> tuple[str, tuple[models.Field, ...]]:
    meta = model._meta
    chosen = tuple(meta.get_field(name) for name in names)
    quote = connection.ops.quote_name
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f in chosen)} "
        f"WHERE {quote(meta.pk.column)} = %s"
    )
    return sql, chosen


def update(obj: models.Model, fields: Sequence[str]) -> None:
    """``obj.save(update_fields=fields)`` for an existing row, without the statement compiler."""
    sql, chosen = _update_statement(type(obj), tuple(fields), connection.vendor)
    values = [f.get_db_prep_save(f.pre_save(obj, add=False), connection) for f in chosen]
    pk = obj._meta.pk.get_db_prep_value(obj.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, pk])


# --- health ---------------------------------------------------------------------------------------


def ping() -> None:
    """``SELECT 1``: raises when the database does not answer (health and readiness probes)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


# --- apps -----------------------------------------------------------------------------------------

_APP = "apps_registry.App"


@_statement
def _app_head() -> _Stmt:
    return _Stmt(
        f"SELECT {_col(_APP, 'updated_at')}, {_col(_APP, 'rate_limit_rpm')} FROM {_table(_APP)} "
        f"WHERE {_col(_APP, 'app_id')} = %s",
        [_field(_APP, "app_id")],
        [(_APP, "updated_at"), (_APP, "rate_limit_rpm")],
    )


def app_head(app_id: str) -> tuple[Any, int | None] | None:
    """(updated_at, rate_limit_rpm) of a deployed app, None when it is not deployed."""
    row = _app_head().one(app_id)
    return None if row is None else (row[0], row[1])


# --- rate limit -----------------------------------------------------------------------------------

_HIT = "conversations.RateLimitHit"


def ratelimit_lock(app_id: str) -> None:
    """Serialise the app's check-and-record for the rest of the transaction: an advisory
    transaction lock on PostgreSQL; nothing on SQLite, whose IMMEDIATE transactions hold the
    database's write lock from BEGIN."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(app_id.encode()) & 0x7FFFFFFF])


@_statement
def _ratelimit_window() -> _Stmt:
    return _Stmt(
        f"SELECT COUNT(*), MIN({_col(_HIT, 'at')}) FROM {_table(_HIT)} "
        f"WHERE {_col(_HIT, 'app_id')} = %s AND {_col(_HIT, 'at')} > %s",
        [_field(_HIT, "app_id"), _field(_HIT, "at")],
        [None, (_HIT, "at")],
    )


def ratelimit_window(app_id: str, since: float) -> tuple[int, float | None]:
    """(hits after ``since``, the oldest one's time or None)."""
    count, oldest = _ratelimit_window().one(app_id, since)
    return int(count), oldest


@_statement
def _ratelimit_insert() -> _Stmt:
    return _Stmt(
        f"INSERT INTO {_table(_HIT)} ({_col(_HIT, 'app_id')}, {_col(_HIT, 'at')}) VALUES (%s, %s)",
        [_field(_HIT, "app_id"), _field(_HIT, "at")],
    )


def ratelimit_insert(app_id: str, at: float) -> None:
    _ratelimit_insert().write(app_id, at)


# --- sessions -------------------------------------------------------------------------------------

_SESSION = "conversations.Session"


@_statement
def _session_get(lock: bool) -> _Stmt:
    return _select_model(
        _SESSION, f"{_col(_SESSION, 'id')} = %s", [(_SESSION, "id")], " LIMIT 1" + (_lock_clause() if lock else "")
    )


def session_get(session_pk: int, *, lock: bool = False):
    """The Session of that pk or None; ``lock``: its row locked for the transaction (see _lock_clause)."""
    found = _session_get(lock).instances(session_pk)
    return found[0] if found else None


@_statement
def _session_find() -> _Stmt:
    return _select_model(
        _SESSION,
        f"{_col(_SESSION, 'app_id')} = %s AND {_col(_SESSION, 'principal')} = %s "
        f"AND {_col(_SESSION, 'session_id')} = %s",
        [(_SESSION, "app_id"), (_SESSION, "principal"), (_SESSION, "session_id")],
        " LIMIT 1",
    )


def session_find(app_id: str, principal: str, session_id: str):
    """The principal's session of that id, or None."""
    found = _session_find().instances(app_id, principal, session_id)
    return found[0] if found else None


@_statement
def _session_find_latest() -> _Stmt:
    return _select_model(
        _SESSION,
        f"{_col(_SESSION, 'app_id')} = %s AND {_col(_SESSION, 'session_id')} = %s",
        [(_SESSION, "app_id"), (_SESSION, "session_id")],
        f" ORDER BY {_col(_SESSION, 'last_active')} DESC LIMIT 1",
    )


def session_find_latest(app_id: str, session_id: str):
    """The most recently active session of that id, whoever owns it, or None."""
    found = _session_find_latest().instances(app_id, session_id)
    return found[0] if found else None


@_statement
def _session_exists() -> _Stmt:
    return _Stmt(f"SELECT 1 FROM {_table(_SESSION)} WHERE {_col(_SESSION, 'id')} = %s", [_field(_SESSION, "id")])


def session_exists(session_pk: int) -> bool:
    return _session_exists().one(session_pk) is not None


@_statement
def _session_touch() -> _Stmt:
    return _Stmt(
        f"UPDATE {_table(_SESSION)} SET {_col(_SESSION, 'last_active')} = %s WHERE {_col(_SESSION, 'id')} = %s "
        f"RETURNING {_col(_SESSION, 'last_seq')}",
        [_field(_SESSION, "last_active"), _field(_SESSION, "id")],
        [(_SESSION, "last_seq")],
    )


def session_touch(session_pk: int, now) -> int | None:
    """Mark the session active at ``now`` and read its last_seq (one statement, which also locks the
    row on PostgreSQL); None when it is gone."""
    row = _session_touch().one(now, session_pk)
    return None if row is None else int(row[0])


@_statement
def _session_mark() -> _Stmt:
    return _Stmt(
        f"UPDATE {_table(_SESSION)} SET {_col(_SESSION, 'status')} = %s, {_col(_SESSION, 'last_active')} = %s "
        f"WHERE {_col(_SESSION, 'id')} = %s",
        [_field(_SESSION, "status"), _field(_SESSION, "last_active"), _field(_SESSION, "id")],
    )


def session_mark(session_pk: int, *, status: str, last_active) -> int:
    """Set the session's status and last_active; the number of rows touched (0: gone)."""
    return _session_mark().write(status, last_active, session_pk)


_TURN = "conversations.Turn"


@_statement
def _session_settle(n_active: int) -> _Stmt:
    return _Stmt(
        f"UPDATE {_table(_SESSION)} SET {_col(_SESSION, 'last_active')} = %s, {_col(_SESSION, 'status')} = "
        f"CASE WHEN EXISTS (SELECT 1 FROM {_table(_TURN)} WHERE {_col(_TURN, 'session')} = %s "
        f"AND {_col(_TURN, 'id')} <> %s AND {_col(_TURN, 'status')} IN ({', '.join(['%s'] * n_active)})) "
        f"THEN %s ELSE %s END WHERE {_col(_SESSION, 'id')} = %s RETURNING {_col(_SESSION, 'status')}",
        [
            _field(_SESSION, "last_active"), _field(_TURN, "session"), _field(_TURN, "id"),
            *[_field(_TURN, "status")] * n_active, _field(_SESSION, "status"), _field(_SESSION, "status"),
            _field(_SESSION, "id"),
        ],
        [(_SESSION, "status")],
    )


def session_settle(
    session_pk: int, *, turn_pk: int, now, active: Sequence[str], busy: str, idle: str
) -> str | None:
    """After a turn ends: last_active = now and status = ``busy`` when another turn of the session
    is in an ``active`` status, ``idle`` otherwise (one statement); the new status, None when gone."""
    row = _session_settle(len(active)).one(now, session_pk, turn_pk, *active, busy, idle, session_pk)
    return None if row is None else row[0]


@_statement
def _session_next_seq() -> _Stmt:
    seq = _col(_SESSION, "last_seq")
    return _Stmt(
        f"UPDATE {_table(_SESSION)} SET {seq} = {seq} + 1 WHERE {_col(_SESSION, 'id')} = %s RETURNING {seq}",
        [_field(_SESSION, "id")],
        [(_SESSION, "last_seq")],
    )


def session_next_seq(session_pk: int) -> int | None:
    """Allocate the session's next event seq (atomic increment); None when it is gone."""
    row = _session_next_seq().one(session_pk)
    return None if row is None else int(row[0])


@_statement
def _stream_next_seq() -> _Stmt:
    table, pk, seq = _table(_SESSION), _col(_SESSION, "id"), _col(_SESSION, "last_seq")
    return _Stmt(
        f"UPDATE {table} SET {seq} = {seq} + 1 WHERE {pk} = "
        f"COALESCE((SELECT {_col(_SESSION, 'parent')} FROM {table} WHERE {pk} = %s), %s) RETURNING {pk}, {seq}",
        [_field(_SESSION, "id"), _field(_SESSION, "id")],
        [(_SESSION, "id"), (_SESSION, "last_seq")],
    )


def stream_next_seq(session_pk: int) -> tuple[int, int] | None:
    """The next seq of the stream the session's events go to: its own, or its parent's for the
    session of a delegated run (one statement); (stream session pk, seq), None when gone."""
    row = _stream_next_seq().one(session_pk, session_pk)
    return None if row is None else (int(row[0]), int(row[1]))


@_statement
def _stream_reserve_seqs() -> _Stmt:
    table, pk, seq = _table(_SESSION), _col(_SESSION, "id"), _col(_SESSION, "last_seq")
    return _Stmt(
        f"UPDATE {table} SET {seq} = {seq} + %s WHERE {pk} = "
        f"COALESCE((SELECT {_col(_SESSION, 'parent')} FROM {table} WHERE {pk} = %s), %s) RETURNING {pk}, {seq}",
        [None, _field(_SESSION, "id"), _field(_SESSION, "id")],
        [(_SESSION, "id"), (_SESSION, "last_seq")],
    )


def stream_reserve_seqs(session_pk: int, count: int) -> tuple[int, int] | None:
    """Reserve ``count`` consecutive seqs of the session's stream (its own, or its parent's for a
    delegated run) in one statement: (stream session pk, last reserved seq), None when gone."""
    row = _stream_reserve_seqs().one(int(count), session_pk, session_pk)
    return None if row is None else (int(row[0]), int(row[1]))


@_statement
def _session_delegation() -> _Stmt:
    return _Stmt(
        f"SELECT {_col(_SESSION, 'delegation')} FROM {_table(_SESSION)} WHERE {_col(_SESSION, 'id')} = %s",
        [_field(_SESSION, "id")],
        [(_SESSION, "delegation")],
    )


def session_delegation(session_pk: int) -> dict | None:
    """The session's ``delegation`` tags (parsed JSON), None when unset or gone."""
    row = _session_delegation().one(session_pk)
    return None if row is None else row[0]


@_statement
def _sessions_max_pk() -> _Stmt:
    return _Stmt(f"SELECT MAX({_col(_SESSION, 'id')}) FROM {_table(_SESSION)}", [], [(_SESSION, "id")])


def sessions_max_pk() -> int | None:
    return _sessions_max_pk().one()[0]


@_statement
def _sessions_named(n: int) -> _Stmt:
    return _Stmt(
        f"SELECT {_col(_SESSION, 'id')}, {_col(_SESSION, 'session_id')} FROM {_table(_SESSION)} "
        f"WHERE {_col(_SESSION, 'app_id')} = %s AND {_col(_SESSION, 'principal')} = %s "
        f"AND {_col(_SESSION, 'session_id')} IN ({', '.join(['%s'] * n)})",
        [_field(_SESSION, "app_id"), _field(_SESSION, "principal"), *[_field(_SESSION, "session_id")] * n],
        [(_SESSION, "id"), (_SESSION, "session_id")],
    )


def sessions_named(app_id: str, principal: str, session_ids: Sequence[str]) -> list[tuple[int, str]]:
    """(pk, session_id) of the principal's sessions among ``session_ids`` (any order)."""
    out: list[tuple[int, str]] = []
    for start in range(0, len(session_ids), IN_CHUNK):
        chunk = session_ids[start : start + IN_CHUNK]
        out.extend((pk, sid) for pk, sid in _sessions_named(len(chunk)).rows(app_id, principal, *chunk))
    return out


@_statement
def _sessions_last_seq(n: int) -> _Stmt:
    return _Stmt(
        f"SELECT {_col(_SESSION, 'id')}, {_col(_SESSION, 'last_seq')} FROM {_table(_SESSION)} "
        f"WHERE {_col(_SESSION, 'id')} IN ({', '.join(['%s'] * n)})",
        [_field(_SESSION, "id")] * n,
        [(_SESSION, "id"), (_SESSION, "last_seq")],
    )


def sessions_last_seq(session_pks: Sequence[int]) -> list[tuple[int, int]]:
    """(pk, last_seq) of those sessions that still exist (any order)."""
    out: list[tuple[int, int]] = []
    for start in range(0, len(session_pks), IN_CHUNK):
        chunk = session_pks[start : start + IN_CHUNK]
        out.extend((pk, seq) for pk, seq in _sessions_last_seq(len(chunk)).rows(*chunk))
    return out


# --- turns ----------------------------------------------------------------------------------------


@_statement
def _turn_get(lock: bool) -> _Stmt:
    return _select_model(_TURN, f"{_col(_TURN, 'id')} = %s", [(_TURN, "id")], " LIMIT 1" + (_lock_clause() if lock else ""))


def turn_get(turn_pk: int, *, lock: bool = False):
    """The Turn of that pk or None; ``lock``: its row locked for the transaction."""
    found = _turn_get(lock).instances(turn_pk)
    return found[0] if found else None


@_statement
def _turn_head(n_statuses: int, lock: bool) -> _Stmt:
    return _select_model(
        _TURN,
        f"{_col(_TURN, 'session')} = %s AND {_col(_TURN, 'status')} IN ({', '.join(['%s'] * n_statuses)})",
        [(_TURN, "session"), *[(_TURN, "status")] * n_statuses],
        f" ORDER BY {_col(_TURN, 'id')} LIMIT 1" + (_lock_clause() if lock else ""),
    )


def turn_head(session_pk: int, statuses: Sequence[str], *, lock: bool = False):
    """The oldest turn of the session in one of ``statuses`` (the head of its queue), or None."""
    found = _turn_head(len(statuses), lock).instances(session_pk, *statuses)
    return found[0] if found else None


@_statement
def _turn_queue_counts(n_active: int) -> _Stmt:
    status = _col(_TURN, "status")
    return _Stmt(
        f"SELECT COUNT(CASE WHEN {status} = %s THEN 1 END), "
        f"COUNT(CASE WHEN {status} IN ({', '.join(['%s'] * n_active)}) THEN 1 END) "
        f"FROM {_table(_TURN)} WHERE {_col(_TURN, 'session')} = %s",
        [*[_field(_TURN, "status")] * (1 + n_active), _field(_TURN, "session")],
        [None, None],
    )


def turn_queue_counts(session_pk: int, *, queued: str, active: Sequence[str]) -> tuple[int, int]:
    """(turns of the session in status ``queued``, turns in one of ``active``) in one statement."""
    waiting, ahead = _turn_queue_counts(len(active)).one(queued, *active, session_pk)
    return int(waiting), int(ahead)


@_statement
def _turn_rank() -> _Stmt:
    pk = _col(_TURN, "id")
    return _Stmt(
        f"SELECT COUNT(*) FROM {_table(_TURN)} WHERE {_col(_TURN, 'session')} = %s AND {pk} <= %s",
        [_field(_TURN, "session"), _field(_TURN, "id")],
        [None],
    )


def turn_rank(session_pk: int, turn_pk: int) -> int:
    """The turn's rank in its session (1 = the first)."""
    row = _turn_rank().one(session_pk, turn_pk)
    return int(row[0]) if row else 1


@_statement
def _turn_session_pk() -> _Stmt:
    return _Stmt(
        f"SELECT {_col(_TURN, 'session')} FROM {_table(_TURN)} WHERE {_col(_TURN, 'id')} = %s",
        [_field(_TURN, "id")],
        [(_TURN, "session")],
    )


def turn_session_pk(turn_pk: int) -> int | None:
    row = _turn_session_pk().one(turn_pk)
    return None if row is None else row[0]


@_statement
def _turn_link() -> _Stmt:
    return _Stmt(
        f"SELECT {_col(_TURN, 'correlation_id')}, {_col(_TURN, 'session')} FROM {_table(_TURN)} "
        f"WHERE {_col(_TURN, 'id')} = %s",
        [_field(_TURN, "id")],
        [(_TURN, "correlation_id"), (_TURN, "session")],
    )


def turn_link(turn_pk: int) -> tuple[str, int] | None:
    """(correlation_id, session pk) of the turn, None when it is gone."""
    row = _turn_link().one(turn_pk)
    return None if row is None else (row[0], row[1])


@_statement
def _turn_lease() -> _Stmt:
    return _Stmt(
        f"SELECT {_col(_TURN, 'status')}, {_col(_TURN, 'lease_owner')}, {_col(_TURN, 'cancel_requested')} "
        f"FROM {_table(_TURN)} WHERE {_col(_TURN, 'id')} = %s",
        [_field(_TURN, "id")],
        [(_TURN, "status"), (_TURN, "lease_owner"), (_TURN, "cancel_requested")],
    )


def turn_lease(turn_pk: int) -> tuple[str, str, bool] | None:
    """(status, lease_owner, cancel_requested) of the turn, None when it is gone."""
    row = _turn_lease().one(turn_pk)
    return None if row is None else (row[0], row[1], row[2])


@_statement
def _turn_lease_renew() -> _Stmt:
    return _Stmt(
        f"UPDATE {_table(_TURN)} SET {_col(_TURN, 'lease_expires_at')} = %s WHERE {_col(_TURN, 'id')} = %s",
        [_field(_TURN, "lease_expires_at"), _field(_TURN, "id")],
    )


def turn_lease_renew(turn_pk: int, until) -> int:
    """Move the turn's lease expiry to ``until``; the number of rows touched."""
    return _turn_lease_renew().write(until, turn_pk)


@_statement
def _turn_count_reply() -> _Stmt:
    used, calls = _col(_TURN, "turns_used"), _col(_TURN, "tool_calls_count")
    return _Stmt(
        f"UPDATE {_table(_TURN)} SET {used} = {used} + 1, {calls} = {calls} + %s, "
        f"{_col(_TURN, 'lease_expires_at')} = %s WHERE {_col(_TURN, 'id')} = %s "
        f"RETURNING {_col(_TURN, 'correlation_id')}, {_col(_TURN, 'session')}",
        [_field(_TURN, "tool_calls_count"), _field(_TURN, "lease_expires_at"), _field(_TURN, "id")],
        [(_TURN, "correlation_id"), (_TURN, "session")],
    )


def turn_count_reply(turn_pk: int, *, tool_calls: int, lease_until) -> tuple[str, int] | None:
    """Count one model call and ``tool_calls`` tool calls, renew the lease, lock the row and read
    (correlation_id, session pk), in one statement; None when the turn is gone."""
    row = _turn_count_reply().one(tool_calls, lease_until, turn_pk)
    return None if row is None else (row[0], row[1])


# --- notifications, messages, events --------------------------------------------------------------

_NOTIFICATION = "conversations.Notification"
_MESSAGE = "conversations.Message"
_EVENT = "conversations.Event"


@_statement
def _notifications_undelivered() -> _Stmt:
    return _select_model(
        _NOTIFICATION,
        f"{_col(_NOTIFICATION, 'session')} = %s AND {_col(_NOTIFICATION, 'delivered_at')} IS NULL",
        [(_NOTIFICATION, "session")],
        f" ORDER BY {_col(_NOTIFICATION, 'id')}",
    )


def notifications_undelivered(session_pk: int) -> list:
    """The session's notifications not yet handed to its agent, oldest first."""
    return _notifications_undelivered().instances(session_pk)


@_statement
def _messages_tail(names: tuple[str, ...]) -> _Stmt:
    return _Stmt(
        f"SELECT {', '.join(_col(_MESSAGE, n) for n in names)} FROM {_table(_MESSAGE)} "
        f"WHERE {_col(_MESSAGE, 'session')} = %s ORDER BY {_col(_MESSAGE, 'id')} DESC LIMIT %s",
        [_field(_MESSAGE, "session"), None],
        [(_MESSAGE, n) for n in names],
    )


def messages_tail(session_pk: int, names: tuple[str, ...], limit: int) -> list[list]:
    """The named fields of the session's latest ``limit`` messages, newest first."""
    return _messages_tail(tuple(names)).rows(session_pk, int(limit))


@_statement
def _events_after() -> _Stmt:
    return _select_model(
        _EVENT,
        f"{_col(_EVENT, 'session')} = %s AND {_col(_EVENT, 'seq')} > %s",
        [(_EVENT, "session"), (_EVENT, "seq"), None],
        f" ORDER BY {_col(_EVENT, 'seq')} LIMIT %s",
    )


def events_after(session_pk: int, after: int, limit: int) -> list:
    """The session's events with seq > ``after``, oldest first, at most ``limit``."""
    return _events_after().instances(session_pk, after, int(limit))


@_statement
def _events_min_seq() -> _Stmt:
    return _Stmt(
        f"SELECT MIN({_col(_EVENT, 'seq')}) FROM {_table(_EVENT)} WHERE {_col(_EVENT, 'session')} = %s",
        [_field(_EVENT, "session")],
        [(_EVENT, "seq")],
    )


def events_min_seq(session_pk: int) -> int | None:
    """The lowest seq still stored for the session, None when it has none."""
    value = _events_min_seq().one(session_pk)[0]
    return None if value is None else int(value)


# --- message accept (one statement finds and touches a session) ---------------------------------


@_statement
def _session_touch_named() -> _Stmt:
    return _Stmt(
        f"UPDATE {_table(_SESSION)} SET {_col(_SESSION, 'last_active')} = %s "
        f"WHERE {_col(_SESSION, 'app_id')} = %s AND {_col(_SESSION, 'principal')} = %s "
        f"AND {_col(_SESSION, 'session_id')} = %s AND {_col(_SESSION, 'last_active')} >= %s "
        f"RETURNING {_col(_SESSION, 'id')}, {_col(_SESSION, 'last_seq')}",
        [
            _field(_SESSION, "last_active"), _field(_SESSION, "app_id"), _field(_SESSION, "principal"),
            _field(_SESSION, "session_id"), _field(_SESSION, "last_active"),
        ],
        [(_SESSION, "id"), (_SESSION, "last_seq")],
    )


def session_touch_named(app_id: str, principal: str, session_id: str, now, active_since) -> tuple[int, int] | None:
    """session_touch for the principal's own session of that id, found by its key, when it was
    active at or after ``active_since`` (not idle-expired): (pk, last_seq), or None when there is
    no such session (missing, idle too long, or the admin reaching another's: the caller resolves)."""
    row = _session_touch_named().one(now, app_id, principal, session_id, active_since)
    return None if row is None else (int(row[0]), int(row[1]))
