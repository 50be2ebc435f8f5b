"""Capability regression: project checks, thresholds, and the base/adapter pair of suite runs."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from annotate.models import Project
from evalsets.judging import regression
from evalsets.judging.generate import DecodingConfig
from evalsets.judging.models import GenerationRun, RegressionCheck, RegressionThreshold
from evalsets.judging.services.runs import generation_run_start
from training.models import TrainingJob

DEFAULT_MAX_DROP = getattr(settings, "GOLDSET_REGRESSION_MAX_DROP", 0.05)


def regression_check_add(
    *, project: Project, category: str, prompt: str, kind: str, expected: str, tolerance: float = 0.0
) -> RegressionCheck:
    """Add a project's own check (prompt + exact / regex / numeric-with-tolerance answer)."""
    if not prompt.strip():
        raise ValidationError({"prompt": "Write the prompt the model is asked."})
    try:
        regression.validate_check(kind=kind, expected=expected, tolerance=tolerance)
    except ValueError as exc:
        raise ValidationError({"expected": str(exc)}) from exc
    check = RegressionCheck(
        project=project,
        category=(category or "project").strip()[:100],
        prompt=prompt.strip(),
        kind=kind,
        expected=expected.strip(),
        tolerance=tolerance,
    )
    check.full_clean()
    check.save()
    return check


def regression_threshold_set(*, project: Project, max_drop: float) -> RegressionThreshold:
    """How far a category's accuracy may drop before an adapter of this project's data is flagged."""
    if not 0 <= max_drop <= 1:
        raise ValidationError({"max_drop": "Give a share between 0 and 1 (0.05 flags drops of more than 5 points)."})
    threshold, _ = RegressionThreshold.objects.update_or_create(project=project, defaults={"max_drop": max_drop})
    return threshold


def job_project_ids(job: TrainingJob) -> list[int]:
    return sorted({s["project_id"] for s in (job.snapshot.sources or []) if s.get("project_id")})


def max_drop_for(job: TrainingJob) -> float:
    """The strictest threshold of the projects the adapter's snapshot came from (the default when none is set)."""
    drops = RegressionThreshold.objects.filter(project_id__in=job_project_ids(job)).values_list("max_drop", flat=True)
    return min(drops, default=DEFAULT_MAX_DROP)


@transaction.atomic
def regression_pair_start(
    *, job: TrainingJob, decoding: DecodingConfig, created_by, seed: int = 0, per_category: int = 50
) -> tuple[GenerationRun, GenerationRun]:
    """Queue the suite (built-in checks plus the checks of the adapter's projects) for the base model and for the
    adapter, with the same decoding settings."""
    if not 1 <= per_category <= 1000:
        raise ValidationError({"per_category": "Ask 1 to 1000 checks per category."})
    suite = {"seed": seed, "per_category": per_category, "project_ids": job_project_ids(job)}
    base = generation_run_start(
        label=f"base of job {job.pk}",
        decoding=decoding,
        created_by=created_by,
        base_model=job.base_model,
        regression=suite,
    )
    adapter = generation_run_start(
        label=f"job {job.pk} adapter", decoding=decoding, created_by=created_by, job=job, regression=suite
    )
    return base, adapter


def latest_regression_pair(job: TrainingJob) -> tuple[GenerationRun, GenerationRun] | None:
    """The adapter's latest finished suite run and a finished base run of the same suite, base and decoding."""
    done = GenerationRun.objects.filter(source=GenerationRun.Source.REGRESSION, status=GenerationRun.Status.SUCCEEDED)
    for adapter in done.filter(job=job).order_by("-finished_at", "-id"):
        base = (
            done.filter(job__isnull=True, base_model=job.base_model, suite__sha256=adapter.suite.get("sha256"))
            .order_by("-finished_at", "-id")
            .first()
        )
        if base is not None and base.decoding == adapter.decoding:
            return base, adapter
    return None
