"""Two gpu workers on one queue with several jobs queued: every job is run by exactly one worker, and when
one worker is killed mid-job the other drains the rest of the queue (one message reserved per worker: a
killed worker strands only the job it was running, which the heartbeat check then fails)."""

import os
import signal
import time

import pytest

from tests.training.conftest import FAST
from tests.training.worker import queue_on_worker, start_worker, stop_worker, wait_for
from training.models import JobProgress, TrainingJob

pytestmark = [pytest.mark.postgres, pytest.mark.training, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOBS = 4


def test_two_workers_run_each_job_once_and_one_left_alone_drains_the_queue(
    django_db_setup, trainable_snapshot, tiny_model, admin_user, tmp_path
):
    from training.tasks import training_jobs_fail_stale

    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(tmp_path, logs[0]), start_worker(tmp_path, logs[1])]
    try:
        config = {**FAST, "max_steps": 12, "logging_steps": 1, "save_steps": 100}
        ids = [
            queue_on_worker(trainable_snapshot, tiny_model, admin_user, log_path=logs[0], config=config).pk
            for _ in range(JOBS)
        ]
        # Both workers busy, each with its own job.
        running = wait_for(
            lambda: (
                len(
                    r := set(
                        TrainingJob.objects.filter(pk__in=ids, status="running", step__gte=1).values_list(
                            "pk", flat=True
                        )
                    )
                )
                == 2
                and r
            ),
            timeout=300,
            what="two jobs to run at once",
            log_path=logs[0],
        )
        # Kill one worker mid-job; which job it held shows by which one stops.
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
        wait_for(
            lambda: TrainingJob.objects.filter(pk__in=ids, status="succeeded").count() == JOBS - 1,
            timeout=600,
            what="the other worker to drain the queue",
            log_path=logs[1],
        )
        stranded = list(TrainingJob.objects.filter(pk__in=ids).exclude(status="succeeded").values_list("pk", "status"))
        assert len(stranded) == 1 and stranded[0][0] in running and stranded[0][1] == "running", stranded
        victim_job = stranded[0][0]
        time.sleep(4)
        assert training_jobs_fail_stale(stale_after_s=3) == [victim_job]
    finally:
        for proc in workers:
            stop_worker(proc)
    states = dict(TrainingJob.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert states == {pk: ("failed" if pk == victim_job else "succeeded") for pk in ids}
    # Exactly once: each job logged each step once, and each finished job was claimed once.
    for pk in ids:
        steps = list(JobProgress.objects.filter(job_id=pk).values_list("phase", "step"))
        assert steps and len(steps) == len(set(steps)), f"job {pk} ran a step twice: {steps}"
        if pk != victim_job:
            assert TrainingJob.objects.get(pk=pk).log_tail.count(f"job {pk} claimed by") == 1
