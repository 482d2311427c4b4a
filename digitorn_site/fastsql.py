"""Hot-path SQL without the ORM's statement compiler: single-row INSERT/UPDATE and plain SELECTs.

On the 2-core bench machine the ORM spends ~0.6 ms compiling a statement that SQLite runs in
~0.05 ms, and a turn makes dozens, many inside write transactions (on SQLite, under the database's
one write lock, so that time serialises every worker). Values still go through each field's
``pre_save`` and ``get_db_prep_save`` on the way in, and through the backend's and the field's
converters on the way out, exactly as the ORM does, so rows and instances are the ones the ORM
would write and return on SQLite and PostgreSQL alike. No signals are sent: use it only for models
nothing listens to. WHERE clauses are raw SQL with %s placeholders: callers pass values as params,
never in the string.
"""

from __future__ import annotations

from functools import cache

from django.db import connection, models


@cache
def _statement(model: type[models.Model], vendor: str) -> tuple[str, tuple[models.Field, ...]]:
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    quote = connection.ops.quote_name
    pk = model._meta.pk.column
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(pk)}"
    )
    return sql, fields


def insert(obj: models.Model) -> models.Model:
    """INSERT ``obj`` (a new, unsaved instance) and set its primary key; returns it."""
    sql, fields = _statement(type(obj), connection.vendor)
    values = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        obj.pk = cursor.fetchone()[0]
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


@cache
def _select_parts(
    model: type[models.Model], names: tuple[str, ...] | None, vendor: str
) -> tuple[str, tuple[str, ...], tuple[tuple, ...]]:
    fields = tuple(model._meta.concrete_fields) if names is None else tuple(model._meta.get_field(n) for n in names)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    converters = []
    for f in fields:
        col = f.get_col(model._meta.db_table)
        converters.append((col, connection.ops.get_db_converters(col) + f.get_db_converters(connection)))
    return f"SELECT {columns} FROM {quote(model._meta.db_table)}", tuple(f.attname for f in fields), tuple(converters)


def values(
    model: type[models.Model], names: tuple[str, ...], where: str, params: list, *, order_by: str = "",
    limit: int | None = None, lock: bool = False,
) -> list[list]:
    """Rows of the named fields, converted as ``values_list`` converts them."""
    head, _, converters = _select_parts(model, names, connection.vendor)
    return _fetch(head, converters, where, params, order_by, limit, lock)


def _fetch(head: str, converters: tuple, where: str, params: list, order_by: str, limit: int | None,
           lock: bool) -> list[list]:
    sql = f"{head} WHERE {where}"
    if order_by:
        sql += f" ORDER BY {order_by}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    if lock and connection.features.has_select_for_update:
        sql += " FOR NO KEY UPDATE" if connection.features.has_select_for_no_key_update else " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    out = []
    for row in rows:
        converted = list(row)
        for index, (col, chain) in enumerate(converters):
            for converter in chain:
                converted[index] = converter(converted[index], col, connection)
        out.append(converted)
    return out


def select(
    model: type[models.Model], where: str, params: list, *, order_by: str = "", limit: int | None = None,
    lock: bool = False,
) -> list:
    """Instances of ``model`` for a raw WHERE clause (column names, %s placeholders).

    Values go through the backend's and the fields' converters, so the instances equal what a
    queryset returns. ``lock``: FOR NO KEY UPDATE where the database has row locks (PostgreSQL);
    SQLite's IMMEDIATE transactions hold the database's write lock already.
    """
    head, attnames, converters = _select_parts(model, None, connection.vendor)
    rows = _fetch(head, converters, where, params, order_by, limit, lock)
    return [model.from_db(connection.alias, attnames, row) for row in rows]


def first(model: type[models.Model], where: str, params: list, **kwargs) -> models.Model | None:
    found = select(model, where, params, limit=1, **kwargs)
    return found[0] if found else None


def table(model: type[models.Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def fetchone(sql: str, params: list) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def execute(sql: str, params: list) -> int:
    """Run a write statement; returns the number of rows it touched."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def update(obj: models.Model, fields: list[str]) -> None:
    """``obj.save(update_fields=fields)`` for an existing row, without the statement compiler."""
    meta = obj._meta
    chosen = [meta.get_field(name) for name in fields]
    quote = connection.ops.quote_name
    values = [f.get_db_prep_save(f.pre_save(obj, add=False), connection) for f in chosen]
    execute(
        f"UPDATE {quote(meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f in chosen)} "
        f"WHERE {quote(meta.pk.column)} = %s",
        [*values, obj.pk],
    )
