"""Set up the three PostgreSQL roles (config/dbroles.py) and their privileges. Safe to run again and again.

With ``--admin-url`` (a superuser login, used for nothing else) it first creates missing roles,
strips the app and trainer roles of superuser-like attributes and of membership in the owner role,
creates the database owned by the owner role (or hands an existing one to it), and gives the owner
everything in the schema that another role owns (upgrading an install where the app role owned the
tables). Then, as the owner, it revokes everything and grants exactly the plan; last it audits the
result and fails, saying what is wrong, if anything breaks the plan.
"""

from __future__ import annotations

import psycopg
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections
from psycopg import sql

from config import dbroles

# Relation kinds whose owner can be changed directly (a table's own sequences follow the table).
ALTER_KIND = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE", "S": "SEQUENCE"}


class Command(BaseCommand):
    help = (
        "Create the owner, app and trainer roles if missing (with --admin-url), then, as the owner, grant the app role "
        "DML only (SELECT and INSERT on write-once tables) and the trainer role only what the gpu worker needs "
        "(nothing on any evalsets table), and check the result. Creating roles needs CREATEROLE: pass --admin-url "
        "with a superuser login (e.g. postgres://postgres@127.0.0.1:5432/postgres)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--admin-url",
            help="A PostgreSQL superuser URL, used only to create or repair the roles and the database's ownership.",
        )
        parser.add_argument(
            "--owner-createdb",
            action="store_true",
            help="Let the owner role create databases (the test suite creates its own test database as the owner).",
        )
        parser.add_argument(
            "--reset-passwords",
            action="store_true",
            help="With --admin-url: set every role's password from the configuration, not only on creation.",
        )
        parser.add_argument(
            "--password", help="Set this password on the trainer role (default: GOLDSET_TRAINER_PASSWORD)."
        )

    def handle(self, *args, admin_url=None, owner_createdb=False, reset_passwords=False, password=None, **options):
        default = connections["default"]
        if default.vendor != "postgresql":
            self.stdout.write("The database is SQLite: it has no roles, nothing to do (the router still guards).")
            return
        owner, app, trainer = dbroles.owner_role(), dbroles.app_role(), dbroles.trainer_role()
        if trainer in (app, owner):
            raise CommandError(
                f"GOLDSET_TRAINER_ROLE={trainer!r} is the {'app' if trainer == app else 'owner'} role itself: "
                "the trainer needs a login of its own."
            )
        if owner == app:
            raise CommandError(
                f"GOLDSET_OWNER_ROLE={owner!r} is the app role itself: the app role must own nothing, or it could "
                "switch the write-once triggers off. Give the owner a login of its own."
            )
        passwords = {
            owner: connections["owner"].settings_dict.get("PASSWORD") or "",
            app: default.settings_dict.get("PASSWORD") or "",
            trainer: password or connections["training"].settings_dict.get("PASSWORD") or "",
        }
        if admin_url:
            self._as_admin(
                admin_url,
                owner=owner,
                app=app,
                trainer=trainer,
                passwords=passwords,
                owner_createdb=owner_createdb,
                reset={owner, app, trainer} if reset_passwords else ({trainer} if password else set()),
            )
        else:
            missing = sorted({owner, app, trainer} - dbroles.existing_roles(default, [owner, app, trainer]))
            if missing:
                raise CommandError(
                    f"Role(s) {', '.join(missing)} do not exist and cannot be created without CREATEROLE. Pass "
                    "--admin-url with a login that has CREATEROLE (a superuser, e.g. "
                    "postgres://postgres@127.0.0.1:5432/postgres); it is used only to create the roles."
                )
        try:
            notes = dbroles.sync_roles(connections["owner"])
        except DatabaseError as exc:
            raise CommandError(
                f"Cannot grant privileges as the owner role {owner!r}: {exc}. Set GOLDSET_OWNER_PASSWORD (or "
                "OWNER_DATABASE_URL) to its login, and hand it the database first with --admin-url."
            ) from exc
        problems = dbroles.audit_roles(default)
        if problems:
            raise CommandError("The database roles break the eval wall:\n  - " + "\n  - ".join(problems + notes))
        write_once = len(dbroles.write_once_tables(default))
        if not dbroles.schema_tables(default):
            self.stdout.write(
                "The database has no tables yet: run `manage.py migrate --database owner`; every migrate ends by "
                "granting the app and trainer roles what they need."
            )
        granted = ", ".join(f"{privs} on {table}" for table, privs in dbroles.TRAINER_GRANTS.items())
        self.stdout.write(
            self.style.SUCCESS(
                f"Owner {owner!r} owns the database and everything in it. App {app!r}: DML only, SELECT and INSERT "
                f"on the {write_once} write-once tables, owns nothing. Trainer {trainer!r}: {granted}, and its job's "
                "writes through the job-write functions; nothing on any evalsets table."
            )
        )

    def _as_admin(self, url, *, owner, app, trainer, passwords, owner_createdb, reset) -> None:
        database = connections["default"].settings_dict["NAME"]
        try:
            with psycopg.connect(url, autocommit=True) as admin:
                self._roles(admin, owner=owner, app=app, trainer=trainer, passwords=passwords, reset=reset)
                if owner_createdb:
                    admin.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(owner)))
                row = admin.execute(
                    "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = %s",
                    [database],
                ).fetchone()
                if row is None:
                    admin.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner))
                    )
                    self.stdout.write(f"Database {database!r} created, owned by {owner!r}.")
                elif row[0] != owner:
                    admin.execute(
                        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(owner))
                    )
                    self.stdout.write(f"Database {database!r} handed from {row[0]!r} to {owner!r}.")
            with psycopg.connect(url, dbname=database, autocommit=True) as admin:
                self._hand_schema_to_owner(admin, owner)
        except psycopg.Error as exc:
            raise CommandError(
                f"Cannot set up the roles through --admin-url: {exc}. Use a login with CREATEROLE and CREATEDB "
                "(a superuser), or create the roles and database once by hand (see the README)."
            ) from exc

    def _roles(self, admin, *, owner, app, trainer, passwords, reset) -> None:
        for role in (owner, app, trainer):
            exists = admin.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [role]).fetchone()
            verb = "ALTER ROLE {} WITH LOGIN" if exists else "CREATE ROLE {} WITH LOGIN"
            statement = sql.SQL(verb).format(sql.Identifier(role))
            set_password = bool(passwords[role]) and (not exists or role in reset)
            if set_password:
                statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(passwords[role]))
            if not exists or set_password:
                admin.execute(statement)
                self.stdout.write(f"Role {role!r} {'updated' if exists else 'created'}.")
        for role in (app, trainer):
            row = admin.execute(
                "SELECT rolsuper OR rolbypassrls OR rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = %s", [role]
            ).fetchone()
            if row[0]:
                admin.execute(
                    sql.SQL("ALTER ROLE {} NOSUPERUSER NOBYPASSRLS NOCREATEROLE").format(sql.Identifier(role))
                )
                self.stdout.write(f"Role {role!r}: superuser, bypassrls and createrole taken away.")
        for member, group in ((app, owner), (trainer, owner), (trainer, app)):
            direct = admin.execute(
                "SELECT 1 FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.roleid "
                "JOIN pg_catalog.pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
                [group, member],
            ).fetchone()
            if direct:
                admin.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), sql.Identifier(member)))
                self.stdout.write(f"Role {member!r} is no longer a member of {group!r}.")

    def _hand_schema_to_owner(self, admin, owner) -> None:
        """Give the owner the schema and every relation and function in it (an install made before the split)."""
        schema, schema_owner = admin.execute(
            "SELECT n.nspname, pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n "
            "WHERE n.oid = current_schema()::regnamespace"
        ).fetchone()
        if schema_owner not in (owner, "pg_database_owner"):
            admin.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), sql.Identifier(owner)))
        # Sequences that belong to a table column follow the table; altering them alone is refused.
        relations = admin.execute(
            "SELECT c.relname, c.relkind FROM pg_catalog.pg_class c "
            "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = ANY(%s) "
            "AND pg_catalog.pg_get_userbyid(c.relowner) <> %s AND NOT (c.relkind = 'S' AND EXISTS ("
            "  SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
            "  AND d.deptype IN ('a', 'i')))",
            [list(ALTER_KIND), owner],
        ).fetchall()
        for name, kind in relations:
            admin.execute(
                sql.SQL("ALTER {} {}.{} OWNER TO {}").format(
                    sql.SQL(ALTER_KIND[kind]), sql.Identifier(schema), sql.Identifier(name), sql.Identifier(owner)
                )
            )
        functions = admin.execute(
            "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p "
            "WHERE p.pronamespace = current_schema()::regnamespace AND pg_catalog.pg_get_userbyid(p.proowner) <> %s",
            [owner],
        ).fetchall()
        for (signature,) in functions:
            admin.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(signature), sql.Identifier(owner)))
        if relations or functions:
            self.stdout.write(f"Handed {len(relations)} relations and {len(functions)} functions to {owner!r}.")
