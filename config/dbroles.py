"""Database roles and what each may do (PostgreSQL; SQLite has no roles).

- **owner** (``settings.OWNER_ROLE``, alias "owner"): owns the database, its schema and every table,
  sequence and function in it, and runs migrations (``manage.py migrate --database owner``). The
  running app never logs in as it.
- **app** (the ``DATABASE_URL`` login, alias "default"): DML only. It owns nothing, so it cannot alter
  a table, disable or drop a trigger, or replace a function; it has no TRUNCATE, TRIGGER or REFERENCES
  privilege anywhere, and on write-once tables only SELECT and INSERT.
- **trainer** (``settings.TRAINER_ROLE``, alias "training", the gpu worker): SELECT on the tables in
  TRAINER_GRANTS and EXECUTE on the job-write functions (training/dbfunctions.py). Nothing on any
  evalsets table, and nothing it can read holds eval text.
- **PUBLIC**: nothing in the schema; only the app role may create temporary tables.

``sync_roles`` (run as the owner) revokes everything and grants exactly this. It runs after every
migrate (``post_migrate``) and from ``manage.py ensure_db_roles``, which also creates the roles and
checks the result with ``audit_roles``.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.management.base import CommandError
from django.db import connections, migrations, transaction

from config.writeonce import declared_write_once_tables, guarded_tables

log = logging.getLogger(__name__)

# The trainer role's privileges: exactly these tables, nothing else (no evalsets table, ever). Its
# writes to its job go through the functions in training/dbfunctions.py, never a table privilege.
TRAINER_GRANTS: dict[str, str] = {
    "training_trainingsnapshot": "SELECT",
    "training_snapshotrecord": "SELECT",
    "training_snapshotcheck": "SELECT",
    "training_trainingjob": "SELECT",
    # The preflight worker reads its preflight; it writes it only through the preflight functions.
    "training_trainingpreflight": "SELECT",
    # A generation run's gpu worker reads its run (model, decoding settings: no eval text); it writes the
    # run and its outputs only through the run functions (evalsets/judging/dbfunctions.py) and reads no output.
    "judging_generationrun": "SELECT",
}
# The workers' write functions (SECURITY DEFINER, secret-checked), by module, with the table each needs.
FUNCTION_MODULES = (
    ("training.dbfunctions", "training_trainingjob"),
    ("evalsets.judging.dbfunctions", "judging_generationrun"),
)
# The app role reads these and writes none (Django's migration history: runserver reads it).
APP_READ_ONLY = frozenset({"django_migrations"})
APP_DML = "SELECT, INSERT, UPDATE, DELETE"
APP_WRITE_ONCE = "SELECT, INSERT"
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")
RELKINDS = ("r", "p", "v", "m", "f")


def owner_role() -> str:
    return settings.OWNER_ROLE


def app_role() -> str:
    # From the settings, not the live connection: the test suite logs "default" in as the owner to migrate.
    return getattr(settings, "APP_ROLE", "") or settings.DATABASES["default"].get("USER") or ""


def trainer_role() -> str:
    return settings.TRAINER_ROLE


def quote(connection, name: str) -> str:
    return connection.ops.quote_name(name)


def existing_roles(connection, names) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", [list(names)])
        return {row[0] for row in cursor.fetchall()}


def schema_tables(connection) -> dict[str, str]:
    """{name: relkind} of the tables and views in the connection's schema."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, relkind FROM pg_catalog.pg_class "
            "WHERE relnamespace = current_schema()::regnamespace AND relkind = ANY(%s)",
            [list(RELKINDS)],
        )
        return dict(cursor.fetchall())


def write_once_tables(connection) -> set[str]:
    """Tables a migration declared write-once, and tables whose triggers say so, that exist here."""
    return (declared_write_once_tables() | guarded_tables(connection)) & set(schema_tables(connection))


def function_modules(tables) -> list:
    """The write-function modules whose tables exist here."""
    import importlib

    return [importlib.import_module(module) for module, table in FUNCTION_MODULES if table in tables]


def worker_function_signatures(tables=None) -> dict[str, str]:
    """{name: argument types} of every worker write function (of the modules whose tables exist, if given)."""
    modules = (
        function_modules(tables) if tables is not None else [__import__(m, fromlist=["_"]) for m, _ in FUNCTION_MODULES]
    )
    return {name: args for module in modules for name, args in module.SIGNATURES.items()}


def _job_functions(schema_q: str, tables) -> list[str]:
    return [f"{schema_q}.{name}({args})" for name, args in worker_function_signatures(tables).items()]


def sync_roles(connection) -> list[str]:
    """As the owner: revoke every privilege in the schema, then grant exactly the plan above.

    Idempotent, and one transaction: another session sees the old grants or the new ones. Returns
    notes on what had to be skipped (a role that does not exist yet).
    """
    if connection.vendor != "postgresql":
        return []
    owner, app, trainer = owner_role(), app_role(), trainer_role()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, current_schema(), current_database(), "
            "pg_catalog.pg_get_userbyid(d.datdba) FROM pg_catalog.pg_database d WHERE d.datname = current_database()"
        )
        user, schema, database, database_owner = cursor.fetchone()
    if user != owner:
        raise CommandError(
            f"Privileges are granted by the owner role {owner!r}, but this connection is {user!r}: "
            "run `manage.py ensure_db_roles` (or migrate with --database owner)."
        )
    notes = []
    present = existing_roles(connection, [app, trainer])
    for role, what in ((app, "app"), (trainer, "trainer")):
        if role not in present:
            notes.append(
                f"The {what} role {role!r} does not exist: run `manage.py ensure_db_roles --admin-url …` to create it."
            )
    q = lambda name: quote(connection, name)  # noqa: E731
    s = q(schema)
    tables = schema_tables(connection)
    write_once = write_once_tables(connection)
    grantees = ", ".join(["PUBLIC", *(q(r) for r in (app, trainer) if r in present)])
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for module in function_modules(tables):
            for sql in module.function_sql(schema):
                cursor.execute(sql)
        functions = _job_functions(s, tables)
        cursor.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {grantees}")
        cursor.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {grantees}")
        cursor.execute(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {s} FROM {grantees}")
        cursor.execute(f"REVOKE ALL ON SCHEMA {s} FROM {grantees}")
        if database_owner == owner:
            db = q(database)
            cursor.execute(f"REVOKE ALL ON DATABASE {db} FROM {grantees}")
            connect_to = [q(r) for r in (app, trainer) if r in present]
            if connect_to:
                cursor.execute(f"GRANT CONNECT ON DATABASE {db} TO {', '.join(connect_to)}")
            if app in present:
                # Imports COPY into a temporary table; nobody else needs one.
                cursor.execute(f"GRANT TEMPORARY ON DATABASE {db} TO {q(app)}")
        else:
            notes.append(
                f"Database {database!r} is owned by {database_owner!r}, not {owner!r}: run "
                "`manage.py ensure_db_roles --admin-url …` to hand it to the owner."
            )
        if app in present:
            cursor.execute(f"GRANT USAGE ON SCHEMA {s} TO {q(app)}")
            for table in sorted(tables):
                if table in APP_READ_ONLY:
                    privileges = "SELECT"
                elif table in write_once:
                    privileges = APP_WRITE_ONCE
                else:
                    privileges = APP_DML
                cursor.execute(f"GRANT {privileges} ON {s}.{q(table)} TO {q(app)}")
            cursor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {q(app)}")
            for function in functions:
                cursor.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {q(app)}")
        if trainer in present:
            cursor.execute(f"GRANT USAGE ON SCHEMA {s} TO {q(trainer)}")
            for table, privileges in TRAINER_GRANTS.items():
                if table in tables:
                    cursor.execute(f"GRANT {privileges} ON {s}.{q(table)} TO {q(trainer)}")
            for function in functions:
                cursor.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {q(trainer)}")
    for note in notes:
        log.warning(note)
    return notes


def audit_roles(connection) -> list[str]:
    """Everything about the three roles that breaks the plan above, in words (empty: all is well)."""
    if connection.vendor != "postgresql":
        return []
    owner, app, trainer = owner_role(), app_role(), trainer_role()
    problems: list[str] = []
    if len({owner, app, trainer}) < 3:
        return [f"The owner ({owner!r}), app ({app!r}) and trainer ({trainer!r}) roles must be three different roles."]
    present = existing_roles(connection, [owner, app, trainer])
    missing = [r for r in (owner, app, trainer) if r not in present]
    if missing:
        return [f"Role {r!r} does not exist: run `manage.py ensure_db_roles --admin-url …`." for r in missing]
    tables = schema_tables(connection)
    write_once = write_once_tables(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
            [[app, trainer]],
        )
        for role, superuser, bypassrls, createrole in cursor.fetchall():
            if superuser or bypassrls or createrole:
                problems.append(
                    f"Role {role!r} is a superuser, bypasses row security or creates roles: "
                    f"ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS NOCREATEROLE (ensure_db_roles --admin-url does)."
                )
        for member, group in ((app, owner), (trainer, owner), (trainer, app)):
            cursor.execute("SELECT pg_catalog.pg_has_role(%s, %s, 'MEMBER')", [member, group])
            if cursor.fetchone()[0]:
                problems.append(
                    f"Role {member!r} is a member of {group!r} and has its privileges: REVOKE {group} FROM {member}."
                )
        cursor.execute(
            "SELECT pg_catalog.pg_get_userbyid(d.datdba), current_database() FROM pg_catalog.pg_database d "
            "WHERE d.datname = current_database()"
        )
        database_owner, database = cursor.fetchone()
        if database_owner != owner:
            problems.append(f"Database {database!r} is owned by {database_owner!r}, not the owner role {owner!r}.")
        cursor.execute(
            "SELECT n.nspname, pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n "
            "WHERE n.oid = current_schema()::regnamespace"
        )
        schema, schema_owner = cursor.fetchone()
        if schema_owner not in (owner, "pg_database_owner"):
            problems.append(f"Schema {schema!r} is owned by {schema_owner!r}, not the owner role {owner!r}.")
        cursor.execute(
            "SELECT 'relation ' || relname, pg_catalog.pg_get_userbyid(relowner) FROM pg_catalog.pg_class "
            "WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r','p','v','m','f','S','i') "
            "UNION ALL SELECT 'function ' || proname, pg_catalog.pg_get_userbyid(proowner) FROM pg_catalog.pg_proc "
            "WHERE pronamespace = current_schema()::regnamespace"
        )
        foreign = sorted(f"{what} (owned by {who})" for what, who in cursor.fetchall() if who != owner)
        if foreign:
            problems.append(f"Not owned by {owner!r}: {', '.join(foreign[:10])}{' …' if len(foreign) > 10 else ''}.")
        for role in (app, trainer, "public"):
            # Table-level privileges, and column-level ones (a GRANT UPDATE (col) is a write all the same).
            cursor.execute(
                "SELECT c.relname, p FROM pg_catalog.pg_class c, unnest(%s::text[]) AS p "
                "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = ANY(%s) "
                "AND (pg_catalog.has_table_privilege(%s, c.oid, p) OR (p = ANY(%s) "
                "AND pg_catalog.has_any_column_privilege(%s, c.oid, p)))",
                [list(TABLE_PRIVILEGES), list(RELKINDS), role, list(COLUMN_PRIVILEGES), role],
            )
            held: dict[str, set[str]] = {}
            for table, privilege in cursor.fetchall():
                held.setdefault(table, set()).add(privilege)
            for table, privileges in sorted(held.items()):
                if role == app:
                    allowed = {"SELECT"} if table in APP_READ_ONLY else {"SELECT", "INSERT"}
                    if table not in APP_READ_ONLY and table not in write_once:
                        allowed |= {"UPDATE", "DELETE"}
                elif role == trainer:
                    allowed = {p.strip() for p in TRAINER_GRANTS.get(table, "").split(",") if p.strip()}
                else:
                    allowed = set()
                if privileges - allowed:
                    problems.append(f"Role {role!r} holds {', '.join(sorted(privileges - allowed))} on {table}.")
        declared = declared_write_once_tables() & set(tables)
        cursor.execute(
            "SELECT c.relname, t.tgname, t.tgenabled FROM pg_catalog.pg_trigger t "
            "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid "
            "WHERE p.proname = 'goldset_write_once' AND NOT t.tgisinternal "
            "AND c.relnamespace = current_schema()::regnamespace"
        )
        triggers: dict[str, list[str]] = {}
        for table, name, enabled in cursor.fetchall():
            triggers.setdefault(table, []).append(enabled)
            if enabled != "A":
                problems.append(f"Write-once trigger {name} on {table} is not ENABLE ALWAYS (state {enabled!r}).")
        for table in sorted(declared):
            if len(triggers.get(table, [])) < 2:
                problems.append(f"Table {table} is declared write-once but lacks its triggers: migrate again.")
        for name in worker_function_signatures(tables):
            cursor.execute(
                "SELECT pg_catalog.pg_get_userbyid(proowner), prosecdef, "
                "coalesce(array_to_string(proconfig, ','), '') LIKE '%%search_path=%%', "
                "pg_catalog.has_function_privilege(%s, p.oid, 'EXECUTE'), "
                "pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE') "
                "FROM pg_catalog.pg_proc p WHERE proname = %s AND pronamespace = current_schema()::regnamespace",
                [trainer, name],
            )
            row = cursor.fetchone()
            if row is None:
                problems.append(f"Function {name} is missing: run `manage.py ensure_db_roles`.")
                continue
            fn_owner, definer, pinned, trainer_may, public_may = row
            if fn_owner != owner or not definer or not pinned:
                problems.append(f"Function {name} must be SECURITY DEFINER, owned by {owner!r}, with search_path set.")
            if not trainer_may or public_may:
                problems.append(f"Function {name}: EXECUTE must go to {trainer!r} and not to PUBLIC.")
    return problems


def refuse_migrate_unless_owner(sender, using, plan=None, **kwargs) -> None:
    """pre_migrate: on PostgreSQL, only the owner role applies migrations (the app role must own nothing)."""
    connection = connections[using]
    if connection.vendor != "postgresql" or not plan:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        user = cursor.fetchone()[0]
    if user != owner_role():
        raise CommandError(
            f"Migrations run as the owner role {owner_role()!r}, not {user!r} (the app role must own no table, or "
            "it could switch the write-once triggers off). Run `manage.py migrate --database owner`; set "
            "GOLDSET_OWNER_PASSWORD or OWNER_DATABASE_URL, and create the roles once with "
            "`manage.py ensure_db_roles --admin-url …`."
        )


def sync_after_migrate(sender, using, **kwargs) -> None:
    """post_migrate: grant the app and trainer roles what they need on whatever the migrations created."""
    connection = connections[using]
    if connection.vendor == "postgresql" and connection.settings_dict.get("USER") == owner_role():
        sync_roles(connection)


class SyncTrainerGrants(migrations.RunPython):
    """Kept for the migrations that name it: grants now follow every migrate (``sync_after_migrate``)."""

    def __init__(self):
        super().__init__(migrations.RunPython.noop, migrations.RunPython.noop)

    def deconstruct(self):
        return (self.__class__.__name__, [], {})

    def describe(self) -> str:
        return "Role privileges are synced after the migrations (config.dbroles.sync_after_migrate)"
