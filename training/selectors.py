"""Reads for the training pages, admin-only, with what the pages compute from rows (queue places, ETA, chart)."""

from __future__ import annotations

import math
from datetime import timedelta

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from annotate import roles
from training.models import JobProgress, TrainingJob, TrainingSnapshot


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


def job_get_for_admin(*, user, job_id: int) -> TrainingJob:
    require_admin(user)
    try:
        job = TrainingJob.objects.select_related("snapshot", "retry_of").get(pk=job_id)
    except TrainingJob.DoesNotExist:
        raise Http404("No such job.") from None
    job.queue_place = queue_positions().get(job.pk)
    return job


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


def loss_chart(rows: list[JobProgress], *, width: int = 640, height: int = 180) -> dict:
    """Polyline points per phase for an inline SVG loss chart (no JavaScript needed)."""
    points = [(r.phase, r.step, r.loss) for r in rows if r.loss is not None and math.isfinite(r.loss)]
    if not points:
        return {"series": [], "width": width, "height": height}
    phases = list(dict.fromkeys(p for p, _, _ in points))
    # Phases run one after another: lay them out side by side on one x axis.
    offsets, x = {}, 0
    for phase in phases:
        offsets[phase] = x
        x += max(s for p, s, _ in points if p == phase)
    xmax = max(x, 1)
    ymin = min(v for _, _, v in points)
    ymax = max(v for _, _, v in points)
    span = (ymax - ymin) or 1.0
    pad = 8
    series = []
    for phase in phases:
        coords = [
            (pad + (offsets[phase] + s) / xmax * (width - 2 * pad), pad + (ymax - v) / span * (height - 2 * pad))
            for p, s, v in points
            if p == phase
        ]
        series.append({"phase": phase, "points": " ".join(f"{a:.1f},{b:.1f}" for a, b in coords)})
    return {"series": series, "width": width, "height": height, "ymin": ymin, "ymax": ymax}


def job_progress_context(job: TrainingJob) -> dict:
    rows = list(job.progress.order_by("id"))
    last = rows[-1] if rows else None
    percent = round(100 * job.step / job.total_steps) if job.total_steps else (100 if job.status == "succeeded" else 0)
    return {
        "job": job,
        "rows": rows[-10:],
        "last": last,
        "percent": percent,
        "eta": job_eta(job, rows),
        "chart": loss_chart(rows),
        "finished": job.is_finished,
    }
