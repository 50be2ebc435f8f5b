"""The trainer role's privileges: exactly the tables listed here, nothing else (no evalsets table, ever).

Migrations that add a table the gpu worker needs list it in TRAINER_GRANTS and end with
``SyncTrainerGrants()``; ``manage.py ensure_trainer_role`` applies the same list on demand.
"""

import logging

from django.conf import settings
from django.db import migrations

log = logging.getLogger(__name__)

TRAINER_GRANTS: dict[str, str] = {
    "training_trainingsnapshot": "SELECT",
    "training_snapshotrecord": "SELECT",
    "training_snapshotcheck": "SELECT",
    # The gpu worker claims, heartbeats and finishes its job row, and appends progress rows.
    "training_trainingjob": "SELECT, UPDATE",
    "training_jobprogress": "SELECT, INSERT",
    # The preflight worker claims a preflight, reports its progress and records the result.
    "training_trainingpreflight": "SELECT, UPDATE",
}


def trainer_role_exists(connection) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [settings.TRAINER_ROLE])
        return cursor.fetchone() is not None


def sync_trainer_grants(connection) -> bool:
    """Revoke everything from the trainer role, then grant TRAINER_GRANTS. False when skipped."""
    if connection.vendor != "postgresql":
        return False
    if not trainer_role_exists(connection):
        log.warning(
            "Role %r does not exist: run `manage.py ensure_trainer_role` to create it and grant its privileges.",
            settings.TRAINER_ROLE,
        )
        return False
    role = connection.ops.quote_name(settings.TRAINER_ROLE)
    with connection.cursor() as cursor:
        cursor.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        cursor.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
        cursor.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        existing = set(connection.introspection.table_names(cursor))
        for table, privileges in TRAINER_GRANTS.items():
            if table in existing:
                cursor.execute(f"GRANT {privileges} ON {connection.ops.quote_name(table)} TO {role}")
    return True


class SyncTrainerGrants(migrations.RunPython):
    """Migration operation: bring the trainer role's privileges in line with TRAINER_GRANTS."""

    def __init__(self):
        super().__init__(self._sync, migrations.RunPython.noop)

    def deconstruct(self):
        return (self.__class__.__name__, [], {})

    def describe(self) -> str:
        return "Sync the trainer role's table privileges"

    @staticmethod
    def _sync(apps, schema_editor) -> None:
        sync_trainer_grants(schema_editor.connection)
