"""SFT and DPO jobs through a real Celery worker process, logged in as the trainer role (PostgreSQL + broker)."""

from pathlib import Path

import pytest

from tests.training.conftest import FAST
from tests.training.worker import queue_on_worker, start_worker, stop_worker, wait_for
from training import services
from training.models import TrainingJob

pytestmark = [pytest.mark.postgres, pytest.mark.training, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("worker-artifacts")
    log_path = artifacts / "worker.log"
    proc = start_worker(artifacts, log_path)
    yield {"proc": proc, "log": log_path, "artifacts": artifacts}
    stop_worker(proc)


def job_state(job_id):
    return TrainingJob.objects.get(pk=job_id)


def test_sft_and_dpo_jobs_run_end_to_end_on_the_worker_as_the_trainer_role(
    worker, trainable_snapshot, tiny_model, admin_user
):
    # The preflights run on the worker too, as the trainer role: the web side never loads the model.
    sft, dpo = (
        queue_on_worker(trainable_snapshot, tiny_model, admin_user, log_path=worker["log"], method=m, config=FAST)
        for m in ("sft", "dpo")
    )
    assert sft.preflight["ok"] and sft.preflight["stats"]["fit"]["sft"]["kept"] == 8
    for job in (sft, dpo):
        done = wait_for(
            lambda job=job: job_state(job.pk).is_finished and job_state(job.pk),
            timeout=240,
            what=f"job {job.pk} to finish",
            log_path=worker["log"],
        )
        assert done.status == "succeeded", done.error + "\n" + done.log_tail
        assert "database role: goldset_trainer" in done.log_tail
        assert done.progress.count() == 3 and all(p.loss is not None for p in done.progress.all())
        assert (Path(done.output_dir) / "adapter" / "manifest.json").is_file()
        assert done.manifest["snapshot"]["sha256"] == trainable_snapshot.sha256
    assert job_state(dpo.pk).progress.filter(reward_margin__isnull=False).count() == 3


def test_cancel_stops_a_running_job_on_the_worker_and_keeps_its_checkpoint(
    worker, trainable_snapshot, tiny_model, admin_user
):
    job = queue_on_worker(
        trainable_snapshot,
        tiny_model,
        admin_user,
        log_path=worker["log"],
        config={**FAST, "max_steps": 5000, "save_steps": 4},
    )
    wait_for(
        lambda: job_state(job.pk).progress.filter(step__gte=6).exists(),
        timeout=240,
        what="six steps of training",
        log_path=worker["log"],
    )
    services.training_job_cancel(job=job_state(job.pk))
    done = wait_for(
        lambda: job_state(job.pk).is_finished and job_state(job.pk),
        timeout=120,
        what="the cancel to land",
        log_path=worker["log"],
    )
    assert done.status == "cancelled", done.error
    assert done.step < 5000
    assert Path(done.last_checkpoint).is_dir() and Path(done.last_checkpoint).parent.name == "sft"
