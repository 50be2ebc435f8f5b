"""Writes for eval sets: freezing a version, and the contamination verdict on a training snapshot."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from annotate import roles
from annotate.models import AdminAction, Project, RubricVersion
from annotate.services.adminlog import admin_action_record
from config.background import send_on_commit
from evalsets import contamination
from evalsets.export import canonical_line, record_content_hash
from evalsets.models import (
    ContaminationCheckRun,
    ContaminationReport,
    EvalRecord,
    EvalSetVersion,
    HashVerification,
)
from evalsets.selectors import evalset_freeze_plan, summarize_records
from evalsets.tasks import contamination_check_run_task
from evalsets.verify import verify_all
from training.models import SnapshotCheck, SnapshotRecord, TrainingSnapshot

log = logging.getLogger(__name__)

BULK_BATCH = 1000
REPORT_TEXT_CHARS = 2000
REPORT_PAIRS = 200


@dataclass
class FreezeResult:
    version: EvalSetVersion
    refusals: list[dict[str, Any]]


def _rubric_labels(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = sorted({r["rubric_version_id"] for r in records if r["rubric_version_id"] is not None})
    versions = RubricVersion.objects.filter(pk__in=ids).select_related("rubric")
    return [{"id": v.pk, "label": str(v)} for v in sorted(versions, key=lambda v: v.pk)]


@transaction.atomic
def evalset_freeze(*, project: Project, user, changelog: str) -> FreezeResult:
    """Freeze the project's eligible eval-split items into a new write-once version, in one transaction."""
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins freeze eval sets.")
    changelog = (changelog or "").strip()
    if not changelog:
        raise ValidationError({"changelog": "Write a changelog note: what this version adds or fixes, and why."})
    # The project row lock serializes freezes of one project, so version numbers cannot race.
    project = Project.objects.select_for_update().get(pk=project.pk)
    previous = EvalSetVersion.objects.filter(project=project).order_by("-number").first()
    plan = evalset_freeze_plan(project=project)
    if not plan.records:
        reasons = "; ".join(f"item {r['item_id']}: {r['reason']}" for r in plan.refusals[:5]) or "no eval-split items"
        raise ValidationError(f"Nothing can be frozen: no eval item is eligible ({reasons}).")
    lines = [canonical_line(r) for r in plan.records]
    sha256 = hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
    if previous is not None and previous.sha256 == sha256:
        raise ValidationError(
            f"Nothing changed since {previous.name}: the eligible records hash the same ({sha256[:12]}…). "
            "Freeze again after items reach consensus or are adjudicated."
        )
    version = EvalSetVersion(
        project=project,
        number=(previous.number + 1) if previous else 1,
        previous=previous,
        sha256=sha256,
        record_count=len(plan.records),
        rubric_versions=_rubric_labels(plan.records),
        refusals=plan.refusals,
        changelog=changelog,
        frozen_by=user,
        frozen_at=timezone.now(),
        **summarize_records(plan.records),
    )
    version.full_clean()
    version.save()
    batch = []
    for record in plan.records:
        row = EvalRecord(version=version, content_hash=record_content_hash(record), **record)
        row.full_clean(exclude=["version"], validate_unique=False, validate_constraints=False)
        batch.append(row)
        if len(batch) >= BULK_BATCH:
            EvalRecord.objects.bulk_create(batch)
            batch = []
    if batch:
        EvalRecord.objects.bulk_create(batch)
    snapshot_checks_invalidate(version=version)
    admin_action_record(
        actor=user,
        action=AdminAction.Action.EVALSET_FREEZE,
        target=version,
        project=project,
        summary=f"Froze {version.name}: {version.record_count} records, sha256 {version.sha256[:12]}…",
        details={"version": version.number, "sha256": version.sha256, "records": version.record_count},
    )
    return FreezeResult(version=version, refusals=plan.refusals)


def snapshot_checks_invalidate(*, version: EvalSetVersion) -> int:
    """Block every snapshot whose passing check predates ``version``, and queue a re-check of each.

    A check only vouches for the eval sets that existed when it ran, and training (which cannot read
    eval tables) trusts the latest check; so a new version writes a failing, explained check first.
    """
    blocked = 0
    for snapshot in TrainingSnapshot.objects.order_by("pk"):
        latest = SnapshotCheck.objects.filter(snapshot=snapshot).order_by("-checked_at", "-id").first()
        if latest is None or not latest.passed:
            continue
        SnapshotCheck.objects.create(
            snapshot=snapshot,
            passed=False,
            evalset_versions=latest.evalset_versions,
            threshold=latest.threshold,
            report={
                "stale": True,
                "reason": f"Eval set {version.name} was frozen after this snapshot's last check; "
                "a new check is queued. Train once it passes.",
            },
        )
        snapshot_contamination_check_request(snapshot=snapshot)
        blocked += 1
    return blocked


# --- hash verification ---------------------------------------------------------------------------


def evalsets_verify(*, record: bool = True):
    """Recompute every eval set version's and training snapshot's sha256 from its rows; store each verdict."""
    outcomes = verify_all()
    if record and outcomes:
        HashVerification.objects.bulk_create(
            HashVerification(
                version_id=o.version_id,
                snapshot_id=o.snapshot_id,
                ok=o.ok,
                stored_sha256=o.stored_sha256,
                computed_sha256=o.computed_sha256,
                record_count=o.record_count,
                problems=o.problems,
            )
            for o in outcomes
        )
    return outcomes


# --- contamination -------------------------------------------------------------------------------

EVAL_FIELDS = ("prompt", "reference", "response", "chosen", "rejected")
TRAIN_FIELDS = ("prompt", "completion", "chosen", "rejected")


def _eval_texts(version_ids: list[int]):
    """Eval texts of the given versions, newest version first; a record repeated unchanged in an older
    version is indexed once (versions of one project mostly share their records)."""
    rows = (
        EvalRecord.objects.filter(version_id__in=version_ids)
        .order_by("-version_id", "position")
        .values_list("pk", "content_hash", *EVAL_FIELDS)
        .iterator(chunk_size=5000)
    )
    seen: set[str] = set()
    for pk, content_hash, *texts in rows:
        if content_hash in seen:
            continue
        seen.add(content_hash)
        for name, text in zip(EVAL_FIELDS, texts, strict=True):
            if text:
                yield (pk, name), text


def snapshot_prompt_text(messages: Any) -> str:
    """A snapshot record's prompt turns as one text (their contents, one per line)."""
    if isinstance(messages, list):
        return "\n".join(str(t.get("content", "")) for t in messages if isinstance(t, dict))
    return str(messages or "")


def _train_texts(snapshot: TrainingSnapshot):
    rows = (
        SnapshotRecord.objects.filter(snapshot=snapshot)
        .order_by("position")
        .values_list("pk", "messages", "completion", "chosen", "rejected")
        .iterator(chunk_size=5000)
    )
    for pk, messages, *texts in rows:
        for name, text in zip(TRAIN_FIELDS, [snapshot_prompt_text(messages), *texts], strict=True):
            if text:
                yield (pk, name), text


def _clip(text: str) -> str:
    return text if len(text) <= REPORT_TEXT_CHARS else text[:REPORT_TEXT_CHARS] + "…"


def _side_by_side(matches: list[contamination.Match]) -> list[dict[str, Any]]:
    """The offending pairs with both texts, for the report (the first REPORT_PAIRS)."""
    matches = matches[:REPORT_PAIRS]
    train = {
        r["pk"]: r
        for r in SnapshotRecord.objects.filter(pk__in={m.train_key[0] for m in matches}).values(
            "pk", "position", "source_item_id", "messages", "completion", "chosen", "rejected"
        )
    }
    evals = {
        r["pk"]: r
        for r in EvalRecord.objects.filter(pk__in={m.eval_key[0] for m in matches}).values(
            "pk", "item_id", "version_id", "version__number", "version__project__slug", *EVAL_FIELDS
        )
    }
    pairs = []
    for m in matches:
        t, e = train[m.train_key[0]], evals[m.eval_key[0]]
        t_field, e_field = m.train_key[1], m.eval_key[1]
        t_text = snapshot_prompt_text(t["messages"]) if t_field == "prompt" else t[t_field]
        pairs.append(
            {
                "kind": m.kind,
                "score": m.score,
                "train_coverage": round(m.train_coverage, 4),
                "eval_coverage": round(m.eval_coverage, 4),
                "shared_ngrams": m.shared_ngrams,
                "train": {
                    "record_id": t["pk"],
                    "position": t["position"],
                    "source_item_id": t["source_item_id"],
                    "field": t_field,
                    "text": _clip(t_text),
                },
                "eval": {
                    "record_id": e["pk"],
                    "item_id": e["item_id"],
                    "version_id": e["version_id"],
                    "version": f"{e['version__project__slug']}-eval-v{e['version__number']}",
                    "field": e_field,
                    "text": _clip(e[e_field]),
                },
            }
        )
    return pairs


@transaction.atomic
def snapshot_contamination_check_request(*, snapshot: TrainingSnapshot, created_by=None) -> ContaminationCheckRun:
    """Queue a contamination check of the snapshot on a worker; the returned row says how it goes."""
    run = ContaminationCheckRun(snapshot=snapshot, created_by=created_by)
    run.full_clean()
    run.save()
    send_on_commit(contamination_check_run_task, run.pk)
    return run


def contamination_check_run(*, run_id: int) -> ContaminationCheckRun | None:
    """Run a queued check (the worker's side), reporting its progress; a second delivery of the same message
    does nothing."""
    if not ContaminationCheckRun.claim(run_id, message="Indexing the eval sets and reading the snapshot"):
        return None
    run = ContaminationCheckRun.objects.select_related("snapshot").get(pk=run_id)
    try:
        check = snapshot_contamination_check(
            snapshot=run.snapshot,
            progress=lambda fraction, message: ContaminationCheckRun.report_progress(run_id, fraction, message),
        )
    except Exception as exc:
        log.exception("contamination check run %s failed", run_id)
        ContaminationCheckRun.finish(run_id, ContaminationCheckRun.Status.FAILED, f"The check could not run: {exc}")
    else:
        if check.passed:
            summary = f"Passed against {len(check.evalset_versions)} eval set version(s)"
        else:
            summary = check.report.get("reason") or (
                f"Failed: {check.report.get('offending_train_records', 0)} training record(s) overlap an eval set"
            )
        ContaminationCheckRun.finish(run_id, ContaminationCheckRun.Status.SUCCEEDED, summary, verdict=check)
    run.refresh_from_db()
    return run


# The check's stages and the share of the bar each ends at.
PROGRESS_INDEXED, PROGRESS_CHECKED = 0.3, 0.95
PROGRESS_EVERY_TEXTS = 5000


def _counted(texts, total: int, progress):
    """Pass the training texts through, reporting how far the check has got every few thousand texts."""
    for done, text in enumerate(texts, 1):
        if done % PROGRESS_EVERY_TEXTS == 0:
            share = min(done / total, 1.0) if total else 1.0
            progress(
                PROGRESS_INDEXED + (PROGRESS_CHECKED - PROGRESS_INDEXED) * share,
                f"Checked {done:,} of about {total:,} training texts",
            )
        yield text


def snapshot_contamination_check(
    *, snapshot: TrainingSnapshot, threshold: float | None = None, n: int | None = None, progress=None
) -> SnapshotCheck:
    """Check a training snapshot against every frozen eval set version and record the verdict.

    No transaction spans the check (it reads for seconds to minutes and must not hold SQLite's write
    lock); the versions are listed first and only their records are indexed, so the verdict names
    exactly what it was checked against. The verdict and its pairs are written in one transaction.
    """
    threshold = settings.CONTAMINATION_THRESHOLD if threshold is None else threshold
    n = settings.CONTAMINATION_NGRAM if n is None else n
    progress = progress or (lambda fraction, message: None)
    versions = list(EvalSetVersion.objects.select_related("project").order_by("pk"))
    index = contamination.EvalIndex(n=n).add(_eval_texts([v.pk for v in versions])).build()
    # About two texts per record (prompt and completion, or prompt, chosen and rejected).
    expected = 2 * snapshot.sft_count + 3 * snapshot.dpo_count
    progress(PROGRESS_INDEXED, f"Indexed {len(index):,} eval texts; checking the training texts")
    result = index.check(_counted(_train_texts(snapshot), expected, progress), threshold=threshold)
    progress(PROGRESS_CHECKED, "Writing the verdict")
    offending_ids = sorted({m.train_key[0] for m in result.matches})
    # The verdict's report is read by the trainer role: counts and training record ids only. The pairs,
    # which quote eval text, go to ContaminationReport on the evalsets side.
    report = {
        "n": n,
        "threshold": threshold,
        "texts_checked": result.texts_checked,
        "ngrams_checked": result.ngrams_checked,
        "eval_texts": len(index),
        "eval_ngrams": index.ngram_count,
        "offending_count": result.offending_count,
        "below_threshold_count": result.below_threshold_count,
        "offending_train_records": len(offending_ids),
        "offending_train_record_ids": offending_ids,
    }
    passed = result.passed
    frozen_meanwhile = list(
        EvalSetVersion.objects.exclude(pk__in=[v.pk for v in versions]).order_by("pk").values_list("pk", flat=True)
    )
    if frozen_meanwhile:
        # A version frozen while this check ran is not covered by it: never vouch for it.
        passed = False
        report["stale"] = True
        report["reason"] = (
            f"Eval set versions {frozen_meanwhile} were frozen while this check ran; run the check again."
        )
    check = SnapshotCheck(
        snapshot=snapshot,
        passed=passed,
        evalset_versions=[{"id": v.pk, "name": v.name, "sha256": v.sha256} for v in versions],
        threshold=threshold,
        report=report,
    )
    check.full_clean()
    pairs = _side_by_side(result.matches)
    with transaction.atomic():
        check.save()
        if pairs:
            ContaminationReport.objects.create(
                snapshot_check=check, pairs=pairs, pairs_truncated=result.offending_count > len(pairs)
            )
    return check
