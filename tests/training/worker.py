"""A real Celery gpu worker in a subprocess, logged in to the test database as the trainer role."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connections

ROOT = Path(__file__).resolve().parents[2]


QUEUES = ("gpu", "preflight")


def purge_queues(queues=QUEUES) -> None:
    """Drop messages a previous run left behind, so they cannot start this run's jobs."""
    from config.celery import app

    with app.connection_for_write() as conn:
        for queue in queues:
            # The queue may not exist yet.
            with contextlib.suppress(Exception):
                conn.default_channel.queue_purge(queue)


def start_worker(
    artifacts: Path, log_path: Path, *, app: str = "config", env: dict | None = None, queues=QUEUES
) -> subprocess.Popen:
    """A gpu and preflight worker (one process, as on a small GPU box), logged in as the trainer role; with
    ``queues=("default",)`` and ``GOLDSET_DB_ALIAS=default`` in ``env``, the web side's worker instead."""
    env = {
        **os.environ,
        "GOLDSET_DB_NAME": connections["default"].settings_dict["NAME"],
        "GOLDSET_DB_ALIAS": "training",
        "GOLDSET_VAR_DIR": str(settings.VAR_DIR),
        "GOLDSET_ARTIFACTS_DIR": str(artifacts),
        "GOLDSET_TRAINING_HEARTBEAT_S": "3",
        "GOLDSET_TRAINING_CANCEL_POLL_S": "0.2",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    purge_queues(queues)
    log = log_path.open("w")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            ",".join(queues),
            "--pool=solo",
            "--concurrency=1",
            "-l",
            "info",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_worker(proc: subprocess.Popen) -> None:
    """For a worker that cannot stop cleanly (its training thread hangs)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def queue_on_worker(snapshot, base_model, admin, *, log_path: Path, method: str = "sft", config: dict):
    """Request the preflight, let the worker run it, then queue the job it passed."""
    from training import services
    from training.models import TrainingPreflight

    preflight = services.training_preflight_request(
        snapshot=snapshot, base_model=base_model, method=method, config=config, created_by=admin
    )
    done = wait_for(
        lambda: (p := TrainingPreflight.objects.get(pk=preflight.pk)).is_finished and p,
        timeout=180,
        what=f"preflight {preflight.pk} on the worker",
        log_path=log_path,
    )
    assert done.status == "succeeded", done.message
    return services.training_job_create(preflight=done, created_by=admin)


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate, *, timeout: float, what: str, log_path: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}.\nWorker log tail:\n{tail}")
