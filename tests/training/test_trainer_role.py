"""The gpu worker writes only its own job, only the columns a running job writes, and only through the
functions that check the job's secret; the trainer role has no write privilege of its own.

The service tests run on both databases: on PostgreSQL through the trainer role and the SECURITY
DEFINER functions, on SQLite (no roles) through the same rules in Python.
"""

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connections, transaction

from config.dbroles import TRAINER_GRANTS
from tests.conftest import ON_POSTGRES
from training import services
from training.models import JobProgress, TrainingJob

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ROW = {
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
}


@pytest.fixture
def queue(trainable_snapshot, admin_user, monkeypatch):
    """queue() -> a queued job with its worker secret (the Celery message is caught, not sent)."""
    from training.tasks import training_job_run

    sent = []
    monkeypatch.setattr(training_job_run, "apply_async", lambda *a, **kw: sent.append((a, kw)))

    def make():
        config = services.training_config_parse(method="sft", config={})
        job = services._job_insert(
            snapshot=trainable_snapshot, base_model="m", config=config, created_by=admin_user, preflight={}
        )
        assert sent[-1][0][0] == (job.pk, job.worker_secret)  # the secret travels only in the message
        return job

    return make


def _as_trainer(sql: str, params=None):
    with transaction.atomic(using="training"), connections["training"].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def _running(job) -> TrainingJob:
    assert services.training_job_claim(job_id=job.pk, secret=job.worker_secret, worker="gpu-1", using="training")
    return TrainingJob.objects.get(pk=job.pk)


def test_the_grant_list_names_only_training_tables_and_no_write_privilege():
    # Training tables, and the generation run rows (model and decoding settings; never their outputs).
    assert all(table.startswith("training_") for table in TRAINER_GRANTS if table != "judging_generationrun")
    assert set(TRAINER_GRANTS.values()) == {"SELECT"}
    assert not {"training_jobsecret", "judging_generationoutput", "judging_generationsecret"} & set(TRAINER_GRANTS)


def test_the_worker_claims_beats_logs_and_finishes_its_own_job(queue):
    job = queue()
    secret = job.worker_secret
    if ON_POSTGRES:
        assert _as_trainer("SELECT current_user") == [(settings.TRAINER_ROLE,)]
    running = _running(job)
    assert running.status == "running" and running.worker == "gpu-1" and running.heartbeat_at
    assert services.training_job_heartbeat(
        job_id=job.pk, secret=secret, using="training", step=1, total_steps=2, loss=0.25, manifest={"a": [1]}
    )
    assert services.training_job_progress_add(job_id=job.pk, secret=secret, row=ROW, using="training")
    assert not services.training_job_progress_add(job_id=job.pk, secret=secret, row=ROW, using="training")
    if ON_POSTGRES:  # a diverged loss reaches the progress table as NaN, not as an error
        nan = {**ROW, "step": 3, "loss": float("nan")}
        assert services.training_job_progress_add(job_id=job.pk, secret=secret, row=nan, using="training")
        assert JobProgress.objects.get(job=job, step=3).loss != JobProgress.objects.get(job=job, step=3).loss
    assert services.training_job_finish(
        job_id=job.pk, secret=secret, status="succeeded", using="training", last_checkpoint="/a/checkpoint-2"
    )
    job.refresh_from_db()
    assert (job.status, job.step, job.total_steps, job.manifest) == ("succeeded", 1, 2, {"a": [1]})
    assert job.last_checkpoint == "/a/checkpoint-2" and job.finished_at and job.loss == 0.25
    assert list(JobProgress.objects.filter(job=job, step=1).values_list("loss", flat=True)) == [1.0]
    # A finished job takes no more writes, even from its own worker.
    assert not services.training_job_heartbeat(job_id=job.pk, secret=secret, using="training", step=2)
    assert not services.training_job_progress_add(
        job_id=job.pk, secret=secret, row={**ROW, "step": 2}, using="training"
    )


def test_a_worker_cannot_write_another_jobs_row_or_progress_with_its_own_secret(queue):
    mine, theirs = queue(), queue()
    _running(mine)
    _running(theirs)
    with pytest.raises(PermissionDenied, match=f"job {theirs.pk}: the worker secret does not match"):
        services.training_job_heartbeat(job_id=theirs.pk, secret=mine.worker_secret, using="training", step=99)
    with pytest.raises(PermissionDenied, match="the worker secret does not match"):
        services.training_job_progress_add(job_id=theirs.pk, secret=mine.worker_secret, row=ROW, using="training")
    with pytest.raises(PermissionDenied, match="the worker secret does not match"):
        services.training_job_finish(job_id=theirs.pk, secret=mine.worker_secret, status="failed", using="training")
    with pytest.raises(PermissionDenied, match="the worker secret does not match"):
        services.training_job_heartbeat(job_id=theirs.pk, secret="", using="training")
    theirs.refresh_from_db()
    assert theirs.status == "running" and theirs.step == 0
    assert not JobProgress.objects.filter(job=theirs).exists()


def test_a_worker_cannot_claim_a_job_it_was_not_sent(queue):
    mine, theirs = queue(), queue()
    with pytest.raises(PermissionDenied, match="the worker secret does not match"):
        services.training_job_claim(job_id=theirs.pk, secret=mine.worker_secret, worker="thief", using="training")
    assert TrainingJob.objects.get(pk=theirs.pk).status == "queued"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "succeeded"),
        ("base_model", "evil/model"),
        ("config", {"lora_r": 1}),
        ("cancel_requested", False),
        ("snapshot_id", 1),
        ("worker", "someone"),
        ("created_by_id", 1),
        ("error", "x"),
    ],
)
def test_a_worker_writes_only_the_columns_a_running_job_writes(queue, field, value):
    job = queue()
    before = _running(job)
    with pytest.raises(PermissionDenied, match=f"may not write {field}"):
        services.training_job_heartbeat(job_id=job.pk, secret=job.worker_secret, using="training", **{field: value})
    if field not in ("status", "error"):  # the ending's own arguments, checked below
        with pytest.raises(PermissionDenied, match=f"may not write {field}"):
            services.training_job_finish(
                job_id=job.pk, secret=job.worker_secret, status="failed", error="e", using="training", **{field: value}
            )
    after = TrainingJob.objects.get(pk=job.pk)
    assert getattr(after, field) == getattr(before, field) and after.status == "running"


@pytest.mark.parametrize("status", ["queued", "running", "paused", ""])
def test_a_worker_ends_a_job_only_as_succeeded_failed_or_cancelled(queue, status):
    job = queue()
    _running(job)
    with pytest.raises(PermissionDenied, match=f"ends a job as succeeded, failed, cancelled, not as {status}"):
        services.training_job_finish(job_id=job.pk, secret=job.worker_secret, status=status, using="training")
    assert TrainingJob.objects.get(pk=job.pk).status == "running"


def test_a_worker_cannot_call_its_job_cancelled_unless_someone_asked(queue):
    job = queue()
    _running(job)
    assert not services.training_job_finish(
        job_id=job.pk, secret=job.worker_secret, status="cancelled", using="training"
    )
    assert TrainingJob.objects.get(pk=job.pk).status == "running"
    services.training_job_cancel(job=job)
    assert services.training_job_finish(job_id=job.pk, secret=job.worker_secret, status="cancelled", using="training")
    assert TrainingJob.objects.get(pk=job.pk).status == "cancelled"


# --- PostgreSQL: the trainer role itself ----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE training_trainingjob SET step = 5",
        "UPDATE training_trainingjob SET status = 'succeeded'",
        "UPDATE training_trainingjob SET base_model = 'evil'",
        "INSERT INTO training_trainingjob (base_model) VALUES ('x')",
        "DELETE FROM training_trainingjob",
        "INSERT INTO training_jobprogress (job_id, phase, step, total_steps, created_at) "
        "VALUES (1, 'sft', 1, 1, now())",
        "UPDATE training_jobprogress SET loss = 0",
        "DELETE FROM training_jobprogress",
        "SELECT * FROM training_jobprogress",
        "SELECT * FROM training_jobsecret",
        "SELECT secret_sha256 FROM training_jobsecret",
        "UPDATE training_jobsecret SET secret_sha256 = 'x'",
        "SELECT * FROM annotate_item",
        "SELECT * FROM annotate_itemresult",
        "SELECT * FROM auth_user",
        "INSERT INTO training_snapshotcheck (snapshot_id, passed, threshold, evalset_versions, report, checked_at) "
        "VALUES (1, true, 0, '[]', '{}', now())",
        "CREATE TEMP TABLE training_jobsecret (job_id bigint, secret_sha256 text)",
    ],
)
def test_the_trainer_role_is_refused_every_direct_write_and_the_secrets(queue, sql):
    job = queue()
    _running(job)
    with pytest.raises(DatabaseError, match="permission denied"):
        _as_trainer(sql)
    assert TrainingJob.objects.get(pk=job.pk).status == "running"


@pytest.mark.postgres
def test_the_worker_functions_run_as_the_owner_with_a_pinned_search_path_and_only_for_the_two_roles():
    from training import dbfunctions

    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT proname, pg_get_userbyid(proowner), prosecdef, proconfig, "
            "has_function_privilege('public', oid, 'EXECUTE'), has_function_privilege(%s, oid, 'EXECUTE') "
            "FROM pg_proc WHERE proname LIKE 'goldset_job_%%' OR proname LIKE 'goldset_preflight_%%' ORDER BY proname",
            [settings.TRAINER_ROLE],
        )
        rows = cursor.fetchall()
    assert sorted(r[0] for r in rows) == sorted(dbfunctions.SIGNATURES)
    for name, owner, definer, config, public, trainer in rows:
        assert owner == settings.OWNER_ROLE and definer and trainer and not public, name
        assert "search_path=public, pg_temp" in config, name


@pytest.mark.postgres
def test_a_temporary_table_cannot_stand_in_for_the_job_secrets(queue):
    """The app role may create temporary tables; one named like the secrets table, holding a forged hash,
    must not fool the functions (search_path pinned with pg_temp last, names schema-qualified)."""
    job = queue()
    forged = services.job_secret_hash("forged")
    with connections["default"].cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE training_jobsecret (job_id bigint, secret_sha256 text)")
        cursor.execute("INSERT INTO training_jobsecret VALUES (%s, %s)", [job.pk, forged])
        try:
            with pytest.raises(PermissionDenied, match="the worker secret does not match"):
                services.training_job_claim(job_id=job.pk, secret="forged", worker="thief", using="default")
        finally:
            cursor.execute("DROP TABLE pg_temp.training_jobsecret")
    assert TrainingJob.objects.get(pk=job.pk).status == "queued"


@pytest.mark.postgres
def test_a_field_added_to_worker_fields_becomes_writable_after_the_next_migrate(queue, monkeypatch):
    """Adding a worker-written column is one name in TrainingJob.WORKER_FIELDS: the functions are
    regenerated from it by the sync every migrate ends with."""
    from config.dbroles import sync_roles

    job = queue()
    _running(job)
    with pytest.raises(PermissionDenied, match="may not write resume_from"):
        services.training_job_heartbeat(job_id=job.pk, secret=job.worker_secret, using="training", resume_from="/x")
    monkeypatch.setattr(TrainingJob, "WORKER_FIELDS", (*TrainingJob.WORKER_FIELDS, "resume_from"))
    try:
        sync_roles(connections["owner"])
        assert services.training_job_heartbeat(
            job_id=job.pk, secret=job.worker_secret, using="training", resume_from="/x"
        )
        assert TrainingJob.objects.get(pk=job.pk).resume_from == "/x"
    finally:
        monkeypatch.undo()
        sync_roles(connections["owner"])
    with pytest.raises(PermissionDenied, match="may not write resume_from"):
        services.training_job_heartbeat(job_id=job.pk, secret=job.worker_secret, using="training", resume_from="/y")


@pytest.mark.postgres
def test_the_trainer_role_cannot_read_any_evalsets_table():
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'evalsets_%%'")
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT count(*) FROM information_schema.role_table_grants "
            "WHERE grantee = %s AND table_name LIKE 'evalsets_%%'",
            [settings.TRAINER_ROLE],
        )
        assert cursor.fetchone()[0] == 0
    assert {"evalsets_evalrecord", "evalsets_contaminationreport", "evalsets_hashverification"} <= set(tables)
    for table in tables:
        with pytest.raises(DatabaseError, match="permission denied"):
            _as_trainer(f'SELECT 1 FROM "{table}" LIMIT 1')


@pytest.fixture
def preflights(trainable_snapshot, admin_user, monkeypatch):
    """preflights() -> a queued preflight with its worker secret (the Celery message is caught, not sent)."""
    from training.tasks import training_preflight_run

    monkeypatch.setattr(training_preflight_run, "apply_async", lambda *a, **kw: None)

    def make():
        return services.training_preflight_request(
            snapshot=trainable_snapshot, base_model="m", method="sft", config={}, created_by=admin_user
        )

    return make


def test_the_preflight_worker_claims_reports_and_finishes_its_own_preflight(preflights):
    from training.models import TrainingPreflight

    preflight = preflights()
    secret = preflight.worker_secret
    args = {"preflight_id": preflight.pk, "secret": secret, "using": "training"}
    assert services.training_preflight_claim(worker="w", **args)
    assert not services.training_preflight_claim(worker="w", **args)  # once
    assert services.training_preflight_progress(progress=0.5, message="tokenizing", **args)
    assert services.training_preflight_finish(result={"ok": True, "errors": []}, **args)
    row = TrainingPreflight.objects.get(pk=preflight.pk)
    assert (row.status, row.progress, row.result["ok"]) == ("succeeded", 1.0, True)
    assert not services.training_preflight_progress(progress=0.1, message="again", **args)  # finished: no more


def test_a_preflight_worker_cannot_write_another_preflight_with_its_own_secret(preflights):
    from training.models import TrainingPreflight

    mine, theirs = preflights(), preflights()
    for call, extra in (
        (services.training_preflight_claim, {"worker": "thief"}),
        (services.training_preflight_progress, {"progress": 1.0, "message": "x"}),
        (services.training_preflight_finish, {"result": {"ok": True}}),
    ):
        with pytest.raises(PermissionDenied, match=f"preflight {theirs.pk}: the worker secret does not match"):
            call(preflight_id=theirs.pk, secret=mine.worker_secret, using="training", **extra)
    assert TrainingPreflight.objects.get(pk=theirs.pk).status == "queued"


@pytest.mark.postgres
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE training_trainingpreflight SET status = 'succeeded'",
        "UPDATE training_trainingpreflight SET result = '{\"ok\": true}'",
        "DELETE FROM training_trainingpreflight",
        "INSERT INTO training_trainingpreflight (base_model) VALUES ('x')",
        "SELECT * FROM training_preflightsecret",
    ],
)
def test_the_trainer_role_writes_no_preflight_itself(preflights, sql):
    preflights()
    with pytest.raises(DatabaseError, match="permission denied"):
        _as_trainer(sql)
