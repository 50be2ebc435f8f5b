"""Generation runs end to end through a real Celery gpu worker process logged in as the trainer role
(PostgreSQL + Redis), and what that role can and cannot touch."""

import pytest
from django.db import connections, transaction
from django.db.utils import ProgrammingError

from evalsets.judging.models import GenerationRun
from evalsets.judging.services import runs
from tests.judging.conftest import start_run
from tests.training.worker import start_worker, stop_worker, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.training, pytest.mark.django_db(transaction=True, databases="__all__")]


@pytest.fixture
def worker(settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    log_path = tmp_path / "worker.log"
    proc = start_worker(settings.ARTIFACTS_DIR, log_path)
    yield {"proc": proc, "log": log_path}
    stop_worker(proc)


def finished(run_id: int, log_path):
    return wait_for(
        lambda: (r := GenerationRun.objects.get(pk=run_id)).is_finished and r,
        timeout=240,
        what=f"generation run {run_id}",
        log_path=log_path,
    )


def test_base_and_adapter_runs_go_through_the_gpu_worker_as_the_trainer_role(
    worker, eval_version, tiny_model, adapter_job, admin_user
):
    with transaction.atomic():
        base = start_run(eval_version, admin_user, base_model=tiny_model, label="base")
        tuned = start_run(eval_version, admin_user, job=adapter_job, label="support v1")
    for run in (base, tuned):
        done = finished(run.pk, worker["log"])
        assert done.status == "succeeded", done.message + "\n" + done.log_tail
        assert "database role: goldset_trainer" in done.log_tail
        assert "responses/s" in done.log_tail
        assert done.outputs.count() == done.prompt_count == 6
        assert set(done.outputs.values_list("record_id", flat=True)) == set(
            eval_version.records.values_list("id", flat=True)
        )
        assert not runs.prompts_path(run.pk).exists()
    assert GenerationRun.objects.get(pk=tuned.pk).model_identity["adapter_manifest_sha256"]


def test_the_trainer_role_reads_a_run_but_no_output_and_writes_nothing_without_the_secret(
    eval_version, tiny_model, admin_user, settings, tmp_path
):
    from django.core.exceptions import PermissionDenied

    settings.ARTIFACTS_DIR = tmp_path
    run = start_run(eval_version, admin_user, base_model=tiny_model)
    trainer = connections["training"]
    with trainer.cursor() as cursor:
        cursor.execute("SELECT label FROM judging_generationrun WHERE id = %s", [run.pk])
        assert cursor.fetchone()[0] == "base"
    for table in ("judging_generationoutput", "judging_generationsecret", "judging_comparisonitem"):
        with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic(using="training"):
            with trainer.cursor() as cursor:
                cursor.execute(f"SELECT * FROM {table}")
    with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic(using="training"):
        with trainer.cursor() as cursor:
            cursor.execute("UPDATE judging_generationrun SET status = 'succeeded' WHERE id = %s", [run.pk])
    with pytest.raises(PermissionDenied, match="secret does not match"):
        runs.generation_run_claim(run_id=run.pk, secret="guess", worker="w", using="training")
    assert runs.generation_run_claim(run_id=run.pk, secret=run.worker_secret, worker="w", using="training")
    with pytest.raises(PermissionDenied, match="may not write status"):
        runs.generation_run_update(run_id=run.pk, secret=run.worker_secret, using="training", status="succeeded")
    row = {"position": 0, "record_id": None, "check_key": "", "text": "hello", "new_tokens": 1, "finish_reason": "eos"}
    with pytest.raises(PermissionDenied, match="an output has no field model_generated"):
        runs.generation_outputs_add(
            run_id=run.pk, secret=run.worker_secret, rows=[{**row, "model_generated": False}], using="training"
        )
    assert runs.generation_outputs_add(run_id=run.pk, secret=run.worker_secret, rows=[row], using="training")
    assert runs.generation_run_finish(
        run_id=run.pk, secret=run.worker_secret, status="succeeded", using="training", responses_per_second=1.0
    )
    run.refresh_from_db()
    assert run.status == "succeeded" and run.output_count == 1 and run.progress == 1.0


def test_the_roles_audit_knows_the_run_functions():
    from config.dbroles import audit_roles, worker_function_signatures

    assert {"goldset_generation_claim", "goldset_generation_outputs_add"} <= set(worker_function_signatures())
    assert audit_roles(connections["owner"]) == []
