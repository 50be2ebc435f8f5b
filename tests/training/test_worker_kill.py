"""A worker killed mid-job: the periodic heartbeat check marks its job failed, saying why."""

import os
import signal
import time

import pytest

from tests.training.conftest import FAST
from tests.training.worker import queue_on_worker, start_worker, stop_worker, wait_for
from training.models import TrainingJob

pytestmark = [pytest.mark.postgres, pytest.mark.training, pytest.mark.django_db(transaction=True)]


def test_a_killed_workers_job_is_failed_by_the_stale_heartbeat_check(
    django_db_setup, trainable_snapshot, tiny_model, admin_user, tmp_path
):
    from training.tasks import training_jobs_fail_stale

    log_path = tmp_path / "worker.log"
    proc = start_worker(tmp_path, log_path)
    try:
        job = queue_on_worker(
            trainable_snapshot,
            tiny_model,
            admin_user,
            log_path=log_path,
            config={**FAST, "max_steps": 100000, "save_steps": 5},
        )
        wait_for(
            lambda: TrainingJob.objects.get(pk=job.pk).last_checkpoint,
            timeout=240,
            what="the job to train and save a checkpoint",
            log_path=log_path,
        )
        # Alive: the worker beats every second (GOLDSET_TRAINING_HEARTBEAT_S=3); generous for a busy machine.
        assert training_jobs_fail_stale(stale_after_s=15) == []
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(5)
        assert training_jobs_fail_stale(stale_after_s=4) == [job.pk]
    finally:
        stop_worker(proc)
    job.refresh_from_db()
    assert job.status == "failed"
    assert "Lost the worker's heartbeat" in job.error and "resume it from its last checkpoint" in job.error
    assert job.last_checkpoint
