"""A backup is a pg_dump; restoring it (pg_restore into a fresh database) gives back the same eval sets and
snapshots, byte for byte by their hashes, with the write-once triggers enabled and every role's grants as
they were. The README's "Backups" section runs exactly these commands."""

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connections

from annotate.models import ItemResult
from tests.factories import annotate, gold, make_item

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True, databases=["default", "owner"])]

ROOT = Path(__file__).resolve().parent.parent


def _url(alias: str, dbname: str) -> str:
    sd = connections[alias].settings_dict
    host, port = sd["HOST"] or "127.0.0.1", sd["PORT"] or 5432
    return f"postgresql://{sd['USER']}:{sd['PASSWORD']}@{host}:{port}/{dbname}"


def _grants(url: str) -> set[tuple]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = ANY(%s) AND table_schema = current_schema()",
            [[settings.APP_ROLE, settings.TRAINER_ROLE, "PUBLIC"]],
        ).fetchall()
    return set(rows)


def _write_once_triggers(url: str) -> set[tuple]:
    with psycopg.connect(url) as conn:
        return set(
            conn.execute(
                "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE t.tgname LIKE '%%write_once%%'"
            ).fetchall()
        )


def _hashes(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        versions = conn.execute("SELECT 'v' || id, sha256 FROM evalsets_evalsetversion").fetchall()
        snapshots = conn.execute("SELECT 's' || id, sha256 FROM training_trainingsnapshot").fetchall()
    return dict(versions + snapshots)


@pytest.fixture
def frozen(project, admin_user, alice, bob):
    from evalsets.services import evalset_freeze
    from training.services import snapshot_create

    for i in range(3):
        item = make_item(project, "gold", prompt=f"Eval prompt {i}", split="eval")
        answer = gold("write", f"Eval answer {i}.")
        for user in (alice, bob):
            annotate(item, user, answer)
        ItemResult.objects.create(
            item=item, kind="gold", status="consensus", payload=answer, agreement=1.0, reviewer_ids=[alice.pk, bob.pk]
        )
        train = make_item(project, "gold", prompt=f"Train prompt {i}")
        ItemResult.objects.create(item=train, kind="gold", status="consensus", payload=gold("write", f"Train {i}."))
    version = evalset_freeze(project=project, user=admin_user, changelog="first").version
    snapshot = snapshot_create(name="support v1", projects=[project], created_by=admin_user, audit=False)
    return version, snapshot


def _manage(dbname: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "GOLDSET_DB_NAME": dbname}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_dump_restores_into_a_fresh_database_with_hashes_triggers_and_grants_intact(frozen, tmp_path):
    version, snapshot = frozen
    source_db = connections["default"].settings_dict["NAME"]
    restored_db = f"{source_db}_restored"
    source = _url("owner", source_db)
    dump = tmp_path / "goldset.dump"

    # The README's commands: dump as the owner role, make an empty database it owns, restore into it.
    subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", f"--dbname={source}"], check=True, timeout=300)
    with psycopg.connect(_url("owner", "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{restored_db}"')
        conn.execute(f'CREATE DATABASE "{restored_db}"')
    restored = _url("owner", restored_db)
    try:
        subprocess.run(
            ["pg_restore", "--exit-on-error", "--single-transaction", f"--dbname={restored}", str(dump)],
            check=True,
            timeout=300,
        )
        # Hashes, triggers (ENABLE ALWAYS: 'A') and table grants are what they were, before any repair.
        assert (
            _hashes(restored)
            == _hashes(source)
            == {f"v{version.pk}": version.sha256, f"s{snapshot.pk}": snapshot.sha256}
        )
        triggers = _write_once_triggers(restored)
        assert triggers == _write_once_triggers(source)
        assert {t[0] for t in triggers} >= {"evalsets_evalrecord", "training_snapshotrecord", "annotate_adminaction"}
        assert {t[2] for t in triggers} == {"A"}
        assert _grants(restored) == _grants(source)

        # The database-level grants (CONNECT, TEMPORARY) are not in a dump: ensure_db_roles puts them back,
        # and then the role audit finds nothing wrong.
        result = _manage(restored_db, "ensure_db_roles")
        assert result.returncode == 0, result.stdout + result.stderr

        # The hashes recompute from the restored rows (the app's own verification, as the app role).
        result = _manage(restored_db, "verify_evalsets", "--dry-run")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "All 2 verified." in result.stdout

        # And the wall still stands there: the trainer reads no eval table, the app rewrites no frozen row.
        with psycopg.connect(_url("training", restored_db)) as trainer:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                trainer.execute("SELECT prompt FROM evalsets_evalrecord")
        with psycopg.connect(_url("default", restored_db)) as app:
            with pytest.raises(psycopg.Error, match="write-once|permission denied"):
                app.execute("UPDATE evalsets_evalrecord SET reference = 'changed'")
    finally:
        with psycopg.connect(_url("owner", "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{restored_db}" WITH (FORCE)')
