"""Reads for the judging pages, admin-only: generation runs, comparisons and their results, model cards."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from annotate import roles
from annotate import selectors as annotate_selectors
from annotate.models import Project
from evalsets.judging.models import Comparison, GenerationRun
from training.models import TrainingJob


def require_admin(user) -> None:
    if not roles.is_admin(user):
        raise PermissionDenied("Only Goldset admins can see generation runs, comparison results and model cards.")


def run_list_for_admin(*, user) -> QuerySet[GenerationRun]:
    require_admin(user)
    return GenerationRun.objects.select_related("evalset_version__project", "job", "created_by")


def run_get_for_admin(*, user, run_id: int) -> GenerationRun:
    require_admin(user)
    try:
        return GenerationRun.objects.select_related("evalset_version__project", "job").get(pk=run_id)
    except GenerationRun.DoesNotExist:
        raise Http404("No such generation run.") from None


def run_outputs_page(run: GenerationRun, limit: int = 50):
    return list(run.outputs.order_by("position")[:limit])


def comparison_list_for_admin(*, user) -> QuerySet[Comparison]:
    require_admin(user)
    return Comparison.objects.select_related("run_a", "run_b", "project")


def comparison_get_for_admin(*, user, comparison_id: int) -> Comparison:
    require_admin(user)
    try:
        return Comparison.objects.select_related(
            "run_a__evalset_version__project", "run_b__evalset_version__project", "project"
        ).get(pk=comparison_id)
    except Comparison.DoesNotExist:
        raise Http404("No such comparison.") from None


def job_get_for_admin(*, user, job_id: int) -> TrainingJob:
    """A training job whose adapter gets a model card."""
    require_admin(user)
    try:
        return TrainingJob.objects.select_related("snapshot").get(pk=job_id)
    except TrainingJob.DoesNotExist:
        raise Http404("No such training job.") from None


def project_get_for_admin(*, user, slug: str) -> Project:
    """A project's judging settings, as its other admin pages find it: 404 for non-members, 403 for members who
    are not admins."""
    return annotate_selectors.project_get_for_admin(user=user, slug=slug)
