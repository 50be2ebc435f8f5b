"""Celery tasks: the only bridge between the database and the Django-free trainer.

``training_job_run`` runs on the gpu queue (one worker process per GPU, ``--concurrency 1``) and talks
to the database only through ``training_db()``, which is the trainer role on the gpu worker.
``training_jobs_fail_stale`` runs periodically (Celery beat) on the default queue.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import traceback
from collections import deque
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.db import connections

from training.db import training_db

log = logging.getLogger(__name__)


class DbSink:
    """Progress sink that writes to the job row and the progress table, throttled, through the services
    that check the job's secret (the trainer role cannot write either table itself)."""

    def __init__(self, job_id: int, secret: str, using: str, log_path: Path):
        from training import services

        self.services = services
        self.job_id = job_id
        self.secret = secret
        self.using = using
        self.lines: deque[str] = deque(maxlen=services.LOG_TAIL_LINES)
        self.log_path = log_path
        self._last_beat = 0.0
        self._last_stop_check = 0.0
        self._stop = False
        self._dirty_log = False

    def _job(self):
        from training.models import TrainingJob

        return TrainingJob.objects.using(self.using).filter(pk=self.job_id)

    def progress(self, row: dict) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) and k != "loss" else v) for k, v in row.items()
        }
        self.services.training_job_progress_add(job_id=self.job_id, secret=self.secret, row=clean, using=self.using)
        self.services.training_job_heartbeat(
            job_id=self.job_id,
            secret=self.secret,
            using=self.using,
            phase=row["phase"],
            step=row["step"],
            total_steps=row["total_steps"],
            epoch=row["epoch"],
            loss=row["loss"] if row["loss"] is None or math.isfinite(row["loss"]) else None,
            log_tail="\n".join(self.lines),
        )
        self._last_beat = time.monotonic()
        self._dirty_log = False

    def should_stop(self) -> bool:
        # One cheap query per second at most; a step of a real model takes longer than that anyway.
        now = time.monotonic()
        if not self._stop and now - self._last_stop_check >= settings.TRAINING_CANCEL_POLL_S:
            self._last_stop_check = now
            self._stop = self._job().filter(cancel_requested=True).exists()
        return self._stop

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= settings.TRAINING_HEARTBEAT_S / 3:
            self._last_beat = now
            extra = {"log_tail": "\n".join(self.lines)} if self._dirty_log else {}
            self.services.training_job_heartbeat(job_id=self.job_id, secret=self.secret, using=self.using, **extra)
            self._dirty_log = False

    def log(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        self.lines.append(stamped)
        self._dirty_log = True
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(stamped + "\n")

    def checkpoint(self, path: str) -> None:
        self.services.training_job_heartbeat(
            job_id=self.job_id, secret=self.secret, using=self.using, last_checkpoint=path
        )


def _heartbeat_thread(job_id: int, secret: str, using: str, stop: threading.Event) -> None:
    """Beats while the main thread loads a model or saves, when no step callback runs for a while."""
    from training import services

    try:
        while not stop.wait(settings.TRAINING_HEARTBEAT_S / 3):
            services.training_job_heartbeat(job_id=job_id, secret=secret, using=using)
    except Exception:  # noqa: BLE001 — a failed beat must not kill training; the stale check will notice
        log.exception("heartbeat of job %s failed", job_id)
    finally:
        connections.close_all()


def _db_role(using: str) -> str:
    connection = connections[using]
    if connection.vendor != "postgresql":
        return connection.vendor
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        return cursor.fetchone()[0]


@shared_task(acks_late=True)
def training_job_run(job_id: int, secret: str) -> str:
    """Claim a queued job, train it and record how it ended (``secret``: the job's, from its message)."""
    from training import services
    from training.models import TrainingJob, TrainingSnapshot

    using = training_db()
    worker = f"{socket.gethostname()}"
    if not services.training_job_claim(job_id=job_id, secret=secret, worker=worker, using=using):
        return "not claimed"
    job = TrainingJob.objects.using(using).get(pk=job_id)
    output_dir = Path(settings.ARTIFACTS_DIR) / f"job-{job_id}"
    output_dir.mkdir(parents=True, exist_ok=True)
    sink = DbSink(job_id, secret, using, output_dir / "train.log")
    sink.log(f"job {job_id} claimed by {worker}; database role: {_db_role(using)}")
    services.training_job_heartbeat(job_id=job_id, secret=secret, using=using, output_dir=str(output_dir))

    stop = threading.Event()
    beat = None
    if settings.TRAINING_HEARTBEAT_THREAD:
        beat = threading.Thread(target=_heartbeat_thread, args=(job_id, secret, using, stop), daemon=True)
        beat.start()
    try:
        # Defence in depth: the web side refuses to queue an untrainable snapshot, the worker refuses to train it.
        snapshot = TrainingSnapshot.objects.using(using).get(pk=job.snapshot_id)
        if not services.snapshot_is_trainable(snapshot, using=using):
            raise _Refused(services.snapshot_untrainable_reason(snapshot, using=using))
        check = services.snapshot_latest_check(snapshot, using=using)
        records = services.snapshot_records_as_dicts(snapshot.pk, using=using)
        provenance = {
            "job_id": job_id,
            "retry_of": job.retry_of_id,
            "resumed_from": job.resume_from or None,
            "snapshot": {
                "id": snapshot.pk,
                "name": snapshot.name,
                "sha256": snapshot.sha256,
                "sft_count": snapshot.sft_count,
                "dpo_count": snapshot.dpo_count,
                "sources": snapshot.sources,
                "filters": snapshot.filters,
            },
            "contamination_check": {
                "id": check.pk,
                "passed": check.passed,
                "threshold": check.threshold,
                "checked_at": check.checked_at.isoformat(),
            },
            "evalset_versions_checked": check.evalset_versions,
        }
        result = _train(job, records=records, output_dir=output_dir, sink=sink, provenance=provenance)
    except Exception as exc:  # noqa: BLE001 — every failure must reach the job page
        from training.runner import TrainingError

        if isinstance(exc, TrainingError | _Refused):
            reason = str(exc)
        else:
            reason = f"{exc.__class__.__name__}: {exc}"
            for line in traceback.format_exc().splitlines()[-12:]:
                sink.log(line)
        sink.log(f"failed: {reason}")
        services.training_job_finish(
            job_id=job_id,
            secret=secret,
            status=TrainingJob.Status.FAILED,
            using=using,
            error=reason[:5000],
            log_tail="\n".join(sink.lines),
        )
        return "failed"
    finally:
        stop.set()
        if beat is not None:
            beat.join(timeout=5)
    status = TrainingJob.Status.CANCELLED if result["status"] == "cancelled" else TrainingJob.Status.SUCCEEDED
    sink.log(f"{status}: artifacts in {output_dir}")
    services.training_job_finish(
        job_id=job_id,
        secret=secret,
        status=status,
        using=using,
        manifest=result["manifest"],
        last_checkpoint=result["last_checkpoint"],
        log_tail="\n".join(sink.lines),
    )
    return status


class _Refused(Exception):
    pass


def gpus_per_job() -> int:
    """GPUs one job trains on: GOLDSET_TRAINING_GPUS, or every GPU this worker sees ("auto")."""
    wanted = settings.TRAINING_GPUS
    if wanted != "auto":
        return int(wanted)
    import torch

    return max(1, torch.cuda.device_count())


def _train(job, *, records: list[dict], output_dir: Path, sink: DbSink, provenance: dict) -> dict:
    """Train in this process on one device, or through accelerate launch (DDP) on several GPUs."""
    import json

    from training.config import TrainingConfig

    gpus = gpus_per_job()
    launcher = settings.TRAINING_LAUNCHER
    if launcher == "accelerate" or (launcher == "auto" and gpus > 1):
        from training import launch

        records_path = output_dir / "records.json"
        records_path.write_text(json.dumps(records))
        sink.log(f"launching {gpus} process(es) with accelerate launch (DDP)")
        spec = {
            "base_model": job.base_model,
            "config": job.config,
            "records": str(records_path),
            "output_dir": str(output_dir),
            "resume_from": job.resume_from or None,
            "provenance": provenance,
        }
        import torch

        return launch.run_distributed(
            spec=spec, workdir=output_dir / "launch", num_processes=gpus, sink=sink, cpu=not torch.cuda.is_available()
        )
    from training import runner

    result = runner.run(
        base_model=job.base_model,
        config=TrainingConfig.from_dict(job.config),
        records=records,
        output_dir=output_dir,
        sink=sink,
        resume_from=Path(job.resume_from) if job.resume_from else None,
        provenance=provenance,
    )
    return {"status": result.status, "manifest": result.manifest, "last_checkpoint": result.last_checkpoint}


@shared_task
def training_jobs_fail_stale(stale_after_s: float | None = None) -> list[int]:
    """Periodic: fail running jobs whose worker has not sent a heartbeat for a while."""
    from training import services

    limit = stale_after_s if stale_after_s is not None else settings.TRAINING_STALE_AFTER_S
    return services.training_jobs_fail_stale(stale_after_s=limit)
