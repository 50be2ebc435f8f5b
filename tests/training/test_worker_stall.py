"""A job whose steps stop while its worker lives on is failed as stalled, not as a lost worker."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.training.conftest import FAST
from tests.training.worker import kill_worker, queue_on_worker, start_worker, wait_for
from training.models import TrainingJob

pytestmark = [pytest.mark.postgres, pytest.mark.training, pytest.mark.django_db(transaction=True)]


def test_a_job_whose_data_collator_blocks_is_failed_as_stalled_while_its_worker_still_beats(
    django_db_setup, trainable_snapshot, tiny_model, admin_user, tmp_path
):
    from training.tasks import training_jobs_fail_stale

    log_path = tmp_path / "worker.log"
    proc = start_worker(
        tmp_path,
        log_path,
        app="tests.training.stall_app",
        env={"GOLDSET_TEST_BLOCK_AFTER_BATCHES": "4", "GOLDSET_TRAINING_STALL_FLOOR_S": "2"},
    )
    try:
        job = queue_on_worker(
            trainable_snapshot,
            tiny_model,
            admin_user,
            log_path=log_path,
            config={**FAST, "max_steps": 50, "logging_steps": 1, "save_steps": 2},
        )
        # The data loader reads a batch ahead, so the fourth batch is the third step's successor.
        moving = wait_for(
            lambda: (j := TrainingJob.objects.get(pk=job.pk)).step >= 2 and j.step_advanced_at and j,
            timeout=240,
            what="two steps of training",
            log_path=log_path,
        )
        # The collator now blocks: the step clock stops while the heartbeat goes on.
        limit = moving.stall_after_s
        assert 2 <= limit < 60
        # Against the row's own limit: each finished step may have moved it (10x the median step).
        stuck = wait_for(
            lambda: (
                (j := TrainingJob.objects.get(pk=job.pk)).step_advanced_at
                < timezone.now() - timedelta(seconds=j.stall_after_s + 1)
                and j
            ),
            timeout=120,
            what="the step clock to pass its limit",
            log_path=log_path,
        )
        assert 2 <= stuck.step < 50 and stuck.status == "running"
        assert stuck.heartbeat_at > timezone.now() - timedelta(seconds=5)  # the worker is alive
        assert training_jobs_fail_stale(stale_after_s=60) == [job.pk]
        # The worker notices that its job was failed under it and stops beating for it.
        wait_for(lambda: "no longer runs" in log_path.read_text(), timeout=30, what="the worker to notice")
    finally:
        kill_worker(proc)
    job.refresh_from_db()
    assert job.status == "failed" and job.error.startswith("Stalled: no training step finished for")
    assert f"SFT step {stuck.step} of 50" in job.error and "Lost the worker" not in job.error
    assert "Restart the gpu worker, then resume it from its last checkpoint" in job.error
    assert job.last_checkpoint.endswith(f"checkpoint-{stuck.step - stuck.step % 2}")  # saved every 2 steps
