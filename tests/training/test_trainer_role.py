"""The trainer role may do exactly what the gpu worker needs on the training tables, nothing else."""

import pytest
from django.db import DatabaseError, connections, transaction

from config.dbroles import TRAINER_GRANTS
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "training"])


def test_the_grant_list_names_only_training_tables():
    assert all(table.startswith("training_") for table in TRAINER_GRANTS)
    assert TRAINER_GRANTS["training_trainingjob"] == "SELECT, UPDATE"
    assert TRAINER_GRANTS["training_jobprogress"] == "SELECT, INSERT"


def _as_trainer(sql: str, params=None):
    with transaction.atomic(using="training"), connections["training"].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


@pytest.mark.postgres
def test_the_trainer_role_updates_its_job_and_appends_progress(trainable_snapshot, admin_user):
    from training import services

    config = services.training_config_parse(method="sft", config={})
    job = services._job_insert(
        snapshot=trainable_snapshot, base_model="m", config=config, created_by=admin_user, preflight={}
    )
    assert _as_trainer("SELECT current_user") == [("goldset_trainer",)]
    assert services.training_job_claim(job_id=job.pk, worker="w", output_dir="/artifacts/job-1", using="training")
    services.training_job_progress_add(
        job_id=job.pk,
        using="training",
        row={
            "phase": "sft",
            "step": 1,
            "total_steps": 2,
            "epoch": 0.5,
            "loss": 1.0,
            "learning_rate": 1e-4,
            "grad_norm": 1.0,
            "tokens_per_second": 1.0,
            "reward_margin": None,
            "reward_accuracy": None,
        },
    )
    assert TrainingJob.objects.get(pk=job.pk).status == "running"
    assert _as_trainer("SELECT count(*) FROM training_snapshotrecord") == [(8,)]


@pytest.mark.postgres
def test_the_trainer_role_runs_a_preflight_through_its_services(trainable_snapshot, admin_user):
    from training import services
    from training.models import TrainingPreflight

    preflight = services.training_preflight_request(
        snapshot=trainable_snapshot, base_model="m", method="sft", config={}, created_by=admin_user
    )
    assert services.training_preflight_claim(preflight_id=preflight.pk, worker="w", using="training")
    assert services.training_preflight_progress(preflight_id=preflight.pk, progress=0.5, message="s", using="training")
    assert services.training_preflight_finish(preflight_id=preflight.pk, result={"ok": True}, using="training")
    assert TrainingPreflight.objects.get(pk=preflight.pk).status == "succeeded"
    for sql in (
        "DELETE FROM training_trainingpreflight",
        "INSERT INTO training_trainingpreflight (base_model) VALUES ('x')",
    ):
        with pytest.raises(DatabaseError, match="permission denied"):
            _as_trainer(sql)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM annotate_item",
        "SELECT * FROM annotate_itemresult",
        "SELECT * FROM auth_user",
        "DELETE FROM training_jobprogress",
        "INSERT INTO training_trainingjob (base_model) VALUES ('x')",
        "UPDATE training_jobprogress SET loss = 0",
        "INSERT INTO training_snapshotcheck (snapshot_id, passed, threshold, evalset_versions, report, checked_at) "
        "VALUES (1, true, 0, '[]', '{}', now())",
    ],
)
def test_the_trainer_role_is_refused_everything_else(sql):
    with pytest.raises(DatabaseError, match="permission denied"):
        _as_trainer(sql)


@pytest.mark.postgres
def test_the_trainer_role_cannot_read_any_evalsets_table():
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'evalsets_%%'")
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = 'goldset_trainer' "
            "AND table_name LIKE 'evalsets_%%'"
        )
        assert cursor.fetchone()[0] == 0
    for table in tables:
        with pytest.raises(DatabaseError, match="permission denied"):
            _as_trainer(f'SELECT 1 FROM "{table}" LIMIT 1')
