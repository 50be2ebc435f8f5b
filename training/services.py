"""Writes for the training app: snapshots (web side), jobs (web side) and the gpu worker's job updates."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from annotate.models import Item, ItemResult, Project, Provenance, Split, TaskKind
from training.config import TrainingConfig
from training.models import (
    JobProgress,
    SnapshotCheck,
    SnapshotRecord,
    TrainingJob,
    TrainingPreflight,
    TrainingSnapshot,
)

APPROVED = (ItemResult.Status.CONSENSUS, ItemResult.Status.ADJUDICATED)
LOG_TAIL_LINES = 200

# --- snapshots -----------------------------------------------------------------------------------


def _prompt_messages(item: Item) -> list[dict]:
    if item.messages:
        return [{"role": m["role"], "content": m["content"]} for m in item.messages]
    return [{"role": "user", "content": item.prompt}]


def _response_text(item: Item, index) -> str | None:
    if not isinstance(index, int) or not 0 <= index < len(item.responses):
        return None
    response = item.responses[index]
    return response.get("text") if isinstance(response, dict) else str(response)


def canonical_line(record: dict) -> str:
    """One record as sorted-key JSON: the unit the snapshot hash is computed over."""
    keys = ("kind", "messages", "completion", "chosen", "rejected", "source_item_id")
    return json.dumps({k: record[k] for k in keys}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def snapshot_hash(records: list[dict]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(canonical_line(record).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def snapshot_collect(*, projects: list[Project], include_llm_judged: bool = False) -> tuple[list[dict], dict]:
    """The records a snapshot of these projects would hold, and what was left out and why."""
    results = (
        ItemResult.objects.filter(
            item__project__in=projects, item__split=Split.TRAIN, status__in=APPROVED, payload__isnull=False
        )
        .select_related("item")
        .order_by("item__project_id", "item_id")
    )
    records: list[dict] = []
    skipped = {"unusable": 0, "tie": 0, "both_bad": 0, "llm_judged": 0, "malformed": 0}
    rewrite_candidates: list[int] = []
    for result in results:
        item, payload = result.item, result.payload or {}
        if item.split != Split.TRAIN:  # never eval, whatever the query above says
            continue
        if item.provenance == Provenance.LLM_JUDGED and not include_llm_judged:
            skipped["llm_judged"] += 1
            continue
        base = {
            "messages": _prompt_messages(item),
            "source_item_id": item.id,
            "completion": "",
            "chosen": "",
            "rejected": "",
        }
        if result.kind == TaskKind.GOLD:
            answer = payload.get("answer") or ""
            if payload.get("action") == "unusable":
                skipped["unusable"] += 1
            elif not answer.strip():
                skipped["malformed"] += 1
            else:
                records.append({**base, "kind": SnapshotRecord.Kind.SFT, "completion": answer})
        elif result.kind == TaskKind.PREFERENCE:
            choice = payload.get("choice")
            if choice == "tie":
                skipped["tie"] += 1
            elif choice == "both_bad":
                # Not a pair: neither side is good enough. Offered for a gold-answer rewrite instead.
                skipped["both_bad"] += 1
                rewrite_candidates.append(item.id)
            else:
                chosen = _response_text(item, payload.get("chosen"))
                rejected = _response_text(item, payload.get("rejected"))
                if (
                    choice != "response"
                    or not chosen
                    or not rejected
                    or payload.get("chosen") == payload.get("rejected")
                ):
                    skipped["malformed"] += 1
                else:
                    records.append({**base, "kind": SnapshotRecord.Kind.DPO, "chosen": chosen, "rejected": rejected})
    report = {"skipped": skipped, "rewrite_candidates": rewrite_candidates}
    return records, report


@transaction.atomic
def snapshot_create(
    *, name: str, projects: list[Project], created_by, include_llm_judged: bool = False, note: str = ""
) -> TrainingSnapshot:
    """Freeze the approved train-split data of the projects into a hashed, write-once snapshot."""
    if not projects:
        raise ValidationError({"projects": "Choose at least one project to take approved data from."})
    records, report = snapshot_collect(projects=projects, include_llm_judged=include_llm_judged)
    if not records:
        raise ValidationError(
            {
                "projects": "These projects have no approved train-split gold answers or preference pairs yet: "
                "finish reviews (consensus or adjudication) first."
            }
        )
    for position, record in enumerate(records):
        record["content_hash"] = hashlib.sha256(canonical_line(record).encode()).hexdigest()
        record["position"] = position
    sha = snapshot_hash(records)
    existing = TrainingSnapshot.objects.filter(sha256=sha).first()
    if existing is not None:
        raise ValidationError(f"Snapshot {existing.name!r} (#{existing.pk}) already holds exactly this data; use it.")
    snapshot = TrainingSnapshot(
        name=name,
        sha256=sha,
        sources=[{"project_id": p.id, "project_slug": p.slug} for p in sorted(projects, key=lambda p: p.id)],
        filters={
            "split": Split.TRAIN,
            "statuses": list(APPROVED),
            "include_llm_judged": include_llm_judged,
            **report,
        },
        sft_count=sum(r["kind"] == SnapshotRecord.Kind.SFT for r in records),
        dpo_count=sum(r["kind"] == SnapshotRecord.Kind.DPO for r in records),
        note=note,
        created_by=created_by,
    )
    snapshot.full_clean()
    snapshot.save()
    SnapshotRecord.objects.bulk_create(SnapshotRecord(snapshot=snapshot, **r) for r in records)
    return snapshot


@transaction.atomic
def snapshot_rewrite_tasks_create(*, snapshot: TrainingSnapshot) -> list[Item]:
    """Offer each both-bad preference item of the snapshot to reviewers as a gold-answer rewrite task.

    The new gold item keeps the prompt, split and provenance, shows the rejected responses as candidates,
    and points back at its source in ``metadata["rewrite_of"]``. Idempotent: an item offered before is skipped.
    """
    created = []
    for source in Item.objects.filter(pk__in=snapshot.filters.get("rewrite_candidates", [])).order_by("pk"):
        content_hash = hashlib.sha256(f"rewrite|{source.content_hash}".encode()).hexdigest()
        if Item.objects.filter(project_id=source.project_id, content_hash=content_hash).exists():
            continue
        item = Item(
            project_id=source.project_id,
            kind=TaskKind.GOLD,
            prompt=source.prompt,
            messages=source.messages,
            responses=source.responses,
            metadata={**source.metadata, "rewrite_of": source.pk, "reason": "both responses judged bad"},
            provenance=source.provenance,
            content_hash=content_hash,
            split=source.split,
        )
        item.full_clean()
        item.save()
        created.append(item)
    return created


def snapshot_latest_check(snapshot: TrainingSnapshot, *, using: str = "default") -> SnapshotCheck | None:
    return SnapshotCheck.objects.using(using).filter(snapshot_id=snapshot.pk).order_by("-checked_at", "-id").first()


def snapshot_is_trainable(snapshot: TrainingSnapshot, *, using: str = "default") -> bool:
    """True when the snapshot's latest contamination check exists and passed."""
    check = snapshot_latest_check(snapshot, using=using)
    return check is not None and check.passed


def snapshot_untrainable_reason(snapshot: TrainingSnapshot, *, using: str = "default") -> str:
    check = snapshot_latest_check(snapshot, using=using)
    if check is None:
        return (
            f"Snapshot {snapshot.name} has not passed a contamination check against the current eval sets: "
            f"run the check from its page."
        )
    if not check.passed and check.report.get("stale"):
        return f"Snapshot {snapshot.name} needs a new contamination check: {check.report.get('reason', '')}"
    if not check.passed:
        return (
            f"Snapshot {snapshot.name} failed its contamination check of {check.checked_at:%Y-%m-%d %H:%M}: "
            f"it overlaps an eval set and cannot be trained on. Build a new snapshot without the offending items."
        )
    return ""


def snapshot_records_as_dicts(snapshot_id: int, *, using: str = "default") -> list[dict]:
    return list(
        SnapshotRecord.objects.using(using)
        .filter(snapshot_id=snapshot_id)
        .order_by("position")
        .values("kind", "messages", "completion", "chosen", "rejected", "source_item_id")
    )


# --- jobs, web side ------------------------------------------------------------------------------


def training_config_parse(*, method: str, config: dict) -> TrainingConfig:
    """The job's config, or a ValidationError listing every problem."""
    try:
        return TrainingConfig.from_dict({**config, "method": method})
    except (TypeError, ValueError) as exc:
        raise ValidationError(str(exc)) from exc


def _trainable_inputs(*, snapshot: TrainingSnapshot, base_model: str) -> str:
    if not snapshot_is_trainable(snapshot):
        raise ValidationError(snapshot_untrainable_reason(snapshot))
    base_model = (base_model or "").strip()
    if not base_model:
        raise ValidationError({"base_model": "Give the base model: a local directory or a hub id."})
    return base_model


@transaction.atomic
def training_preflight_request(
    *, snapshot: TrainingSnapshot, base_model: str, method: str, config: dict, created_by
) -> TrainingPreflight:
    """Validate a job's inputs and queue its preflight on a worker (the web process never loads a model)."""
    base_model = _trainable_inputs(snapshot=snapshot, base_model=base_model)
    parsed = training_config_parse(method=method, config=config)
    preflight = TrainingPreflight(
        snapshot=snapshot,
        base_model=base_model,
        method=parsed.method,
        config=parsed.to_dict(),
        created_by=created_by,
    )
    preflight.full_clean()
    preflight.save()
    from training.tasks import training_preflight_run

    training_preflight_run.delay_on_commit(preflight.pk)
    return preflight


@transaction.atomic
def training_job_create(*, preflight: TrainingPreflight, created_by) -> TrainingJob:
    """Queue the job a passed preflight checked, on the gpu queue; a preflight queues one job at most."""
    preflight = TrainingPreflight.objects.select_for_update().get(pk=preflight.pk)
    if preflight.job_id is not None:
        raise ValidationError(f"Job {preflight.job_id} was already queued from this preflight.")
    if preflight.status != TrainingPreflight.Status.SUCCEEDED:
        raise ValidationError(
            f"Preflight {preflight.pk} is {preflight.status}: only a passed preflight can queue its job."
        )
    base_model = _trainable_inputs(snapshot=preflight.snapshot, base_model=preflight.base_model)
    job = _job_insert(
        snapshot=preflight.snapshot,
        base_model=base_model,
        config=TrainingConfig.from_dict(preflight.config),
        created_by=created_by,
        preflight=preflight.result,
    )
    preflight.job = job
    preflight.save(update_fields=["job"])
    return job


@transaction.atomic
def _job_insert(
    *, snapshot, base_model, config: TrainingConfig, created_by, preflight, retry_of=None, resume_from=""
) -> TrainingJob:
    job = TrainingJob(
        snapshot=snapshot,
        base_model=base_model,
        method=config.method,
        config=config.to_dict(),
        preflight=preflight,
        created_by=created_by,
        retry_of=retry_of,
        resume_from=resume_from,
        status=TrainingJob.Status.QUEUED,
        queued_at=timezone.now(),
    )
    job.full_clean()
    job.save()
    from training.tasks import training_job_run

    training_job_run.delay_on_commit(job.pk)
    return job


@transaction.atomic
def training_job_cancel(*, job: TrainingJob) -> TrainingJob:
    """Cancel a queued job now, or ask a running one to stop at its next step (keeping a checkpoint)."""
    job = TrainingJob.objects.select_for_update().get(pk=job.pk)
    if job.status == TrainingJob.Status.QUEUED:
        job.status = TrainingJob.Status.CANCELLED
        job.finished_at = timezone.now()
        job.cancel_requested = True
        job.save(update_fields=["status", "finished_at", "cancel_requested"])
    elif job.status == TrainingJob.Status.RUNNING:
        job.cancel_requested = True
        job.save(update_fields=["cancel_requested"])
    else:
        raise ValidationError(f"Job {job.pk} already {job.status}: there is nothing to cancel.")
    return job


def _again_check(job: TrainingJob, verb: str) -> None:
    if job.status not in (TrainingJob.Status.FAILED, TrainingJob.Status.CANCELLED):
        raise ValidationError(f"Only a failed or cancelled job can be {verb}; job {job.pk} is {job.status}.")
    if not snapshot_is_trainable(job.snapshot):
        raise ValidationError(snapshot_untrainable_reason(job.snapshot))


def _job_again(job: TrainingJob, *, created_by, resume_from: str = "") -> TrainingJob:
    """A new queued job with the same snapshot, base model and config as ``job``."""
    return _job_insert(
        snapshot=job.snapshot,
        base_model=job.base_model,
        config=TrainingConfig.from_dict(job.config),
        created_by=created_by,
        preflight=job.preflight,
        retry_of=job,
        resume_from=resume_from,
    )


def training_job_retry(*, job: TrainingJob, created_by) -> TrainingJob:
    """Queue a fresh job with the same snapshot, base model and config."""
    _again_check(job, "retried")
    return _job_again(job, created_by=created_by)


def training_job_resume(*, job: TrainingJob, created_by) -> TrainingJob:
    """Queue a job that continues from the last checkpoint (and finished phases) of this one."""
    _again_check(job, "resumed")
    if not job.last_checkpoint or not job.output_dir:
        raise ValidationError(
            f"Job {job.pk} saved no checkpoint before it stopped (one is saved every "
            f"{job.config.get('save_steps')} steps): retry it from the start instead."
        )
    return _job_again(job, created_by=created_by, resume_from=job.output_dir)


def _resume_hint(job: TrainingJob) -> str:
    return "resume it from its last checkpoint or retry it" if job.last_checkpoint else "retry it"


def training_jobs_fail_stale(*, stale_after_s: float, using: str = "default") -> list[int]:
    """Fail running jobs whose worker went silent (no heartbeat) or whose training stopped moving (no step)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=stale_after_s)
    failed = []
    running = TrainingJob.objects.using(using).filter(status=TrainingJob.Status.RUNNING)
    for job in running.filter(heartbeat_at__lt=cutoff).only("id", "heartbeat_at", "worker", "last_checkpoint"):
        last = job.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        reason = (
            f"Lost the worker's heartbeat: none since {last} (more than {int(stale_after_s)}s) from "
            f"{job.worker or 'the gpu worker'}. The worker probably died (killed, out of memory, or the machine "
            f"restarted); {_resume_hint(job)}."
        )
        done = running.filter(pk=job.pk, heartbeat_at__lt=cutoff).update(
            status=TrainingJob.Status.FAILED, error=reason, finished_at=now
        )
        if done:
            failed.append(job.pk)
    watched = running.filter(heartbeat_at__gte=cutoff, step_advanced_at__isnull=False, stall_after_s__isnull=False)
    for job in watched.only("id", "step_advanced_at", "stall_after_s", "phase", "step", "total_steps", "worker"):
        idle = (now - job.step_advanced_at).total_seconds()
        if idle <= job.stall_after_s:
            continue
        reason = (
            f"Stalled: no training step finished for {int(idle)}s ({job.phase.upper()} step {job.step} of "
            f"{job.total_steps}; the limit is {int(job.stall_after_s)}s, set by stall_after_s or 10x the median "
            f"step). {job.worker or 'The gpu worker'} is alive but training does not move: a hang in data loading, "
            f"in a collective between GPUs, or in I/O. Restart the gpu worker, then {_resume_hint(job)}."
        )
        # Unless a step lands meanwhile.
        done = running.filter(pk=job.pk, step_advanced_at=job.step_advanced_at).update(
            status=TrainingJob.Status.FAILED, error=reason, finished_at=now
        )
        if done:
            failed.append(job.pk)
    return failed


def training_preflights_fail_stale(*, stale_after_s: float, using: str = "default") -> list[int]:
    """Fail preflights whose worker stopped reporting (the page would otherwise wait forever)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=stale_after_s)
    stale = TrainingPreflight.objects.using(using).filter(
        status=TrainingPreflight.Status.RUNNING, updated_at__lt=cutoff
    )
    ids = list(stale.values_list("id", flat=True))
    stale.filter(pk__in=ids).update(
        status=TrainingPreflight.Status.FAILED,
        message=(
            f"The preflight's worker stopped reporting (nothing for more than {int(stale_after_s)}s): it probably "
            f"died. Start the preflight again."
        ),
        finished_at=now,
    )
    return ids


# --- jobs, gpu worker side (trainer role: SELECT/UPDATE on the job, INSERT on progress) -------------
# Every write the worker makes to its job row goes through one of these, and only while the job runs.


def training_job_claim(*, job_id: int, worker: str, output_dir: str, using: str) -> bool:
    """Move a queued job to running; False when someone else has it or it was cancelled meanwhile."""
    now = timezone.now()
    return bool(
        TrainingJob.objects.using(using)
        .filter(pk=job_id, status=TrainingJob.Status.QUEUED, cancel_requested=False)
        .update(
            status=TrainingJob.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker, output_dir=output_dir
        )
    )


HEARTBEAT_FIELDS = frozenset(
    {"phase", "step", "total_steps", "epoch", "loss", "log_tail", "step_advanced_at", "stall_after_s"}
)


def training_job_heartbeat(*, job_id: int, using: str, **fields) -> bool:
    """Prove the worker is alive, with the job's latest step; False once the job no longer runs."""
    unknown = set(fields) - HEARTBEAT_FIELDS
    if unknown:
        raise ValueError(f"A heartbeat cannot write {', '.join(sorted(unknown))}.")
    return bool(
        TrainingJob.objects.using(using)
        .filter(pk=job_id, status=TrainingJob.Status.RUNNING)
        .update(heartbeat_at=timezone.now(), **fields)
    )


def training_job_checkpoint(*, job_id: int, path: str, using: str) -> bool:
    """Record the newest resumable checkpoint of a running job."""
    return bool(
        TrainingJob.objects.using(using)
        .filter(pk=job_id, status=TrainingJob.Status.RUNNING)
        .update(last_checkpoint=path)
    )


def training_job_progress_add(*, job_id: int, row: dict, using: str) -> None:
    """Append one progress row (step metrics) of a job."""
    JobProgress.objects.using(using).bulk_create(
        [JobProgress(job_id=job_id, **row)],
        ignore_conflicts=True,  # a resumed phase may log a step again
    )


def training_job_finish(
    *,
    job_id: int,
    status: str,
    using: str,
    error: str = "",
    manifest: dict | None = None,
    last_checkpoint: str = "",
    log_tail: str | None = None,
) -> bool:
    """Record how a running job ended; a job already failed by the stale check stays failed."""
    if status == TrainingJob.Status.FAILED and not error:
        error = "The job failed without a reason: see the log tail."
    fields: dict = {"step_advanced_at": None}
    if log_tail is not None:
        fields["log_tail"] = log_tail
    if manifest is not None:
        fields["manifest"] = manifest
    if last_checkpoint:
        fields["last_checkpoint"] = last_checkpoint
    try:
        return bool(
            TrainingJob.objects.using(using)
            .filter(pk=job_id, status=TrainingJob.Status.RUNNING)
            .update(status=status, error=error, finished_at=timezone.now(), heartbeat_at=timezone.now(), **fields)
        )
    except IntegrityError:
        return False


# --- preflights, worker side (trainer role on a gpu box: SELECT/UPDATE on the preflight) ------------


def training_preflight_claim(*, preflight_id: int, worker: str, using: str) -> bool:
    """Move a queued preflight to running; False when another worker has it."""
    now = timezone.now()
    return bool(
        TrainingPreflight.objects.using(using)
        .filter(pk=preflight_id, status=TrainingPreflight.Status.QUEUED)
        .update(status=TrainingPreflight.Status.RUNNING, started_at=now, updated_at=now, worker=worker)
    )


def training_preflight_progress(*, preflight_id: int, progress: float, message: str, using: str) -> bool:
    """Report how far a running preflight got, and what it is doing."""
    return bool(
        TrainingPreflight.objects.using(using)
        .filter(pk=preflight_id, status=TrainingPreflight.Status.RUNNING)
        .update(progress=max(0.0, min(1.0, progress)), message=message[:500], updated_at=timezone.now())
    )


def training_preflight_finish(*, preflight_id: int, result: dict, using: str, message: str = "") -> bool:
    """Record a running preflight's result: passed when it found no error, failed (saying why) otherwise."""
    passed = bool(result.get("ok")) and not message
    if not passed and not message:
        message = " ".join(result.get("errors") or []) or "The preflight failed without a reason."
    now = timezone.now()
    return bool(
        TrainingPreflight.objects.using(using)
        .filter(pk=preflight_id, status=TrainingPreflight.Status.RUNNING)
        .update(
            status=TrainingPreflight.Status.SUCCEEDED if passed else TrainingPreflight.Status.FAILED,
            progress=1.0 if passed else F("progress"),
            result=result,
            message=message,
            updated_at=now,
            finished_at=now,
        )
    )
