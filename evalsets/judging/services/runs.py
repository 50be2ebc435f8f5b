"""Generation runs: started, cancelled and retried by the web side; claimed, fed and ended by the gpu worker.

The web side writes the run's prompts (chat turns only: never a reference answer) to a file for that
run alone, readable only by its owner, and sends the run id and a secret to the gpu queue. The gpu
worker logs in as the trainer role, which has no privilege on any eval table: the file is how eval
prompts reach it, and the worker deletes it when the run ends. Every write of the worker names the
run's secret; on PostgreSQL it goes through the functions of ``evalsets/judging/dbfunctions.py``, and on SQLite,
which has no roles, the same rules apply here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.utils import timezone

from evalsets.judging.generate import DecodingConfig
from evalsets.judging.models import GenerationOutput, GenerationRun, GenerationSecret
from evalsets.models import EvalRecord, EvalSetVersion
from training.models import TrainingJob

LOG_TAIL_LINES = 200


def run_dir(run_id: int) -> Path:
    return Path(settings.ARTIFACTS_DIR) / "generation" / f"run-{run_id}"


def prompts_path(run_id: int) -> Path:
    return run_dir(run_id) / "prompts.jsonl"


def decoding_parse(data: dict) -> DecodingConfig:
    """Decoding settings from a form or the API, or a ValidationError that names the setting."""
    try:
        return DecodingConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValidationError({"decoding": str(exc)}) from exc


def eval_prompts(version: EvalSetVersion) -> list[dict]:
    """The version's prompts as chat turns, in record order: what a model is asked, nothing it is judged by."""
    rows = []
    for position, (record_id, prompt, messages) in enumerate(
        EvalRecord.objects.filter(version=version).order_by("position").values_list("id", "prompt", "messages")
    ):
        turns = [t for t in (messages or []) if t.get("role") in ("system", "user", "assistant")]
        while turns and turns[-1].get("role") == "assistant":
            turns.pop()  # the model answers the last user turn
        rows.append(
            {
                "position": position,
                "record_id": record_id,
                "check_key": "",
                "messages": turns or [{"role": "user", "content": prompt}],
            }
        )
    return rows


def _write_prompts(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Owner-only from the first byte: no moment where another user of the box could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_prompts(run_id: int) -> list[dict]:
    path = prompts_path(run_id)
    if not path.is_file():
        raise FileNotFoundError(
            f"The prompts of run {run_id} are not at {path}: the web side and the gpu worker must share "
            "GOLDSET_ARTIFACTS_DIR. Retry the run once they do."
        )
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def forget_prompts(run_id: int) -> None:
    prompts_path(run_id).unlink(missing_ok=True)


def _adapter_of(job: TrainingJob) -> str:
    if job.status != TrainingJob.Status.SUCCEEDED or not job.output_dir:
        raise ValidationError({"job": f"Job {job.pk} is {job.status}: only a finished job's adapter can be judged."})
    return str(Path(job.output_dir) / "adapter")


@transaction.atomic
def generation_run_start(
    *,
    label: str,
    decoding: DecodingConfig,
    created_by,
    version: EvalSetVersion | None = None,
    job: TrainingJob | None = None,
    base_model: str = "",
    regression: dict | None = None,
    retry_of: GenerationRun | None = None,
) -> GenerationRun:
    """Queue one model's responses to an eval set version's prompts (or the regression suite's) on the gpu queue.

    The model is ``job``'s adapter on its base, or ``base_model`` alone."""
    if (version is None) == (regression is None):
        raise ValidationError("Give an eval set version or a regression suite, not both.")
    if job is not None:
        adapter_dir = _adapter_of(job)
        if base_model and base_model != job.base_model:
            raise ValidationError({"base_model": f"Job {job.pk} trained on {job.base_model}; leave the base empty."})
        base_model = job.base_model
    else:
        adapter_dir = ""
        if not base_model.strip():
            raise ValidationError({"base_model": "Give the base model (a local directory or a hub id), or a job."})
    if not label.strip():
        raise ValidationError({"label": "Name the model, e.g. 'base' or 'support v2'."})
    if regression is not None:
        from evalsets.judging import regression as suite

        prompts, suite_info = suite.prompts_and_info(**regression)
        source = GenerationRun.Source.REGRESSION
    else:
        prompts, suite_info = eval_prompts(version), {}
        source = GenerationRun.Source.EVAL
    if not prompts:
        raise ValidationError("There are no prompts to answer.")
    run = GenerationRun(
        source=source,
        evalset_version=version,
        suite=suite_info,
        label=label.strip(),
        job=job,
        base_model=base_model.strip(),
        adapter_dir=adapter_dir,
        decoding=decoding.to_dict(),
        prompt_count=len(prompts),
        created_by=created_by,
        retry_of=retry_of,
        message="Waiting for a gpu worker.",
    )
    run.full_clean()
    run.save()
    secret = secrets.token_urlsafe(32)
    GenerationSecret.objects.create(run=run, secret_sha256=secret_hash(secret))
    # Written now, read by the worker once the run is committed (a rolled-back start leaves a file no
    # committed run names; the next run with that id overwrites it).
    _write_prompts(prompts_path(run.pk), prompts)
    from evalsets.judging.tasks import generation_run_task

    generation_run_task.apply_async_on_commit((run.pk, secret), argsrepr=f"({run.pk}, '…')")
    run.worker_secret = secret  # not stored: a test or the demo may run the task itself
    return run


@transaction.atomic
def generation_run_cancel(*, run: GenerationRun) -> GenerationRun:
    """Cancel a queued run now, or ask a running one to stop after its current batch (its outputs stay)."""
    run = GenerationRun.objects.select_for_update().get(pk=run.pk)
    if run.status == GenerationRun.Status.QUEUED:
        run.status = GenerationRun.Status.CANCELLED
        run.finished_at = timezone.now()
        run.message = "Cancelled before it started."
        run.cancel_requested = True
        run.save(update_fields=["status", "finished_at", "message", "cancel_requested"])
        transaction.on_commit(lambda: forget_prompts(run.pk))
    elif run.status == GenerationRun.Status.RUNNING:
        run.cancel_requested = True
        run.save(update_fields=["cancel_requested"])
    else:
        raise ValidationError(f"Run {run.pk} has already {run.status}; there is nothing to cancel.")
    return run


def generation_run_retry(*, run: GenerationRun, created_by) -> GenerationRun:
    """A new run of the same model, prompts and decoding settings (a failed or cancelled run stays as it was)."""
    if run.status not in (GenerationRun.Status.FAILED, GenerationRun.Status.CANCELLED):
        raise ValidationError(f"Run {run.pk} is {run.status}: only a failed or cancelled run can be retried.")
    regression = None
    if run.source == GenerationRun.Source.REGRESSION:
        regression = {k: run.suite[k] for k in ("seed", "per_category", "project_ids") if k in run.suite}
    return generation_run_start(
        label=run.label,
        decoding=DecodingConfig.from_dict(run.decoding),
        created_by=created_by,
        version=run.evalset_version,
        job=run.job,
        base_model="" if run.job_id else run.base_model,
        regression=regression,
        retry_of=run,
    )


# --- the gpu worker's writes ---------------------------------------------------------------------


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _on_postgres(using: str) -> bool:
    return connections[using].vendor == "postgresql"


def _call(using: str, function: str, args: list, casts: list[str]) -> bool:
    placeholders = ", ".join(f"%s::{cast}" for cast in casts)
    try:
        # A savepoint: a refusal leaves the caller's transaction usable.
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute(f"SELECT {function}({placeholders})", args)
            return bool(cursor.fetchone()[0])
    except DatabaseError as exc:
        cause = exc.__cause__
        if getattr(cause, "sqlstate", None) == "42501":  # insufficient_privilege: a refusal, in words
            raise PermissionDenied(getattr(getattr(cause, "diag", None), "message_primary", None) or str(exc)) from exc
        raise


def _secret_check(run_id: int, secret: str | None, using: str) -> None:
    stored = GenerationSecret.objects.using(using).filter(run_id=run_id).values_list("secret_sha256", flat=True).first()
    if stored is None or not secret or not hmac.compare_digest(stored, secret_hash(secret)):
        raise PermissionDenied(
            f"generation run {run_id}: the worker secret does not match; only the worker it was sent to may write it"
        )


def _fields_check(run_id: int, fields: dict) -> None:
    refused = sorted(set(fields) - set(GenerationRun.WORKER_FIELDS))
    if refused:
        raise PermissionDenied(
            f"generation run {run_id}: the gpu worker may not write {', '.join(refused)} "
            f"(it may write: {', '.join(GenerationRun.WORKER_FIELDS)})"
        )


def generation_run_claim(*, run_id: int, secret: str, worker: str, using: str) -> bool:
    """Move a queued run to running; False when it was claimed already or cancelled meanwhile."""
    if _on_postgres(using):
        from evalsets.judging.dbfunctions import CLAIM

        return _call(using, CLAIM, [run_id, secret, worker[:200]], ["bigint", "text", "text"])
    _secret_check(run_id, secret, using)
    now = timezone.now()
    return bool(
        GenerationRun.objects.using(using)
        .filter(pk=run_id, status=GenerationRun.Status.QUEUED, cancel_requested=False)
        .update(
            status=GenerationRun.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            progress=0.0,
            worker=worker[:200],
            message="Loading the model",
        )
    )


def generation_run_update(*, run_id: int, secret: str, using: str, **fields) -> bool:
    """Beat, and write any of GenerationRun.WORKER_FIELDS, while the run runs."""
    if _on_postgres(using):
        from evalsets.judging.dbfunctions import UPDATE

        return _call(using, UPDATE, [run_id, secret, json.dumps(fields)], ["bigint", "text", "jsonb"])
    _secret_check(run_id, secret, using)
    _fields_check(run_id, fields)
    return bool(
        GenerationRun.objects.using(using)
        .filter(pk=run_id, status=GenerationRun.Status.RUNNING)
        .update(heartbeat_at=timezone.now(), **fields)
    )


def generation_outputs_add(*, run_id: int, secret: str, rows: list[dict], using: str) -> bool:
    """Append a batch of outputs to the running run."""
    from evalsets.judging.dbfunctions import OUTPUT_FIELDS, OUTPUTS

    for row in rows:
        extra = sorted(set(row) - set(OUTPUT_FIELDS))
        if extra:
            raise PermissionDenied(f"generation run {run_id}: an output has no field {', '.join(extra)}")
    if _on_postgres(using):
        return _call(using, OUTPUTS, [run_id, secret, json.dumps(rows)], ["bigint", "text", "jsonb"])
    _secret_check(run_id, secret, using)
    with transaction.atomic(using=using):
        runs = GenerationRun.objects.using(using).select_for_update().filter(pk=run_id, status="running")
        if not runs.exists():
            return False
        GenerationOutput.objects.using(using).bulk_create(
            GenerationOutput(
                run_id=run_id, text_sha256=hashlib.sha256(row["text"].encode()).hexdigest(), model_generated=True, **row
            )
            for row in rows
        )
        run = runs.get()
        runs.update(output_count=run.output_count + len(rows), heartbeat_at=timezone.now())
    return True


def generation_run_finish(*, run_id: int, secret: str, status: str, using: str, message: str = "", **fields) -> bool:
    """Record how a running run ended."""
    if status == GenerationRun.Status.FAILED and not message:
        message = "The run failed without a reason: see the log."
    if _on_postgres(using):
        from evalsets.judging.dbfunctions import FINISH

        try:
            return _call(
                using,
                FINISH,
                [run_id, secret, status, message, json.dumps(fields)],
                ["bigint", "text", "text", "text", "jsonb"],
            )
        except IntegrityError:
            return False
    from evalsets.judging.dbfunctions import ENDINGS

    _secret_check(run_id, secret, using)
    if status not in ENDINGS:
        raise PermissionDenied(
            f"generation run {run_id}: a gpu worker ends a run as {', '.join(ENDINGS)}, not {status}"
        )
    _fields_check(run_id, fields)
    runs = GenerationRun.objects.using(using).filter(pk=run_id, status=GenerationRun.Status.RUNNING)
    if status == GenerationRun.Status.CANCELLED:
        runs = runs.filter(cancel_requested=True)
    if status == GenerationRun.Status.SUCCEEDED:
        fields["progress"] = 1.0
    now = timezone.now()
    return bool(runs.update(status=status, message=message, finished_at=now, heartbeat_at=now, **fields))


def generation_runs_fail_stale(*, stale_after_s: float) -> list[int]:
    """Fail running runs whose worker has written nothing for ``stale_after_s`` seconds (it died or hangs)."""
    from datetime import timedelta

    limit = timezone.now() - timedelta(seconds=stale_after_s)
    stale = GenerationRun.objects.filter(status=GenerationRun.Status.RUNNING, heartbeat_at__lt=limit)
    ids = list(stale.values_list("id", flat=True))
    for run_id in ids:
        GenerationRun.objects.filter(pk=run_id, status=GenerationRun.Status.RUNNING, heartbeat_at__lt=limit).update(
            status=GenerationRun.Status.FAILED,
            finished_at=timezone.now(),
            message=(
                f"The gpu worker went silent for more than {stale_after_s:.0f} s (it died, or its host was lost); the "
                "outputs written so far are kept. Retry the run."
            ),
        )
        forget_prompts(run_id)
    return ids
