"""Writes for the training app: snapshots (web side), jobs (web side) and the gpu worker's job updates."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from datetime import timedelta

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from annotate.models import (
    AdminAction,
    Annotation,
    Item,
    ItemResult,
    Project,
    Provenance,
    RubricVersion,
    Split,
    TaskKind,
)
from annotate.payloads import GoldAction, PreferenceChoice
from annotate.services.adminlog import admin_action_record
from config.background import send_on_commit
from training import dbfunctions
from training.audits import snapshot_audit_clearance, snapshot_audit_request
from training.config import TrainingConfig
from training.curation import Exclusions, SnapshotFilters, rubric_passes
from training.models import (
    JobProgress,
    JobSecret,
    PreflightSecret,
    SnapshotAudit,
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


def _model_of(item: Item, index) -> str:
    if not isinstance(index, int) or not 0 <= index < len(item.responses):
        return ""
    response = item.responses[index]
    return (response.get("model") or "unlabelled model") if isinstance(response, dict) else "unlabelled model"


def _left_picks(item_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Per preference item: (reviews that chose the response shown first, reviews that chose a response)."""
    out: dict[int, tuple[int, int]] = {}
    for start in range(0, len(item_ids), 2000):
        rows = Annotation.objects.filter(item_id__in=item_ids[start : start + 2000]).values_list(
            "item_id", "payload", "display_order"
        )
        for item_id, payload, order in rows:
            if (payload or {}).get("choice") != PreferenceChoice.RESPONSE or not isinstance(order, list) or not order:
                continue
            left, picks = out.get(item_id, (0, 0))
            out[item_id] = (left + (order[0] == payload.get("chosen")), picks + 1)
    return out


def _lineage(item: Item, result: ItemResult, *, source: str, rejected_source: str = "", picks=(0, 0)) -> dict:
    return {
        "project_id": item.project_id,
        "provenance": item.provenance,
        "source": source,
        "rejected_source": rejected_source,
        "decided_by": result.status,
        "agreement": result.agreement,
        "left_picks": picks[0],
        "picks": picks[1],
    }


def _exclusions(filters: SnapshotFilters) -> Exclusions:
    findings = []
    for audit_id, key in filters.exclude_findings:
        audit = SnapshotAudit.objects.filter(pk=audit_id).first()
        finding = next((f for f in (audit.findings if audit else []) if f.get("key") == key), None)
        if finding is None:
            raise ValidationError(f"Audit {audit_id} has no finding {key!r}: pick findings from the audit's page.")
        findings.append(finding)
    contaminated: set[int] = set()
    if filters.exclude_contaminated_by is not None:
        check = SnapshotCheck.objects.filter(pk=filters.exclude_contaminated_by).first()
        if check is None:
            raise ValidationError(f"No contamination check {filters.exclude_contaminated_by}.")
        record_ids = (check.report or {}).get("offending_train_record_ids", [])
        contaminated = set(SnapshotRecord.objects.filter(pk__in=record_ids).values_list("source_item_id", flat=True))
    return Exclusions(findings=findings, items=set(filters.exclude_items), contaminated=contaminated)


def snapshot_collect(
    *, projects: list[Project], filters: SnapshotFilters | None = None, include_llm_judged: bool = False
) -> tuple[list[dict], dict]:
    """The records a snapshot of these projects would hold (each with its lineage), and what was left out and why."""
    filters = filters or SnapshotFilters(include_llm_judged=include_llm_judged)
    statuses = [ItemResult.Status.ADJUDICATED] if filters.adjudicated_only else list(APPROVED)
    results = ItemResult.objects.filter(
        item__project__in=projects, item__split=Split.TRAIN, status__in=statuses, payload__isnull=False
    )
    if filters.min_agreement is not None:
        results = results.filter(agreement__gte=filters.min_agreement)
    if filters.provenances:
        results = results.filter(item__provenance__in=filters.provenances)
    if filters.kinds:
        results = results.filter(kind__in=filters.kinds)
    if filters.decided_from:
        results = results.filter(decided_at__date__gte=filters.decided_from)
    if filters.decided_until:
        results = results.filter(decided_at__date__lte=filters.decided_until)
    results = list(results.select_related("item").order_by("item__project_id", "item_id"))
    exclusions = _exclusions(filters)
    picks = _left_picks([r.item_id for r in results if r.kind == TaskKind.PREFERENCE])
    records: list[dict] = []
    skipped = {"unusable": 0, "tie": 0, "both_bad": 0, "llm_judged": 0, "malformed": 0, "marked_unusable": 0}
    rubric_criteria: list[dict] = []
    if filters.rubric_version is not None:
        version = RubricVersion.objects.filter(pk=filters.rubric_version, rubric__project__in=projects).first()
        if version is None:
            raise ValidationError({"rubric_version": "Choose a rubric version of one of the chosen projects."})
        rubric_criteria = version.criteria
        skipped.update(other_rubric_version=0, below_rubric_bar=0)
    rewrite_candidates: list[int] = []
    for result in results:
        item, payload = result.item, result.payload or {}
        if item.split != Split.TRAIN:  # never eval, whatever the query above says
            continue
        if item.provenance == Provenance.MODEL_GENERATED:
            # Outputs generated to judge a model; a trigger refuses them too (judging migration 0001).
            skipped["model_generated"] = skipped.get("model_generated", 0) + 1
            continue
        if item.provenance == Provenance.LLM_JUDGED and not filters.include_llm_judged:
            skipped["llm_judged"] += 1
            continue
        if item.unusable_reason:
            skipped["marked_unusable"] += 1
            continue
        base = {
            "messages": _prompt_messages(item),
            "source_item_id": item.id,
            "completion": "",
            "chosen": "",
            "rejected": "",
        }
        record = None
        if result.kind == TaskKind.GOLD:
            answer = payload.get("answer") or ""
            if payload.get("action") == GoldAction.UNUSABLE:
                skipped["unusable"] += 1
            elif not answer.strip():
                skipped["malformed"] += 1
            else:
                accepted = payload.get("action") == GoldAction.ACCEPT
                source = _model_of(item, payload.get("source_index")) if accepted else "human"
                record = {**base, "kind": SnapshotRecord.Kind.SFT, "completion": answer}
                record["lineage"] = _lineage(item, result, source=source)
        elif result.kind == TaskKind.PREFERENCE:
            choice = payload.get("choice")
            if choice == PreferenceChoice.TIE:
                skipped["tie"] += 1
            elif choice == PreferenceChoice.BOTH_BAD:
                # Not a pair: neither side is good enough. Offered for a gold-answer rewrite instead.
                skipped["both_bad"] += 1
                rewrite_candidates.append(item.id)
            else:
                chosen = _response_text(item, payload.get("chosen"))
                rejected = _response_text(item, payload.get("rejected"))
                if (
                    choice != PreferenceChoice.RESPONSE
                    or not chosen
                    or not rejected
                    or payload.get("chosen") == payload.get("rejected")
                ):
                    skipped["malformed"] += 1
                else:
                    record = {**base, "kind": SnapshotRecord.Kind.DPO, "chosen": chosen, "rejected": rejected}
                    record["lineage"] = _lineage(
                        item,
                        result,
                        source=_model_of(item, payload.get("chosen")),
                        rejected_source=_model_of(item, payload.get("rejected")),
                        picks=picks.get(item.id, (0, 0)),
                    )
        elif result.kind == TaskKind.RUBRIC and filters.rubric_version is not None:
            text = _response_text(item, payload.get("response_index"))
            if result.rubric_version_id != filters.rubric_version or not (text or "").strip():
                skipped["other_rubric_version" if text else "malformed"] += 1
            elif not rubric_passes(payload.get("scores") or {}, rubric_criteria, minimum=filters.rubric_min):
                skipped["below_rubric_bar"] += 1
            else:
                record = {**base, "kind": SnapshotRecord.Kind.SFT, "completion": text}
                record["lineage"] = _lineage(item, result, source=_model_of(item, payload.get("response_index")))
        if record is not None and exclusions.reason(record) is None:
            records.append(record)
    report = {"skipped": skipped, "excluded": exclusions.counts, "rewrite_candidates": rewrite_candidates}
    return records, report


@transaction.atomic
def snapshot_create(
    *,
    name: str,
    projects: list[Project],
    created_by,
    filters: SnapshotFilters | None = None,
    include_llm_judged: bool = False,
    note: str = "",
    audit: bool = True,
) -> TrainingSnapshot:
    """Freeze the approved train-split data of the projects into a hashed, write-once snapshot, and queue its audit.

    ``filters`` choose and exclude (``training.curation``); the snapshot stores them and what they left out."""
    if not projects:
        raise ValidationError({"projects": "Choose at least one project to take approved data from."})
    filters = filters or SnapshotFilters(include_llm_judged=include_llm_judged)
    records, report = snapshot_collect(projects=projects, filters=filters)
    if not records:
        if filters.is_default:
            message = (
                "These projects have no approved train-split gold answers or preference pairs yet: "
                "finish reviews (consensus or adjudication) first."
            )
        else:
            message = (
                "No approved train-split gold answer or preference pair of these projects passes the filters "
                f"(left out: {report['skipped']}, excluded: {report['excluded']}): loosen them."
            )
        raise ValidationError({"projects": message})
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
            "statuses": [ItemResult.Status.ADJUDICATED] if filters.adjudicated_only else list(APPROVED),
            **filters.to_json(),
            **report,
        },
        sft_count=sum(r["kind"] == SnapshotRecord.Kind.SFT for r in records),
        dpo_count=sum(r["kind"] == SnapshotRecord.Kind.DPO for r in records),
        note=note,
        created_by=created_by,
    )
    snapshot.full_clean()
    snapshot.save()
    SnapshotRecord.objects.bulk_create((SnapshotRecord(snapshot=snapshot, **r) for r in records), batch_size=5000)
    admin_action_record(
        actor=created_by,
        action=AdminAction.Action.SNAPSHOT_CREATE,
        target=snapshot,
        summary=f"Made snapshot {snapshot.name!r}: {snapshot.sft_count} SFT, {snapshot.dpo_count} DPO records",
        details={"sha256": sha, "projects": [p.slug for p in projects], "name": snapshot.name},
    )
    if audit:
        snapshot_audit_request(snapshot=snapshot, created_by=created_by)
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

    snapshot_audit_clearance(snapshot)  # raises, saying what to do, while the audit blocks it
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

    # As for a job: only the worker that receives this message can write the preflight.
    secret = secrets.token_urlsafe(32)
    PreflightSecret.objects.create(preflight=preflight, secret_sha256=job_secret_hash(secret))
    send_on_commit(training_preflight_run, preflight.pk, secret, argsrepr=f"({preflight.pk}, '…')")
    preflight.worker_secret = secret  # not stored: the caller may run the task itself (tests, the demo)
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
        # The audit the job starts under, with the acknowledgements of its blocking findings (its manifest's too).
        audit=snapshot_audit_clearance(snapshot),
        created_by=created_by,
        retry_of=retry_of,
        resume_from=resume_from,
        status=TrainingJob.Status.QUEUED,
        queued_at=timezone.now(),
    )
    job.full_clean()
    job.save()
    how = f" (retry of job {retry_of.pk}{', resumed' if resume_from else ''})" if retry_of is not None else ""
    admin_action_record(
        actor=created_by,
        action=AdminAction.Action.JOB_START,
        target=job,
        summary=f"Started job {job.pk}: {job.method} on snapshot {snapshot.name!r}, base {base_model}{how}",
        details={
            "snapshot": snapshot.pk,
            "method": job.method,
            "base_model": base_model,
            "retry_of": retry_of and retry_of.pk,
        },
    )
    # Only the worker that receives this message can write the job: the secret travels in it, and the
    # database keeps its sha256 where the trainer role cannot read it.
    secret = secrets.token_urlsafe(32)
    JobSecret.objects.create(job=job, secret_sha256=job_secret_hash(secret))
    from training.tasks import training_job_run

    send_on_commit(training_job_run, job.pk, secret, argsrepr=f"({job.pk}, '…')")
    job.worker_secret = secret  # not stored: the caller may run the task itself (tests, the demo)
    return job


@transaction.atomic
def training_job_cancel(*, job: TrainingJob, by=None) -> TrainingJob:
    """Cancel a queued job now, or ask a running one to stop at its next step (keeping a checkpoint)."""
    job = TrainingJob.objects.select_for_update().get(pk=job.pk)
    was = job.status
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
    admin_action_record(
        actor=by,
        action=AdminAction.Action.JOB_CANCEL,
        target=job,
        summary=f"Cancelled job {job.pk} "
        + ("(it stops at its next step)" if was == TrainingJob.Status.RUNNING else "(it was queued)"),
        details={"status_before": was},
    )
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


# --- jobs, gpu worker side -------------------------------------------------------------------------
# Every write of the gpu worker goes through these functions. It names the job's secret; on PostgreSQL
# they call the SECURITY DEFINER functions of training/dbfunctions.py (the trainer role has no UPDATE
# or INSERT privilege of its own), and on SQLite, which has no roles, they apply the same rules here.


def job_secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _jsonable(fields: dict) -> str:
    # JSON has no NaN or infinity; PostgreSQL reads these strings back into a float column as such.
    def value(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        return v

    return json.dumps({k: value(v) for k, v in fields.items()}, cls=DjangoJSONEncoder)


def _call(using: str, function: str, args: list, casts: list[str]) -> bool:
    placeholders = ", ".join(f"%s::{cast}" for cast in casts)
    try:
        with connections[using].cursor() as cursor:
            cursor.execute(f"SELECT {function}({placeholders})", args)
            return bool(cursor.fetchone()[0])
    except DatabaseError as exc:
        cause = exc.__cause__
        if getattr(cause, "sqlstate", None) == "42501":  # insufficient_privilege: a refusal, in words
            raise PermissionDenied(getattr(getattr(cause, "diag", None), "message_primary", None) or str(exc)) from exc
        raise


def _on_postgres(using: str) -> bool:
    return connections[using].vendor == "postgresql"


def _secret_check(job_id: int, secret: str | None, using: str) -> None:
    stored = JobSecret.objects.using(using).filter(job_id=job_id).values_list("secret_sha256", flat=True).first()
    if stored is None or not secret or not hmac.compare_digest(stored, job_secret_hash(secret)):
        raise PermissionDenied(
            f"job {job_id}: the worker secret does not match; only the worker the job was sent to may write it"
        )


def _fields_check(job_id: int, fields: dict, allowed, what: str) -> None:
    refused = sorted(set(fields) - set(allowed))
    if refused:
        raise PermissionDenied(
            f"job {job_id}: the gpu worker may not write {', '.join(refused)} ({what}: {', '.join(allowed)})"
        )


def training_job_claim(*, job_id: int, secret: str, worker: str, using: str) -> bool:
    """Move a queued job to running; False when someone else has it or it was cancelled meanwhile."""
    worker = worker[:200]
    if _on_postgres(using):
        return _call(using, dbfunctions.CLAIM, [job_id, secret, worker], ["bigint", "text", "text"])
    _secret_check(job_id, secret, using)
    now = timezone.now()
    return bool(
        TrainingJob.objects.using(using)
        .filter(pk=job_id, status=TrainingJob.Status.QUEUED, cancel_requested=False)
        .update(status=TrainingJob.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker)
    )


def training_job_heartbeat(*, job_id: int, secret: str, using: str, **fields) -> bool:
    """Beat, and write any of TrainingJob.WORKER_FIELDS, while the job runs."""
    if _on_postgres(using):
        return _call(using, dbfunctions.UPDATE, [job_id, secret, _jsonable(fields)], ["bigint", "text", "jsonb"])
    _secret_check(job_id, secret, using)
    _fields_check(job_id, fields, TrainingJob.WORKER_FIELDS, "a running job's fields")
    return bool(
        TrainingJob.objects.using(using)
        .filter(pk=job_id, status=TrainingJob.Status.RUNNING)
        .update(heartbeat_at=timezone.now(), **fields)
    )


def training_job_progress_add(*, job_id: int, secret: str, row: dict, using: str) -> bool:
    """Append a progress row to the running job (a step logged twice keeps its first row)."""
    if _on_postgres(using):
        return _call(using, dbfunctions.PROGRESS, [job_id, secret, _jsonable(row)], ["bigint", "text", "jsonb"])

    _secret_check(job_id, secret, using)
    _fields_check(job_id, row, dbfunctions.progress_fields(), "a progress row's fields")
    if not TrainingJob.objects.using(using).filter(pk=job_id, status=TrainingJob.Status.RUNNING).exists():
        return False
    # A resumed phase may log a step again: the first row stays (one worker per job, so no race here).
    logged = JobProgress.objects.using(using).filter(job_id=job_id, phase=row.get("phase"), step=row.get("step"))
    if logged.exists():
        return False
    JobProgress.objects.using(using).bulk_create([JobProgress(job_id=job_id, **row)], ignore_conflicts=True)
    return True


def training_job_finish(*, job_id: int, secret: str, status: str, using: str, error: str = "", **fields) -> bool:
    """Record how a running job ended; a job already failed by the stale check stays failed."""
    if status == TrainingJob.Status.FAILED and not error:
        error = "The job failed without a reason: see the log tail."
    fields.setdefault("step_advanced_at", None)  # the step clock stops with the job
    if _on_postgres(using):
        try:
            return _call(
                using,
                dbfunctions.FINISH,
                [job_id, secret, status, error, _jsonable(fields)],
                ["bigint", "text", "text", "text", "jsonb"],
            )
        except IntegrityError:
            return False

    _secret_check(job_id, secret, using)
    if status not in dbfunctions.ENDINGS:
        raise PermissionDenied(
            f"job {job_id}: a gpu worker ends a job as {', '.join(dbfunctions.ENDINGS)}, not as {status}"
        )
    _fields_check(job_id, fields, TrainingJob.WORKER_FIELDS, "a running job's fields")
    jobs = TrainingJob.objects.using(using).filter(pk=job_id, status=TrainingJob.Status.RUNNING)
    if status == TrainingJob.Status.CANCELLED:
        jobs = jobs.filter(cancel_requested=True)
    try:
        return bool(
            jobs.update(status=status, error=error, finished_at=timezone.now(), heartbeat_at=timezone.now(), **fields)
        )
    except IntegrityError:
        return False


# --- preflights, worker side -------------------------------------------------------------------------------
# Checked like a job's writes: the preflight's secret, and queued → running → succeeded/failed only.


def _preflight_secret_check(preflight_id: int, secret: str | None, using: str) -> None:
    stored = (
        PreflightSecret.objects.using(using)
        .filter(preflight_id=preflight_id)
        .values_list("secret_sha256", flat=True)
        .first()
    )
    if stored is None or not secret or not hmac.compare_digest(stored, job_secret_hash(secret)):
        raise PermissionDenied(
            f"preflight {preflight_id}: the worker secret does not match; only the worker it was sent to may write it"
        )


def training_preflight_claim(*, preflight_id: int, secret: str, worker: str, using: str) -> bool:
    """Move a queued preflight to running; False when another worker has it."""
    if _on_postgres(using):
        return _call(
            using, dbfunctions.PREFLIGHT_CLAIM, [preflight_id, secret, worker[:200]], ["bigint", "text", "text"]
        )
    _preflight_secret_check(preflight_id, secret, using)
    now = timezone.now()
    return bool(
        TrainingPreflight.objects.using(using)
        .filter(pk=preflight_id, status=TrainingPreflight.Status.QUEUED)
        .update(status=TrainingPreflight.Status.RUNNING, started_at=now, updated_at=now, worker=worker[:200])
    )


def training_preflight_progress(*, preflight_id: int, secret: str, progress: float, message: str, using: str) -> bool:
    """Report how far a running preflight got, and what it is doing."""
    if _on_postgres(using):
        return _call(
            using,
            dbfunctions.PREFLIGHT_PROGRESS,
            [preflight_id, secret, float(progress), message],
            ["bigint", "text", "double precision", "text"],
        )
    _preflight_secret_check(preflight_id, secret, using)
    return bool(
        TrainingPreflight.objects.using(using)
        .filter(pk=preflight_id, status=TrainingPreflight.Status.RUNNING)
        .update(progress=max(0.0, min(1.0, progress)), message=message[:500], updated_at=timezone.now())
    )


def training_preflight_finish(*, preflight_id: int, secret: str, result: dict, using: str, message: str = "") -> bool:
    """Record a running preflight's result: passed when it found no error, failed (saying why) otherwise."""
    passed = bool(result.get("ok")) and not message
    if not passed and not message:
        message = " ".join(result.get("errors") or []) or "The preflight failed without a reason."
    if _on_postgres(using):
        return _call(
            using,
            dbfunctions.PREFLIGHT_FINISH,
            [preflight_id, secret, passed, message, _jsonable(result)],
            ["bigint", "text", "boolean", "text", "jsonb"],
        )
    _preflight_secret_check(preflight_id, secret, using)
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
