"""No role the app uses can switch the write-once refusals off; a superuser in replication mode cannot
skip them either.

The write-once tables are enumerated from the migrations' WriteOnce operations (and checked against the
triggers in the catalog), never listed here, so a table made write-once later is attacked too. The test
suite runs as the app role, as the web process does.
"""

from io import StringIO

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connections, transaction

from config.writeonce import declared_write_once_tables, guarded_tables
from tests.conftest import superuser_url

pytestmark = pytest.mark.postgres

WRITE_ONCE = sorted(declared_write_once_tables())
APP = settings.DATABASES["default"].get("USER") or "goldset"

# Each must fail as the app role, whatever it does first.
ATTACKS = [
    "ALTER TABLE {t} DISABLE TRIGGER USER",
    "ALTER TABLE {t} DISABLE TRIGGER ALL",
    "ALTER TABLE {t} DISABLE TRIGGER {t}_write_once_rows",
    "ALTER TABLE {t} ENABLE REPLICA TRIGGER {t}_write_once_rows",
    "ALTER TABLE {t} ENABLE TRIGGER {t}_write_once_truncate",
    "ALTER TABLE {t} ADD COLUMN sneaky integer",
    "ALTER TABLE {t} RENAME TO {t}_old",
    "ALTER TABLE {t} OWNER TO " + APP,
    "DROP TRIGGER {t}_write_once_rows ON {t}",
    "DROP TRIGGER {t}_write_once_truncate ON {t}",
    "DROP TABLE {t} CASCADE",
    "CREATE TRIGGER sneaky BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    "CREATE RULE sneaky AS ON UPDATE TO {t} DO INSTEAD NOTHING",
    "TRUNCATE {t} CASCADE",
    "SET LOCAL app.allow_truncate = on\nTRUNCATE {t} CASCADE",
    "UPDATE {t} SET id = id",
    "DELETE FROM {t}",
]


def as_app(sql: str) -> None:
    with transaction.atomic(), connections["default"].cursor() as cursor:
        for statement in sql.split("\n"):
            cursor.execute(statement)


def test_the_write_once_tables_are_enumerated_from_the_migrations_and_match_the_catalog(db):
    assert {
        "evalsets_evalsetversion",
        "evalsets_evalrecord",
        "evalsets_contaminationreport",
        "evalsets_hashverification",
        "training_trainingsnapshot",
        "training_snapshotrecord",
        "training_snapshotcheck",
        "annotate_adminaction",
    } <= set(WRITE_ONCE)
    assert guarded_tables(connections["default"]) == set(WRITE_ONCE)


@pytest.mark.django_db
def test_the_suite_runs_as_the_app_role_which_owns_nothing():
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (APP, False)
        cursor.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        )
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", [settings.OWNER_ROLE])
        assert cursor.fetchone()[0] is False


@pytest.mark.django_db
@pytest.mark.parametrize("table", WRITE_ONCE)
def test_the_app_role_cannot_switch_off_or_get_around_the_triggers(table):
    for attack in ATTACKS:
        with pytest.raises(DatabaseError, match="must be owner|permission denied"):
            as_app(attack.format(t=table))
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
            "AND tgname LIKE '%%write_once%%' ORDER BY tgname",
            [table],
        )
        assert cursor.fetchall() == [(f"{table}_write_once_rows", "A"), (f"{table}_write_once_truncate", "A")]
        for privilege in ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES"):
            cursor.execute("SELECT has_table_privilege(current_user, %s, %s)", [table, privilege])
            assert cursor.fetchone()[0] is False, privilege


@pytest.mark.django_db
@pytest.mark.parametrize(
    "attack",
    [
        "CREATE OR REPLACE FUNCTION goldset_write_once() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN NEW; END $$",
        "ALTER FUNCTION goldset_write_once() OWNER TO " + APP,
        "DROP FUNCTION goldset_write_once() CASCADE",
        "SET session_replication_role = replica",
        "CREATE TABLE sneaky (id int)",
        "CREATE SCHEMA sneaky",
        "SET ROLE " + settings.OWNER_ROLE,
    ],
)
def test_the_app_role_cannot_replace_the_trigger_function_nor_become_the_owner(attack):
    with pytest.raises(DatabaseError, match="must be owner|permission denied"):
        as_app(attack)


@pytest.mark.django_db
def test_a_grant_the_app_role_tries_to_give_itself_changes_nothing():
    with connections["default"].cursor() as cursor:
        for table in WRITE_ONCE:
            cursor.execute(f"GRANT UPDATE, DELETE, TRUNCATE, TRIGGER ON {table} TO {APP}")  # a warning, nothing granted
            cursor.execute("SELECT has_table_privilege(current_user, %s, 'UPDATE, DELETE, TRUNCATE, TRIGGER')", [table])
            assert cursor.fetchone()[0] is False


@pytest.fixture
def one_row_everywhere(make_item, freeze, admin_user, settings, tmp_path):
    """Committed rows in every write-once table (the superuser's connection sees only committed data)."""
    from evalsets.services import evalsets_verify, snapshot_contamination_check
    from training.audits import snapshot_audit_request
    from training.models import AuditAcknowledgement, SnapshotRecord, TrainingSnapshot

    make_item("gold", prompt="How long is the refund window for an unopened parcel sent by express courier?")
    make_item("preference")
    version = freeze().version
    snapshot = TrainingSnapshot.objects.create(name="s", sha256="d" * 64)
    SnapshotRecord.objects.create(
        snapshot=snapshot,
        position=0,
        kind="sft",
        messages=[{"role": "user", "content": version.records.first().prompt}],
        completion="ok",
        source_item_id=1,
        content_hash="0" * 64,
    )
    snapshot_contamination_check(snapshot=snapshot)
    evalsets_verify()
    audit = snapshot_audit_request(snapshot=snapshot, created_by=admin_user)
    AuditAcknowledgement.objects.create(audit=audit, finding_key="k", reason="kept", acknowledged_by=admin_user)
    from evalsets.judging.generate import DecodingConfig
    from evalsets.judging.services import runs

    settings.ARTIFACTS_DIR = tmp_path
    run = runs.generation_run_start(
        label="base", decoding=DecodingConfig(), created_by=admin_user, version=version, base_model="m"
    )
    runs.generation_run_claim(run_id=run.pk, secret=run.worker_secret, worker="gpu", using="default")
    output = {"position": 0, "record_id": None, "check_key": "", "text": "hi", "new_tokens": 1, "finish_reason": "eos"}
    runs.generation_outputs_add(run_id=run.pk, secret=run.worker_secret, rows=[output], using="default")
    with connections["default"].cursor() as cursor:
        for table in WRITE_ONCE:
            cursor.execute(f"SELECT count(*) FROM {table}")
            assert cursor.fetchone()[0] >= 1, table


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("table", WRITE_ONCE)
def test_replication_mode_as_a_superuser_still_refuses_update_delete_and_truncate(one_row_everywhere, table):
    with psycopg.connect(superuser_url()) as root:
        assert root.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        root.execute("SET session_replication_role = replica")
        for statement, op in (
            (f"UPDATE {table} SET id = id", "UPDATE"),
            (f"DELETE FROM {table}", "DELETE"),
            (f"TRUNCATE {table} CASCADE", "TRUNCATE"),
        ):
            with pytest.raises(psycopg.errors.RaiseException, match=f"is write-once: {op} rejected"):
                with root.transaction():
                    root.execute(statement)
        assert root.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("table", WRITE_ONCE)
def test_the_truncate_escape_works_only_for_the_tables_owner(one_row_everywhere, table):
    """Even if the app role were granted TRUNCATE (or UPDATE) by mistake, the trigger refuses it: the escape
    needs ownership of the table as well as the setting."""
    with psycopg.connect(superuser_url()) as root:
        with pytest.raises(psycopg.errors.RaiseException, match="is write-once: TRUNCATE rejected"):
            with root.transaction():
                root.execute(f"GRANT TRUNCATE, UPDATE ON ALL TABLES IN SCHEMA public TO {APP}")
                root.execute(f"SET LOCAL ROLE {APP}")
                root.execute("SET LOCAL app.allow_truncate = on")
                root.execute(f"TRUNCATE {table} CASCADE")
        with pytest.raises(psycopg.errors.RaiseException, match="is write-once: UPDATE rejected"):
            with root.transaction():
                root.execute(f"GRANT UPDATE ON {table} TO {APP}")
                root.execute(f"SET LOCAL ROLE {APP}")
                root.execute(f"UPDATE {table} SET id = id")
        # The owner itself must ask: without the setting its TRUNCATE is refused too.
        with pytest.raises(psycopg.errors.RaiseException, match="is write-once: TRUNCATE rejected"):
            with root.transaction():
                root.execute(f"SET LOCAL ROLE {settings.OWNER_ROLE}")
                root.execute(f"TRUNCATE {table} CASCADE")
        assert root.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= 1


@pytest.mark.django_db
def test_migrations_refuse_to_run_as_the_app_role():
    with pytest.raises(CommandError, match="Migrations run as the owner role"):
        call_command("migrate", "training", "0003", database="default", interactive=False, verbosity=0)
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT to_regclass('training_jobsecret') IS NOT NULL")
        assert cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_ensure_db_roles_finds_and_repairs_a_privilege_someone_slipped_in():
    from config.dbroles import audit_roles

    with psycopg.connect(superuser_url(), autocommit=True) as root:
        root.execute(f"GRANT UPDATE, TRIGGER ON evalsets_evalrecord TO {APP}")
        root.execute(f"GRANT SELECT ON evalsets_evalrecord TO {settings.TRAINER_ROLE}")
        root.execute(f"GRANT UPDATE (step) ON training_trainingjob TO {settings.TRAINER_ROLE}")
    problems = audit_roles(connections["default"])
    assert f"Role {settings.TRAINER_ROLE!r} holds UPDATE on training_trainingjob." in problems
    assert f"Role {APP!r} holds TRIGGER, UPDATE on evalsets_evalrecord." in problems
    assert f"Role {settings.TRAINER_ROLE!r} holds SELECT on evalsets_evalrecord." in problems
    out = StringIO()
    call_command("ensure_db_roles", stdout=out)
    assert "nothing on any evalsets table" in out.getvalue()
    assert audit_roles(connections["default"]) == []


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_ensure_db_roles_refuses_to_pass_a_trigger_left_switched_off():
    with psycopg.connect(superuser_url(), autocommit=True) as root:
        root.execute("ALTER TABLE evalsets_evalrecord ENABLE TRIGGER evalsets_evalrecord_write_once_rows")
    try:
        with pytest.raises(CommandError, match="evalsets_evalrecord_write_once_rows on evalsets_evalrecord is not"):
            call_command("ensure_db_roles", stdout=StringIO())
    finally:
        with psycopg.connect(superuser_url(), autocommit=True) as root:
            root.execute("ALTER TABLE evalsets_evalrecord ENABLE ALWAYS TRIGGER evalsets_evalrecord_write_once_rows")
