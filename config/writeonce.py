"""Write-once tables, enforced by the database for every client (raw SQL and the admin included).

PostgreSQL: one trigger function rejects UPDATE, DELETE and TRUNCATE. The triggers are
``ENABLE ALWAYS``, so a superuser's ``session_replication_role = replica`` does not skip them. Only
a role that owns the table (the owner role, which could drop the trigger anyway) may TRUNCATE, and
only after it asks with ``SET app.allow_truncate = on``: the test suite flushes between tests that
way, as the owner. The app role owns nothing and has no TRUNCATE privilege, so whatever it SETs,
its TRUNCATE, UPDATE and DELETE are refused.

SQLite: triggers reject UPDATE and DELETE unless ``goldset_write_once_bypass(op)`` returns 1. That
function exists only on connections Django opens (``connection_created``); any other client lacks
it, so its write fails too. It returns 1 only for the operations named in ``SQLITE_BYPASS``, which
only the test suite (SQLite's flush is a plain DELETE) and ``rewriting`` (a migration) fill.

Use in a migration::

    from config.writeonce import WriteOnce
    operations = [..., WriteOnce("evalsets_evalsetversion", "evalsets_evalrecord")]
"""

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import migrations
from django.db.backends.signals import connection_created
from django.dispatch import receiver

SQLITE_BYPASS: set[str] = set()
PG_FUNCTION_NAME = "goldset_write_once"

# Every name is schema-qualified and search_path is pinned: the function runs as whoever issues the
# statement, who must not be able to shadow pg_has_role or current_setting with a function of their own.
PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {PG_FUNCTION_NAME}() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF TG_OP = 'TRUNCATE'
     AND pg_catalog.current_setting('app.allow_truncate', true) = 'on'
     AND pg_catalog.pg_has_role(
       current_user, (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
    RETURN NULL;
  END IF;
  RAISE EXCEPTION '% is write-once: % rejected (freeze a new version instead)', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'raise_exception';
END $$;
"""


def _pg_sql(table: str) -> list[str]:
    rows, truncate = f"{table}_write_once_rows", f"{table}_write_once_truncate"
    return [
        PG_FUNCTION,
        f'DROP TRIGGER IF EXISTS "{rows}" ON "{table}";',
        f'CREATE TRIGGER "{rows}" BEFORE UPDATE OR DELETE ON "{table}" '
        f"FOR EACH ROW EXECUTE FUNCTION {PG_FUNCTION_NAME}();",
        f'ALTER TABLE "{table}" ENABLE ALWAYS TRIGGER "{rows}";',
        f'DROP TRIGGER IF EXISTS "{truncate}" ON "{table}";',
        f'CREATE TRIGGER "{truncate}" BEFORE TRUNCATE ON "{table}" '
        f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_FUNCTION_NAME}();",
        f'ALTER TABLE "{table}" ENABLE ALWAYS TRIGGER "{truncate}";',
    ]


def _sqlite_sql(table: str) -> list[str]:
    statements = []
    for op in ("UPDATE", "DELETE"):
        name = f"{table}_write_once_{op.lower()}"
        statements += [
            f'DROP TRIGGER IF EXISTS "{name}";',
            f'CREATE TRIGGER "{name}" BEFORE {op} ON "{table}" '
            f"WHEN goldset_write_once_bypass('{op}') = 0 "
            f"BEGIN SELECT RAISE(ABORT, '{table} is write-once: {op} rejected (freeze a new version instead)'); END;",
        ]
    return statements


def _drop_sql(vendor: str, table: str) -> list[str]:
    if vendor == "postgresql":
        return [
            f'DROP TRIGGER IF EXISTS "{table}_write_once_rows" ON "{table}";',
            f'DROP TRIGGER IF EXISTS "{table}_write_once_truncate" ON "{table}";',
        ]
    if vendor == "sqlite":
        return [f'DROP TRIGGER IF EXISTS "{table}_write_once_{op}";' for op in ("update", "delete")]
    return []


class WriteOnce(migrations.RunPython):
    """A migration operation that makes the named tables write-once on PostgreSQL and SQLite."""

    def __init__(self, *tables: str):
        self.tables = tables
        super().__init__(self._forwards, self._backwards)

    def deconstruct(self):
        return (self.__class__.__name__, self.tables, {})

    def describe(self) -> str:
        return f"Make {', '.join(self.tables)} write-once"

    def _forwards(self, apps, schema_editor) -> None:
        vendor = schema_editor.connection.vendor
        for table in self.tables:
            if vendor == "postgresql":
                statements = _pg_sql(table)
            elif vendor == "sqlite":
                statements = _sqlite_sql(table)
            else:
                raise NotImplementedError(f"Write-once triggers are not written for {vendor}.")
            for sql in statements:
                schema_editor.execute(sql, params=None)

    def _backwards(self, apps, schema_editor) -> None:
        for table in self.tables:
            for sql in _drop_sql(schema_editor.connection.vendor, table):
                schema_editor.execute(sql, params=None)


class WriteOnceAlways(WriteOnce):
    """Re-install the triggers of tables an earlier migration made write-once (ENABLE ALWAYS, the
    current trigger function). Reversing it leaves them guarded: only the first WriteOnce drops them."""

    def describe(self) -> str:
        return f"Re-install the write-once triggers of {', '.join(self.tables)}, ENABLE ALWAYS"

    def _backwards(self, apps, schema_editor) -> None:
        pass


@contextmanager
def rewriting(schema_editor, table: str) -> Iterator[None]:
    """Inside a migration only: let UPDATE through one write-once table until the block ends.

    PostgreSQL: the owner (who runs migrations) disables the row trigger and enables it again, ALWAYS,
    in the migration's own transaction, so no other session ever sees the table unguarded.
    """
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        trigger = f"{table}_write_once_rows"
        schema_editor.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER "{trigger}";', params=None)
        try:
            yield
        finally:
            schema_editor.execute(f'ALTER TABLE "{table}" ENABLE ALWAYS TRIGGER "{trigger}";', params=None)
    else:
        had = "UPDATE" in SQLITE_BYPASS
        SQLITE_BYPASS.add("UPDATE")
        try:
            yield
        finally:
            if not had:
                SQLITE_BYPASS.discard("UPDATE")


def declared_write_once_tables() -> set[str]:
    """Every table a migration on disk makes write-once (read from the WriteOnce operations)."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    tables: set[str] = set()
    for migration in loader.disk_migrations.values():
        for operation in migration.operations:
            if isinstance(operation, WriteOnce):
                tables.update(operation.tables)
    return tables


def guarded_tables(connection) -> set[str]:
    """The tables whose write-once triggers are in place, read from the catalog (on SQLite: both of them)."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")
            names = cursor.fetchall()
        return {
            table
            for table, name in names
            if name == f"{table}_write_once_update" and (table, f"{table}_write_once_delete") in names
        }
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT c.relname FROM pg_catalog.pg_trigger t "
            "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid "
            "WHERE p.proname = %s AND NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace",
            [PG_FUNCTION_NAME],
        )
        return {row[0] for row in cursor.fetchall()}


@receiver(connection_created)
def _register_sqlite_bypass(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            "goldset_write_once_bypass", 1, lambda op: 1 if op in SQLITE_BYPASS else 0, deterministic=False
        )
