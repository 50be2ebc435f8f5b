"""The eval wall: the trainer role, the router and the import contract keep training away from eval data."""

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from io import StringIO
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connections, router, transaction
from django.test import override_settings

from config.routers import EvalWallError, EvalWallRouter
from evalsets.models import EvalRecord, EvalSetVersion
from tests.conftest import ON_POSTGRES, superuser_url
from training.models import TrainingSnapshot

ROOT = Path(__file__).resolve().parent.parent
EVALSETS_TABLES = ["evalsets_evalsetversion", "evalsets_evalrecord"]


# --- the trainer role (PostgreSQL) ---------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(databases=["default", "training"])
@pytest.mark.parametrize("table", EVALSETS_TABLES)
@pytest.mark.parametrize("statement", ["SELECT count(*) FROM {t}", "DELETE FROM {t}", "UPDATE {t} SET id = id"])
def test_the_trainer_role_is_denied_every_evalsets_table(table, statement):
    trainer = connections["training"]
    with trainer.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone()[0] == settings.TRAINER_ROLE
    with pytest.raises(DatabaseError, match=f"permission denied for table {table}"):
        with transaction.atomic(using="training"), trainer.cursor() as cursor:
            cursor.execute(statement.format(t=table))


@pytest.mark.postgres
@pytest.mark.django_db(databases=["default", "training"])
def test_the_trainer_role_reads_training_tables_and_cannot_write_them():
    with connections["training"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM training_trainingsnapshot")
        assert cursor.fetchone()[0] == 0
    with pytest.raises(DatabaseError, match="permission denied for table training_snapshotcheck"):
        with transaction.atomic(using="training"), connections["training"].cursor() as cursor:
            cursor.execute("INSERT INTO training_snapshotcheck (snapshot_id) VALUES (1)")


@pytest.mark.postgres
@pytest.mark.django_db(databases=["default", "owner"])
def test_ensure_trainer_role_is_idempotent_and_leaves_no_privilege_on_evalsets():
    for _ in range(2):
        out = StringIO()
        call_command("ensure_trainer_role", stdout=out)
        assert "nothing on any evalsets table" in out.getvalue()
    with connections["default"].cursor() as cursor:
        for table in EVALSETS_TABLES:
            cursor.execute(
                "SELECT has_table_privilege(%s, %s, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')",
                [settings.TRAINER_ROLE, table],
            )
            assert cursor.fetchone()[0] is False
        cursor.execute("SELECT has_table_privilege(%s, 'training_snapshotrecord', 'SELECT')", [settings.TRAINER_ROLE])
        assert cursor.fetchone()[0] is True


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_ensure_trainer_role_creates_a_missing_role_through_an_admin_login():
    import psycopg

    role = f"goldset_trainer_t{uuid.uuid4().hex[:8]}"
    admin_url = superuser_url()
    try:
        with override_settings(TRAINER_ROLE=role):
            call_command("ensure_trainer_role", "--password", "s3cret", "--admin-url", admin_url, stdout=StringIO())
        parts = urlsplit(admin_url)
        as_role = urlunsplit((parts.scheme, f"{role}:s3cret@{parts.hostname}:{parts.port or 5432}", parts.path, "", ""))
        with psycopg.connect(as_role) as conn:
            assert conn.execute("SELECT count(*) FROM training_trainingsnapshot").fetchone()[0] == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                conn.execute("SELECT * FROM evalsets_evalrecord")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.postgres
@pytest.mark.django_db
def test_ensure_trainer_role_refuses_to_make_the_app_role_the_trainer():
    from django.core.management.base import CommandError

    with override_settings(TRAINER_ROLE=connections["default"].settings_dict["USER"]):
        with pytest.raises(CommandError, match="is the app role itself"):
            call_command("ensure_trainer_role", stdout=StringIO())


@pytest.mark.postgres
@pytest.mark.django_db
def test_ensure_trainer_role_without_createrole_says_how_to_create_the_role():
    from django.core.management.base import CommandError

    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone()[0] is False, "the app role must not be able to create roles"
    with override_settings(TRAINER_ROLE=f"goldset_missing_{uuid.uuid4().hex[:8]}"):
        with pytest.raises(CommandError, match="Pass --admin-url with a login that has CREATEROLE"):
            call_command("ensure_trainer_role", stdout=StringIO())


@pytest.mark.django_db(databases=["default", "owner"] if ON_POSTGRES else ["default"])
def test_ensure_trainer_role_reports_what_it_did_on_either_database():
    out = StringIO()
    call_command("ensure_trainer_role", stdout=out)
    if connections["default"].vendor == "sqlite":
        assert "SQLite: it has no roles" in out.getvalue()
    else:
        assert "nothing on any evalsets table" in out.getvalue()


# --- the router and the managers -----------------------------------------------------------------


@pytest.mark.django_db
def test_an_explicit_training_alias_on_an_evalsets_model_is_refused():
    with pytest.raises(EvalWallError, match="The eval wall: evalsets.EvalRecord cannot be queried through"):
        list(EvalRecord.objects.using("training").all())
    with pytest.raises(EvalWallError, match="The eval wall"):
        EvalSetVersion.objects.db_manager("training").count()
    with pytest.raises(EvalWallError, match="The eval wall"):
        EvalRecord.objects.using("training").filter(pk=1).delete()


@pytest.mark.django_db
def test_saving_an_evalsets_object_through_the_training_alias_is_refused(project, admin_user):
    from django.utils import timezone

    version = EvalSetVersion(
        project=project,
        number=1,
        sha256="0" * 64,
        record_count=1,
        changelog="x",
        frozen_by=admin_user,
        frozen_at=timezone.now(),
    )
    with pytest.raises(EvalWallError, match="cannot be written through the 'training' alias"):
        version.save(using="training")
    assert not EvalSetVersion.objects.exists()


def test_a_process_running_as_the_trainer_cannot_route_evalsets_models_at_all():
    with override_settings(GOLDSET_DB_ALIAS="training"):
        with pytest.raises(EvalWallError, match="not available in a process that runs as the trainer"):
            router.db_for_read(EvalRecord)
        with pytest.raises(EvalWallError):
            router.db_for_write(EvalSetVersion)
        with pytest.raises(EvalWallError):
            EvalRecord.objects.count()
        assert router.db_for_read(TrainingSnapshot) == "training"
        assert router.db_for_write(TrainingSnapshot) == "training"


def test_the_web_process_routes_everything_to_the_default_alias():
    assert router.db_for_read(EvalRecord) == "default"
    assert router.db_for_read(TrainingSnapshot) == "default"
    assert router.db_for_write(EvalSetVersion) == "default"


def test_the_trainer_alias_never_migrates():
    r = EvalWallRouter()
    assert r.allow_migrate("owner", "evalsets") is True
    assert r.allow_migrate("default", "evalsets") is True  # SQLite; on PostgreSQL only the owner login may
    assert r.allow_migrate("training", "training") is False
    assert r.allow_migrate("training", "evalsets") is False


# --- the import contract -------------------------------------------------------------------------


def _lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contract_forbids_training_from_importing_evalsets_and_is_kept():
    config = (ROOT / "pyproject.toml").read_text()
    assert 'source_modules = ["training"]' in config and 'forbidden_modules = ["evalsets"]' in config
    assert "lint-imports" in (ROOT / ".ci" / "run").read_text()
    run = _lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "KEPT" in run.stdout


def test_the_import_contract_catches_a_training_module_that_imports_evalsets(tmp_path):
    for package, body in {
        "training": "",
        "training/loader.py": "from evalsets import models\n",
        "evalsets": "",
        "evalsets/models.py": "",
        # judging reads eval sets, so training may not import it either.
        "training/scores.py": "from evalsets.judging import results\n",
        "evalsets/judging": "",
        "evalsets/judging/results.py": "",
    }.items():
        path = tmp_path / package
        if package.endswith(".py"):
            path.write_text(body)
        else:
            path.mkdir()
            (path / "__init__.py").write_text("")
    contract = (ROOT / "pyproject.toml").read_text().split("[tool.importlinter]", 1)[1]
    (tmp_path / "setup.cfg").write_text("")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.importlinter]\n" + contract.replace('"annotate", ', "").replace(', "config"', "")
    )
    run = _lint_imports(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "training.loader -> evalsets.models" in run.stdout
    assert "training.scores -> evalsets.judging.results" in run.stdout
    assert textwrap.dedent("BROKEN") in run.stdout
