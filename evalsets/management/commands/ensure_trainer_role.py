"""Create or update the trainer role (settings.TRAINER_ROLE) and bring its privileges in line with
config.dbroles.TRAINER_GRANTS: nothing at all on any evalsets table. Safe to run again and again."""

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections
from psycopg import sql

from config.dbroles import TRAINER_GRANTS, sync_trainer_grants

EVALSETS_PREFIX = "evalsets_"
ALL_PRIVILEGES = "SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER"


class Command(BaseCommand):
    help = (
        "Create the trainer role if missing (or set its password), then revoke everything from it and grant only "
        "what the gpu worker needs. Creating a role needs CREATEROLE: pass --admin-url with a superuser login "
        "(e.g. postgres://postgres@127.0.0.1:5432/goldset) when the app role lacks it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--password", help="Set this password on the role (default: GOLDSET_TRAINER_PASSWORD).")
        parser.add_argument(
            "--admin-url", help="A PostgreSQL URL with CREATEROLE (or superuser), used only to create/alter the role."
        )

    def handle(self, *args, password=None, admin_url=None, **options):
        connection = connections["default"]
        if connection.vendor != "postgresql":
            self.stdout.write("The database is SQLite: it has no roles, nothing to do (the router still guards).")
            return
        role = settings.TRAINER_ROLE
        app_role = connection.settings_dict.get("USER")
        if role == app_role:
            raise CommandError(
                f"GOLDSET_TRAINER_ROLE={role!r} is the app role itself: the trainer needs a login of its own."
            )
        info = self._role_info(connection, role)
        if info is None or password:
            self._create_or_alter(role, password or settings.TRAINER_PASSWORD, exists=info is not None, url=admin_url)
            info = self._role_info(connection, role)
            self.stdout.write(f"Role {role!r} {'updated' if info else 'created'}.")
        rolsuper, rolbypassrls = info
        if rolsuper or rolbypassrls:
            raise CommandError(
                f"Role {role!r} is a superuser or bypasses row security: it would see eval data. "
                f"Run ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS as a superuser."
            )
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_has_role(%s, %s, 'USAGE')", [role, app_role])
            if cursor.fetchone()[0]:
                raise CommandError(
                    f"Role {role!r} inherits the app role {app_role!r} and with it every table. "
                    f"Run REVOKE {app_role} FROM {role} as a superuser."
                )
        sync_trainer_grants(connection)
        leaks = self._evalsets_leaks(connection, role)
        if leaks:
            raise CommandError(f"Role {role!r} still has privileges on {', '.join(leaks)}: the eval wall is open.")
        granted = ", ".join(f"{privs} on {table}" for table, privs in TRAINER_GRANTS.items())
        self.stdout.write(self.style.SUCCESS(f"Role {role!r}: {granted}; nothing on any evalsets table."))

    @staticmethod
    def _role_info(connection, role: str):
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", [role])
            return cursor.fetchone()

    def _create_or_alter(self, role: str, password: str, *, exists: bool, url: str | None) -> None:
        verb = "ALTER ROLE {} WITH LOGIN PASSWORD {}" if exists else "CREATE ROLE {} WITH LOGIN PASSWORD {}"
        statement = sql.SQL(verb).format(sql.Identifier(role), sql.Literal(password))
        try:
            if url:
                with psycopg.connect(url, autocommit=True) as admin:
                    admin.execute(statement)
            else:
                raw = connections["default"]
                raw.ensure_connection()
                with raw.cursor() as cursor:
                    cursor.execute(statement.as_string(raw.connection))
        except (psycopg.Error, DatabaseError) as exc:
            raise CommandError(
                f"Cannot {'alter' if exists else 'create'} role {role!r}: {exc}. Pass --admin-url with a login "
                "that has CREATEROLE, or create the role once as a superuser (see config/postgres-init.sql)."
            ) from exc

    @staticmethod
    def _evalsets_leaks(connection, role: str) -> list[str]:
        with connection.cursor() as cursor:
            tables = [t for t in connection.introspection.table_names(cursor) if t.startswith(EVALSETS_PREFIX)]
            leaks = []
            for table in tables:
                cursor.execute("SELECT has_table_privilege(%s, %s, %s)", [role, table, ALL_PRIVILEGES])
                if cursor.fetchone()[0]:
                    leaks.append(table)
        return leaks
