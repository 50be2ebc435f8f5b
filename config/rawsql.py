"""Written-out SQL loaded into model instances the way the ORM would, for the few statements every
review-queue request runs (the session, the user, the project, the reviewer's leases, a submission's
writes), where compiling a queryset costs more CPU than running it.

Column lists are built once per model from its fields (a renamed column cannot drift), values pass
through Django's own converters (JSON, datetimes, booleans on SQLite), and instances come from
``Model.from_db`` as from a queryset. Writes prepare values with the model fields as ``save()`` does.
The statements themselves live with their callers (``annotate/queue_sql.py``); everything else uses
the ORM.
"""

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model


@cache
def _concrete(model: type[Model]) -> tuple:
    fields = tuple(model._meta.concrete_fields)
    return fields, tuple(f.attname for f in fields)


def columns(model: type[Model], alias: str) -> str:
    """The model's columns, qualified by ``alias``, in field order: ``l."id", l."item_id", ...``."""
    return _columns(model, alias, connection.vendor)


@cache
def _columns(model: type[Model], alias: str, vendor: str) -> str:
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in _concrete(model)[0])


def table(model: type[Model]) -> str:
    return _table(model, connection.vendor)


@cache
def _table(model: type[Model], vendor: str) -> str:
    return connection.ops.quote_name(model._meta.db_table)


@cache
def _converters(model: type[Model], vendor: str) -> tuple:
    # By vendor: the converters differ between SQLite and PostgreSQL. Only the columns that have any.
    fields = _concrete(model)[0]
    out = []
    for index, field in enumerate(fields):
        col = field.get_col(model._meta.db_table)
        funcs = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if funcs:
            out.append((index, col, tuple(funcs)))
    return tuple(out)


def load(model: type[Model], row: Sequence, start: int = 0):
    """An instance of ``model`` from ``row[start:]`` (its columns as ``columns()`` lists them)."""
    # The connection itself rather than the proxy, which looks it up again on every attribute read.
    conn = connections[DEFAULT_DB_ALIAS]
    attnames = _concrete(model)[1]
    values = list(row[start : start + len(attnames)])
    for index, col, funcs in _converters(model, conn.vendor):
        value = values[index]
        for func in funcs:
            value = func(value, col, conn)
        values[index] = value
    return model.from_db(DEFAULT_DB_ALIAS, attnames, values)


def width(model: type[Model]) -> int:
    return len(_concrete(model)[1])


def fetch(sql: str, params: Mapping | Iterable) -> list[tuple]:
    """Run a statement with named (a mapping) or positional parameters and return its rows."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params if isinstance(params, Mapping) else list(params))
        return cursor.fetchall()


def lock_clause(alias: str) -> str:
    """``FOR UPDATE OF <alias>`` where the database locks rows (PostgreSQL); SQLite serializes writers instead."""
    return f" FOR UPDATE OF {alias}" if connection.features.has_select_for_update_of else ""


def param(value):
    """A datetime (or other value) adapted for a hand-written query, as the ORM would adapt it."""
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    return value


# --- Writes ------------------------------------------------------------------------------------------
# As the ORM's save() would issue them (auto_now fields set by the fields themselves, values prepared by
# them) without compiling a query each time. Only for models with no save() override and no signal
# receiver (annotate.queue_sql.RAW_WRITTEN_MODELS; tests/test_rawsql.py checks).


def prepared(obj: Model, fields, *, add: bool) -> list:
    """The values of ``fields`` of ``obj`` as ``save()`` sends them (auto_now set; ``add``: an insert)."""
    return [f.get_db_prep_save(f.pre_save(obj, add), connection) for f in fields]


@cache
def _insert_sql(model: type[Model], vendor: str, skip_conflict: bool) -> tuple[str, tuple]:
    fields = tuple(f for f in _concrete(model)[0] if not f.primary_key)
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {table(model)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
        + (" ON CONFLICT DO NOTHING" if skip_conflict else "")
        + f" RETURNING {quote(model._meta.pk.column)}"
    )
    return sql, fields


def insert(obj: Model, *, skip_conflict: bool = False) -> Model | None:
    """INSERT a new instance (its pk is the database's) and set its pk, as ``obj.save()`` would.

    With ``skip_conflict`` a row that would break a unique constraint is not inserted (and no error
    aborts the transaction): None comes back instead of the instance."""
    sql, fields = _insert_sql(type(obj), connection.vendor, skip_conflict)
    rows = fetch(sql, prepared(obj, fields, add=True))
    if not rows:
        return None
    obj.pk = rows[0][0]
    obj._state.adding, obj._state.db = False, connection.alias
    return obj


def update_statement(obj: Model, update_fields: Sequence[str]) -> tuple[str, list]:
    """The UPDATE of ``update(obj, update_fields)`` and its parameters, to run or to embed in a larger statement."""
    model = type(obj)
    fields = [model._meta.get_field(name) for name in update_fields]
    quote = connection.ops.quote_name
    sql = (
        f"UPDATE {table(model)} SET {', '.join(f'{quote(f.column)} = %s' for f in fields)} "
        f"WHERE {quote(model._meta.pk.column)} = %s"
    )
    return sql, [*prepared(obj, fields, add=False), obj.pk]


def update(obj: Model, update_fields: Sequence[str]) -> None:
    """UPDATE the named fields of a saved instance, as ``save(update_fields=...)`` (auto_now ones refreshed)."""
    sql, params = update_statement(obj, update_fields)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
