"""Reads for the training pages, admin-only, with what the pages compute from rows (queue places, ETA, chart)."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from datetime import timedelta

from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from annotate import roles
from annotate.audit import matcher
from training.config import TrainingConfig, config_help
from training.curation import audit_record
from training.errors import TRAINING_MODULES
from training.models import (
    AuditAcknowledgement,
    JobProgress,
    SnapshotAudit,
    SnapshotRecord,
    TrainingJob,
    TrainingPreflight,
    TrainingSnapshot,
)


def require_admin(user) -> None:
    if not roles.is_admin(user):
        raise PermissionDenied("Only Goldset admins can see and launch training.")


def snapshot_list_for_admin(*, user) -> QuerySet[TrainingSnapshot]:
    require_admin(user)
    return TrainingSnapshot.objects.prefetch_related("checks")


def snapshot_get_for_admin(*, user, snapshot_id: int) -> TrainingSnapshot:
    require_admin(user)
    try:
        return TrainingSnapshot.objects.get(pk=snapshot_id)
    except TrainingSnapshot.DoesNotExist:
        raise Http404("No such snapshot.") from None


def queue_positions() -> dict[int, int]:
    """Job id → place in the gpu queue (1 = next to start), in the order they were queued."""
    queued = TrainingJob.objects.filter(status=TrainingJob.Status.QUEUED).order_by("queued_at", "id")
    return {job_id: place for place, job_id in enumerate(queued.values_list("id", flat=True), start=1)}


def job_list_for_admin(*, user) -> list[TrainingJob]:
    """All jobs, newest first, each with ``queue_place`` (None unless queued)."""
    require_admin(user)
    places = queue_positions()
    jobs = list(TrainingJob.objects.select_related("snapshot", "created_by")[:200])
    for job in jobs:
        job.queue_place = places.get(job.pk)
    return jobs


JOBS_PER_PAGE = 50


def job_page_for_admin(*, user, status: str = "", q: str = "", page=None):
    """One page of jobs, newest first, filtered by status and searched by base model or snapshot name (or
    "#id"); each job on the page has ``queue_place``."""
    require_admin(user)
    jobs = TrainingJob.objects.select_related("snapshot", "created_by").order_by("-created_at", "-id")
    if status:
        jobs = jobs.filter(status=status)
    if q:
        match = Q(base_model__icontains=q) | Q(snapshot__name__icontains=q)
        if q.lstrip("#").isdigit():
            match |= Q(pk=int(q.lstrip("#")))
        jobs = jobs.filter(match)
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(page)
    places = queue_positions()
    for job in page:
        job.queue_place = places.get(job.pk)
    return page


def job_get_for_admin(*, user, job_id: int) -> TrainingJob:
    require_admin(user)
    try:
        job = TrainingJob.objects.select_related("snapshot", "retry_of").get(pk=job_id)
    except TrainingJob.DoesNotExist:
        raise Http404("No such job.") from None
    job.queue_place = queue_positions().get(job.pk)
    return job


def job_cancel_requested(*, job_id: int, using: str) -> bool:
    """Whether someone asked this job to stop (the gpu worker polls it between steps)."""
    return TrainingJob.objects.using(using).filter(pk=job_id, cancel_requested=True).exists()


def job_eta(job: TrainingJob, rows: list[JobProgress] | None = None, now=None) -> timedelta | None:
    """Time left in the current phase, from the pace between its progress rows (model loading excluded)."""
    if job.status != TrainingJob.Status.RUNNING or not job.step or not job.total_steps or not job.started_at:
        return None
    phase_rows = [r for r in rows or [] if r.phase == job.phase]
    if len(phase_rows) >= 2 and phase_rows[-1].step > phase_rows[0].step:
        first, last = phase_rows[0], phase_rows[-1]
        per_step = (last.created_at - first.created_at) / (last.step - first.step)
    else:
        per_step = ((now or timezone.now()) - job.started_at) / job.step
    return timedelta(seconds=round((per_step * max(0, job.total_steps - job.step)).total_seconds()))


def _ticks(low: float, high: float, count: int = 3) -> list[float]:
    if high == low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _step_label(value: float) -> str:
    return str(round(value))


def _loss_labels(values: list[float]) -> list[str]:
    """Three significant digits, or as many more as it takes to tell the ticks apart (a flat loss curve)."""
    for digits in range(3, 8):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def loss_chart(rows: list[JobProgress], *, width: int = 640, height: int = 200) -> dict:
    """One inline SVG panel per phase (SFT and DPO losses live on different scales), with labelled axes."""
    left, right, top, bottom = 56, 12, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(r.phase, r.step, r.loss) for r in rows if r.loss is not None and math.isfinite(r.loss)]
    panels = []
    for phase in dict.fromkeys(p for p, _, _ in points):
        mine = [(s, v) for p, s, v in points if p == phase]
        xmin, xmax = min(s for s, _ in mine), max(s for s, _ in mine)
        ymin, ymax = min(v for _, v in mine), max(v for _, v in mine)
        xspan, yspan = (xmax - xmin) or 1, (ymax - ymin) or 1.0

        def x(step, xmin=xmin, xspan=xspan):
            return left + (step - xmin) / xspan * plot_w

        def y(value, ymin=ymin, yspan=yspan):
            return top + (1 - (value - ymin) / yspan) * plot_h

        panels.append(
            {
                "phase": phase,
                "title": f"{phase.upper()} loss",
                # SFT's loss is the mean cross-entropy per answer token; DPO's the mean -log σ(margin) per pair.
                "y_title": "Loss (nats/pair)" if phase == "dpo" else "Loss (nats/token)",
                "points": " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in mine),
                "x_ticks": [{"at": round(x(t), 1), "label": _step_label(t)} for t in _ticks(xmin, xmax)],
                "y_ticks": [
                    {"at": round(y(t), 1), "label": label}
                    for t, label in zip(_ticks(ymin, ymax), _loss_labels(_ticks(ymin, ymax)), strict=True)
                ],
                "ymin": ymin,
                "ymax": ymax,
                "last": mine[-1],
            }
        )
    return {
        "panels": panels,
        "width": width,
        "height": height,
        "plot": {"left": left, "right": width - right, "top": top, "bottom": height - bottom},
        "x_title": {"x": left + plot_w / 2, "y": height - 4},
        "y_title": {"x": 14, "y": top + plot_h / 2},
    }


METRICS_PER_PAGE = 25


def job_metrics_page(job: TrainingJob, page_number) -> Page:
    """Every logged step of a job, newest first, one page at a time."""
    rows = job.progress.order_by("-id")
    return Paginator(rows, METRICS_PER_PAGE).get_page(page_number)


METRIC_COLUMNS = [
    "phase",
    "step",
    "total_steps",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "reward_margin",
    "reward_accuracy",
]


def job_metrics_rows(job: TrainingJob) -> Iterator[list]:
    """Every logged step of a job, oldest first, as CSV rows under a header (the data behind its loss chart)."""
    yield METRIC_COLUMNS
    yield from job.progress.order_by("id").values_list(*METRIC_COLUMNS)


def job_config_rows(job: TrainingJob) -> list[dict]:
    """The job's config as rows for a table: name, value, default, whether it differs, and its help."""
    helps = config_help()
    defaults = TrainingConfig().to_dict()
    # The dataclass's order (related settings together), not the database's: jsonb keeps its own key order.
    names = [*defaults, *(name for name in job.config if name not in defaults)]
    rows = []
    for name in (n for n in names if n in job.config):
        value, default = job.config[name], defaults.get(name)
        shown = ", ".join(value) if isinstance(value, list) else value
        rows.append(
            {"name": name, "value": shown, "default": default, "changed": value != default, "help": helps.get(name, "")}
        )
    return rows


def _gib(value) -> str:
    return f"{value / 2**30:.1f} GiB" if value else "—"


def manifest_summary(manifest: dict) -> list[tuple[str, str]]:
    """The manifest's facts an admin checks first, as (label, value) rows; the full JSON stays below them."""
    if not manifest:
        return []
    code = manifest.get("code_version") or {}
    base = manifest.get("base_model") or {}
    hardware = manifest.get("hardware") or {}
    rows = [
        (
            "Code",
            " · ".join(
                filter(
                    None,
                    [
                        f"goldset {code['goldset']}" if code.get("goldset") else None,
                        f"commit {code['git_commit'][:12]}" if code.get("git_commit") else None,
                        "with local changes" if code.get("git_dirty") else None,
                    ],
                )
            )
            or "unknown",
        ),
        (
            "Base model",
            f"{base.get('path') or base.get('id')} · "
            + (f"sha256 {base['sha256'][:16]}…" if base.get("sha256") else f"revision {base.get('revision') or '?'}"),
        ),
        (
            "Hardware",
            ", ".join(g["name"] for g in hardware.get("gpus") or []) or f"CPU ({hardware.get('cpu_count')} cores)",
        ),
        (
            "CUDA / driver",
            f"CUDA {hardware.get('cuda') or '—'}, cuDNN {hardware.get('cudnn') or '—'}, "
            f"driver {hardware.get('driver') or '—'}",
        ),
    ]
    for phase, metrics in (manifest.get("metrics") or {}).items():
        if "reused_from" in metrics:
            rows.append((phase.upper(), f"reused from {metrics['reused_from']}"))
            continue
        batch = metrics.get("batch") or {}
        fit = metrics.get("fit") or {}
        rows.append(
            (
                phase.upper(),
                f"{metrics.get('steps')} steps, global batch {batch.get('global')} "
                f"({batch.get('per_device')} per device × {batch.get('gradient_accumulation')} accumulation × "
                f"{batch.get('processes')} process(es)), warmup {metrics.get('warmup_steps')} step(s), "
                f"adapter weights {metrics.get('adapter_dtype')}, peak {_gib(metrics.get('peak_gpu_bytes'))}",
            )
        )
        rows.append(
            (
                f"{phase.upper()} examples",
                f"{fit.get('examples', metrics.get('examples'))} in the snapshot: {fit.get('prompt_truncated', 0)} "
                f"with the prompt cut from the left, {fit.get('left_out', 0)} left out (answer longer than max_length)",
            )
        )
    return rows


def preflight_get_for_admin(*, user, preflight_id: int) -> TrainingPreflight:
    require_admin(user)
    try:
        return TrainingPreflight.objects.select_related("snapshot", "job").get(pk=preflight_id)
    except TrainingPreflight.DoesNotExist:
        raise Http404("No such preflight.") from None


def training_extra_installed() -> bool:
    """Whether this process could import the training stack (checked without importing it)."""
    return all(importlib.util.find_spec(name) is not None for name in TRAINING_MODULES)


def job_progress_context(job: TrainingJob) -> dict:
    rows = list(job.progress.order_by("id"))
    percent = round(100 * job.step / job.total_steps) if job.total_steps else (100 if job.status == "succeeded" else 0)
    return {
        "job": job,
        "percent": percent,
        "eta": job_eta(job, rows),
        "chart": loss_chart(rows),
        "finished": job.is_finished,
    }


# --- Audits and curation -------------------------------------------------------------------------------


def audit_get_for_admin(*, user, audit_id: int) -> SnapshotAudit:
    require_admin(user)
    try:
        return SnapshotAudit.objects.select_related("snapshot").get(pk=audit_id)
    except SnapshotAudit.DoesNotExist:
        raise Http404("No such audit.") from None


def snapshot_audit_latest(snapshot: TrainingSnapshot) -> SnapshotAudit | None:
    return SnapshotAudit.objects.filter(snapshot=snapshot).order_by("-created_at", "-id").first()


def audit_acknowledgements(audit: SnapshotAudit) -> dict[str, AuditAcknowledgement]:
    return {a.finding_key: a for a in audit.acknowledgements.select_related("acknowledged_by")}


def audit_examples(audit: SnapshotAudit) -> dict[int, dict]:
    """The example records the audit's findings point at: record id → {position, item, prompt, answer, rejected}."""
    ids = {rid for f in audit.findings for rid in f.get("examples", [])}
    ids |= {rid for f in audit.findings for v in f.get("values", []) for rid in v.get("examples", [])}
    out = {}
    for record in SnapshotRecord.objects.filter(snapshot=audit.snapshot, pk__in=ids):
        prompt = " / ".join(m.get("content", "") for m in record.messages if m.get("role") != "system")
        out[record.pk] = {
            "position": record.position,
            "item_id": record.source_item_id,
            "prompt": prompt,
            "answer": record.completion or record.chosen,
            "rejected": record.rejected,
            "source": (record.lineage or {}).get("source", ""),
        }
    return out


def finding_item_ids(audit: SnapshotAudit, finding: dict) -> list[int]:
    """The items of every example of the snapshot a finding is about (for sending them back, say)."""
    matches = matcher(finding)
    if matches is None:
        return []
    rows = SnapshotRecord.objects.filter(snapshot=audit.snapshot).values(
        "kind", "messages", "completion", "chosen", "rejected", "source_item_id", "lineage"
    )
    return sorted({row["source_item_id"] for row in rows.iterator(chunk_size=5000) if matches(audit_record(row))})


def snapshot_diff(old: TrainingSnapshot, new: TrainingSnapshot, *, examples: int = 10) -> dict:
    """What changed from one snapshot to another, by source item: added, removed and changed records, counts by
    kind and provenance, examples, and the audit findings that appeared or went away."""

    def index(snapshot):
        rows = SnapshotRecord.objects.filter(snapshot=snapshot).values_list(
            "source_item_id", "kind", "content_hash", "lineage", "position"
        )
        return {(item, kind): (content, lineage or {}, position) for item, kind, content, lineage, position in rows}

    before, after = index(old), index(new)
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(k for k in after.keys() & before.keys() if after[k][0] != before[k][0])

    def tally(keys, side):
        kinds, provenances = {}, {}
        for key in keys:
            kinds[key[1]] = kinds.get(key[1], 0) + 1
            provenance = side[key][1].get("provenance", "unknown")
            provenances[provenance] = provenances.get(provenance, 0) + 1
        return {"kinds": kinds, "provenances": provenances}

    def findings(snapshot):
        audit = snapshot_audit_latest(snapshot)
        return {f["key"]: f for f in (audit.findings if audit else []) if f.get("gate") in ("block", "warn")}

    old_findings, new_findings = findings(old), findings(new)
    return {
        "old": old,
        "new": new,
        "added": {"count": len(added), **tally(added, after), "items": [k[0] for k in added[:examples]]},
        "removed": {"count": len(removed), **tally(removed, before), "items": [k[0] for k in removed[:examples]]},
        "changed": {"count": len(changed), **tally(changed, after), "items": [k[0] for k in changed[:examples]]},
        "unchanged": len(after.keys() & before.keys()) - len(changed),
        "findings_gone": [old_findings[k] for k in sorted(old_findings.keys() - new_findings.keys())],
        "findings_new": [new_findings[k] for k in sorted(new_findings.keys() - old_findings.keys())],
        "findings_kept": [new_findings[k] for k in sorted(new_findings.keys() & old_findings.keys())],
    }
