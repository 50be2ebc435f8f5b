"""Celery tasks: the only bridge between the database and the Django-free trainer.

``training_job_run`` runs on the gpu queue (one worker process per GPU, ``--concurrency 1``);
``training_preflight_run`` on the preflight queue (a worker with the training extra and the base models,
no GPU needed, so a preflight never waits behind a training run). Both talk to the database only through
``training_db()`` (the trainer role on a gpu box) and write only through ``training.services``.
``training_jobs_fail_stale`` runs periodically (Celery beat) on the default queue.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import socket
import statistics
import threading
import time
import traceback
from collections import deque
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.db import connections
from django.utils import timezone

from training.db import training_db
from training.errors import TRAINING_MODULES, TrainingError, missing_extra_message

log = logging.getLogger(__name__)

# A step that takes this many times the median step counts as stalled (unless the job sets stall_after_s).
STALL_FACTOR = 10
STEP_TIMES_KEPT = 200


class DbSink:
    """Progress sink that writes to the job row and the progress table (through the services), throttled.

    Besides progress it keeps the step clock: when the last step finished, and after how long without
    one the job counts as stalled (``stall_after_s`` of the config, or STALL_FACTOR times the median
    step, never below ``GOLDSET_TRAINING_STALL_FLOOR_S``). The periodic check reads both from the row.
    """

    def __init__(self, job_id: int, secret: str, using: str, log_path: Path, *, stall_after_s: float = 0):
        from training import selectors, services

        self.services = services
        self.selectors = selectors
        self.job_id = job_id
        self.secret = secret
        self.using = using
        self.lines: deque[str] = deque(maxlen=services.LOG_TAIL_LINES)
        self.log_path = log_path
        self.configured_stall_s = stall_after_s
        self.abandoned = False  # the job stopped running under this worker (failed as stalled, say)
        self._step_seconds: deque[float] = deque(maxlen=STEP_TIMES_KEPT)
        self._step_fields: dict = {}
        self._last_beat = 0.0
        self._last_stop_check = 0.0
        self._stop = False
        self._dirty_log = False

    def stall_limit(self) -> float:
        if self.configured_stall_s:
            return float(self.configured_stall_s)
        median = statistics.median(self._step_seconds) if self._step_seconds else 0.0
        return max(settings.TRAINING_STALL_FLOOR_S, STALL_FACTOR * median)

    def _beat(self, **fields) -> None:
        if self._dirty_log:
            fields["log_tail"] = "\n".join(self.lines)
        alive = self.services.training_job_heartbeat(job_id=self.job_id, secret=self.secret, using=self.using, **fields)
        self._last_beat = time.monotonic()
        self._dirty_log = False
        if not alive and not self.abandoned:
            self.abandoned = True
            self.log("the job no longer runs (failed or finished elsewhere): stopping at the next step")

    def _flush_steps(self) -> dict:
        fields, self._step_fields = self._step_fields, {}
        return fields

    def progress(self, row: dict) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) and k != "loss" else v) for k, v in row.items()
        }
        self.services.training_job_progress_add(job_id=self.job_id, secret=self.secret, row=clean, using=self.using)
        loss = row["loss"] if row["loss"] is None or math.isfinite(row["loss"]) else None
        self._dirty_log = True
        fields = {
            **self._flush_steps(),
            "phase": row["phase"],
            "step": row["step"],
            "total_steps": row["total_steps"],
            "epoch": row["epoch"],
            "loss": loss,
        }
        self._beat(**fields)

    def should_stop(self) -> bool:
        # One cheap query per second at most; a step of a real model takes longer than that anyway.
        now = time.monotonic()
        if not self._stop and now - self._last_stop_check >= settings.TRAINING_CANCEL_POLL_S:
            self._last_stop_check = now
            self._stop = self.selectors.job_cancel_requested(job_id=self.job_id, using=self.using)
        return self._stop or self.abandoned

    def heartbeat(self) -> None:
        if time.monotonic() - self._last_beat >= settings.TRAINING_HEARTBEAT_S / 3:
            self._beat(**self._flush_steps())

    def advanced(self, *, phase: str, step: int, total_steps: int, seconds: float | None) -> None:
        if seconds is not None:
            self._step_seconds.append(seconds)
        self._step_fields = {
            "phase": phase,
            "step": step,
            "total_steps": total_steps,
            "step_advanced_at": timezone.now(),
            "stall_after_s": self.stall_limit(),
        }
        if seconds is None:  # a phase's loop starts: watch from now on, at once
            self._beat(**self._flush_steps())
        else:
            self.heartbeat()

    def idle(self) -> None:
        # At once: a stale "last step" left on the row would fail a long model load as stalled.
        self._beat(**{**self._flush_steps(), "step_advanced_at": None, "stall_after_s": None})

    def log(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        self.lines.append(stamped)
        self._dirty_log = True
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(stamped + "\n")

    def checkpoint(self, path: str) -> None:
        self._beat(last_checkpoint=path)


def _heartbeat_thread(sink: DbSink, stop: threading.Event) -> None:
    """Beats while the main thread loads a model or saves, when no step callback runs for a while.

    It beats whether training moves or not, which is why the stall check watches the step clock instead.
    """
    from training import services

    try:
        while not stop.wait(settings.TRAINING_HEARTBEAT_S / 3):
            if not services.training_job_heartbeat(job_id=sink.job_id, secret=sink.secret, using=sink.using):
                sink.abandoned = True
                log.warning("job %s no longer runs: its heartbeat thread stops", sink.job_id)
                return
    except Exception:  # noqa: BLE001 — a failed beat must not kill training; the stale check will notice
        log.exception("heartbeat of job %s failed", sink.job_id)
    finally:
        connections.close_all()


def _db_role(using: str) -> str:
    connection = connections[using]
    if connection.vendor != "postgresql":
        return connection.vendor
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        return cursor.fetchone()[0]


class _Refused(Exception):
    pass


def _missing_extra(exc: BaseException) -> bool:
    name = getattr(exc, "name", None) or ""
    return isinstance(exc, ImportError) and name.split(".")[0] in TRAINING_MODULES


ARTIFACT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}


def _artifacts_writable(output_dir: Path) -> None:
    """Make the job's folder and write a probe file there; raises OSError (what, where) when it cannot."""
    output_dir.mkdir(parents=True, exist_ok=True)
    probe = output_dir / ".write-probe"
    probe.write_bytes(b"\0" * 4096)
    probe.unlink()


def artifacts_message(output_dir: Path, exc: OSError) -> str:
    """The job page's words for an artifacts directory that cannot be written."""
    why = exc.strerror or exc.__class__.__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that disk (or point GOLDSET_ARTIFACTS_DIR at a larger one)"
    else:
        fix = "give the gpu worker's user write access to GOLDSET_ARTIFACTS_DIR (or point it at a writable folder)"
    return (
        f"Could not write the job's artifacts in {output_dir}: {why} ({exc.filename or output_dir}). "
        f"Nothing of this run was kept as an adapter; {fix}, then retry the job."
    )


def _failure(exc: Exception, sink: DbSink) -> tuple[str, str]:
    """(reason for the job page, last good checkpoint) of a failed run."""
    if isinstance(exc, OSError) and exc.errno in ARTIFACT_ERRNOS:
        # A disk that filled up mid-run may have cut the last checkpoint short: point at none.
        return artifacts_message(Path(exc.filename or settings.ARTIFACTS_DIR).parent, exc), ""
    if isinstance(exc, TrainingError) and isinstance(exc.__cause__, OSError) and exc.__cause__.errno in ARTIFACT_ERRNOS:
        cause = exc.__cause__
        return artifacts_message(Path(cause.filename or settings.ARTIFACTS_DIR).parent, cause), ""
    if isinstance(exc, TrainingError):
        return str(exc), exc.checkpoint
    if isinstance(exc, _Refused):
        return str(exc), ""
    if _missing_extra(exc):
        return missing_extra_message(exc, where=f"the gpu worker {socket.gethostname()}"), ""
    for line in traceback.format_exc().splitlines()[-12:]:
        sink.log(line)
    return f"{exc.__class__.__name__}: {exc}", ""


def _provenance(job, snapshot, check) -> dict:
    return {
        "job_id": job.pk,
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
        "audit": job.audit,
    }


@shared_task(acks_late=True)
def training_job_run(job_id: int, secret: str) -> str:
    """Claim a queued job, train it and record how it ended (``secret``: the job's, from its message)."""
    from training import services
    from training.models import TrainingJob, TrainingSnapshot

    using = training_db()
    worker = socket.gethostname()
    output_dir = Path(settings.ARTIFACTS_DIR) / f"job-{job_id}"
    if not services.training_job_claim(job_id=job_id, secret=secret, worker=worker, using=using):
        return "not claimed"
    job = TrainingJob.objects.using(using).get(pk=job_id)
    try:
        _artifacts_writable(output_dir)
    except OSError as exc:
        # Before any training: a run that could not save its adapter would be wasted GPU time.
        services.training_job_finish(
            job_id=job_id,
            secret=secret,
            status=TrainingJob.Status.FAILED,
            using=using,
            error=artifacts_message(output_dir, exc),
        )
        return "failed"
    sink = DbSink(job_id, secret, using, output_dir / "train.log", stall_after_s=job.config.get("stall_after_s") or 0)
    sink.log(f"job {job_id} claimed by {worker}; database role: {_db_role(using)}")
    services.training_job_heartbeat(job_id=job_id, secret=secret, using=using, output_dir=str(output_dir))

    stop = threading.Event()
    beat = None
    if settings.TRAINING_HEARTBEAT_THREAD:
        beat = threading.Thread(target=_heartbeat_thread, args=(sink, stop), daemon=True)
        beat.start()
    try:
        # Defence in depth: the web side refuses to queue an untrainable snapshot, the worker refuses to train it.
        snapshot = TrainingSnapshot.objects.using(using).get(pk=job.snapshot_id)
        if not services.snapshot_is_trainable(snapshot, using=using):
            raise _Refused(services.snapshot_untrainable_reason(snapshot, using=using))
        check = services.snapshot_latest_check(snapshot, using=using)
        records = services.snapshot_records_as_dicts(snapshot.pk, using=using)
        provenance = _provenance(job, snapshot, check)
        result = _train(job, records=records, output_dir=output_dir, sink=sink, provenance=provenance)
    except Exception as exc:  # noqa: BLE001 — every failure must reach the job page
        reason, checkpoint = _failure(exc, sink)
        sink.log(f"failed: {reason}")
        services.training_job_finish(
            job_id=job_id,
            secret=secret,
            status=TrainingJob.Status.FAILED,
            using=using,
            error=reason[:5000],
            last_checkpoint=checkpoint,
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


def gpus_per_job() -> int:
    """GPUs one job trains on: GOLDSET_TRAINING_GPUS, or every GPU this worker sees ("auto")."""
    wanted = settings.TRAINING_GPUS
    if wanted != "auto":
        return int(wanted)
    import torch

    return max(1, torch.cuda.device_count())


def _train(job, *, records: list[dict], output_dir: Path, sink: DbSink, provenance: dict) -> dict:
    """Train in this process on one device, or through accelerate launch (DDP) on several GPUs."""
    from training.config import TrainingConfig

    gpus = gpus_per_job()
    launcher = settings.TRAINING_LAUNCHER
    if launcher == "accelerate" or (launcher == "auto" and gpus > 1):
        import torch

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


@shared_task(acks_late=True)
def training_preflight_run(preflight_id: int, secret: str) -> str:
    """Check a job's config against its base model and snapshot, reporting progress on the preflight row
    (``secret``: the preflight's, from its message)."""
    from training import services
    from training.models import TrainingPreflight

    using = training_db()
    worker = socket.gethostname()
    if not services.training_preflight_claim(preflight_id=preflight_id, secret=secret, worker=worker, using=using):
        return "not claimed"
    preflight = TrainingPreflight.objects.using(using).get(pk=preflight_id)
    last_report = [0.0]

    def progress(share: float, stage: str) -> None:
        now = time.monotonic()
        if share >= 1 or now - last_report[0] >= 0.5:
            last_report[0] = now
            services.training_preflight_progress(
                preflight_id=preflight_id, secret=secret, progress=share, message=stage, using=using
            )

    message = ""
    try:
        from training.preflight import check

        records = services.snapshot_records_as_dicts(preflight.snapshot_id, using=using)
        result = check(base_model=preflight.base_model, config=preflight.config, records=records, progress=progress)
    except Exception as exc:  # noqa: BLE001 — every failure must reach the preflight page
        if _missing_extra(exc):
            message = missing_extra_message(exc, where=f"the preflight worker {worker}")
        else:
            log.exception("preflight %s crashed", preflight_id)
            message = f"The preflight crashed: {exc.__class__.__name__}: {exc}"
        result = {"ok": False, "errors": [message], "warnings": [], "samples": [], "stats": {}}
    services.training_preflight_finish(
        preflight_id=preflight_id, secret=secret, result=result, message=message, using=using
    )
    return "succeeded" if result["ok"] and not message else "failed"


@shared_task
def training_jobs_fail_stale(stale_after_s: float | None = None) -> list[int]:
    """Periodic: fail running jobs whose worker went silent or whose steps stopped, and orphaned preflights."""
    from training import services

    limit = stale_after_s if stale_after_s is not None else settings.TRAINING_STALE_AFTER_S
    services.training_preflights_fail_stale(stale_after_s=limit)
    return services.training_jobs_fail_stale(stale_after_s=limit)


@shared_task(acks_late=True)
def snapshot_audit_run_task(audit_id: int) -> None:
    """Audit a snapshot (web side's queue and role: it reads annotations the trainer role may not)."""
    from training.audits import snapshot_audit_run

    snapshot_audit_run(audit_id=audit_id)
