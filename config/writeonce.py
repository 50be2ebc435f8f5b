"""Write-once tables, enforced by the database for every client (raw SQL and the admin included).

PostgreSQL: one trigger function rejects UPDATE, DELETE and TRUNCATE. Only a connection that sets
``app.allow_truncate = on`` may TRUNCATE; the test suite sets it so Django's flush between tests
works, production never does.

SQLite: triggers reject UPDATE and DELETE unless ``goldset_write_once_bypass(op)`` returns 1. That
function exists only on connections Django opens (``connection_created``); any other client lacks
it, so its write fails too. It returns 1 only for the operations named in ``SQLITE_BYPASS``, which
only the test suite fills (SQLite's flush is a plain DELETE).

Use in a migration::

    from config.writeonce import WriteOnce
    operations = [..., WriteOnce("evalsets_evalsetversion", "evalsets_evalrecord")]
"""

from django.db import migrations
from django.db.backends.signals import connection_created
from django.dispatch import receiver

SQLITE_BYPASS: set[str] = set()

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION goldset_write_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' AND current_setting('app.allow_truncate', true) = 'on' THEN
    RETURN NULL;
  END IF;
  RAISE EXCEPTION '% is write-once: % rejected (freeze a new version instead)', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'raise_exception';
END $$;
"""


def _pg_sql(table: str) -> list[str]:
    return [
        PG_FUNCTION,
        f'DROP TRIGGER IF EXISTS "{table}_write_once_rows" ON "{table}";',
        f'CREATE TRIGGER "{table}_write_once_rows" BEFORE UPDATE OR DELETE ON "{table}" '
        f"FOR EACH ROW EXECUTE FUNCTION goldset_write_once();",
        f'DROP TRIGGER IF EXISTS "{table}_write_once_truncate" ON "{table}";',
        f'CREATE TRIGGER "{table}_write_once_truncate" BEFORE TRUNCATE ON "{table}" '
        f"FOR EACH STATEMENT EXECUTE FUNCTION goldset_write_once();",
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


@receiver(connection_created)
def _register_sqlite_bypass(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            "goldset_write_once_bypass", 1, lambda op: 1 if op in SQLITE_BYPASS else 0, deterministic=False
        )
