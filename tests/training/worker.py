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


def purge_gpu_queue() -> None:
    """Drop messages a previous run left behind, so they cannot start this run's jobs."""
    from config.celery import app

    with app.connection_for_write() as conn:
        # The queue may not exist yet.
        with contextlib.suppress(Exception):
            conn.default_channel.queue_purge("gpu")


def start_worker(artifacts: Path, log_path: Path) -> subprocess.Popen:
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
    }
    purge_gpu_queue()
    log = log_path.open("w")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            "gpu",
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
