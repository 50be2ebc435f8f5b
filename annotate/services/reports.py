"""Agreement reports: computed once per state of the data, inline when small, by a worker when large."""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max

from annotate.models import AgreementReport, Annotation, Item, ItemResult, Project, RubricVersion

logger = logging.getLogger(__name__)


def inline_limit() -> int:
    """Reports over this many annotations go to a Celery worker (setting GOLDSET_REPORT_INLINE_MAX)."""
    return int(getattr(settings, "GOLDSET_REPORT_INLINE_MAX", 20000))


def report_fingerprint(*, project: Project, rubric_version: RubricVersion | None) -> tuple[str, int]:
    """A digest of what the report depends on, and the number of annotations it covers."""
    annotations = Annotation.objects.filter(item__project=project, item__is_calibration=False).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    results = ItemResult.objects.filter(item__project=project).aggregate(n=Count("id"), last=Max("updated_at"))
    checks = Item.objects.filter(project=project, is_check=True).aggregate(n=Count("id"), last=Max("id"))
    state = (
        f"{annotations['n']}|{annotations['last']}|{results['n']}|{results['last']}|{checks['n']}|{checks['last']}"
        f"|{rubric_version.pk if rubric_version else ''}|{project.score_tolerance}"
    )
    return hashlib.sha256(state.encode()).hexdigest(), annotations["n"]


@transaction.atomic
def agreement_report_request(
    *, project: Project, rubric_version: RubricVersion | None = None, refresh: bool = False
) -> AgreementReport:
    """The report for the data as it is now: cached, computed on the spot, or queued for a worker."""
    from annotate.reports import report_rubric_version

    version = report_rubric_version(project=project, rubric_version=rubric_version)
    fingerprint, n = report_fingerprint(project=project, rubric_version=version)
    existing = (
        AgreementReport.objects.filter(project=project, rubric_version=version, fingerprint=fingerprint)
        .exclude(status=AgreementReport.Status.FAILED)
        .first()
    )
    if existing and not refresh:
        return existing
    # Reports of older states of the data are never shown again.
    AgreementReport.objects.filter(project=project, rubric_version=version).exclude(
        status__in=[AgreementReport.Status.QUEUED, AgreementReport.Status.RUNNING]
    ).delete()
    report = AgreementReport(project=project, rubric_version=version, fingerprint=fingerprint)
    report.full_clean()
    report.save()
    if n <= inline_limit():
        _compute(report)
    else:
        from annotate.tasks import agreement_report_compute

        agreement_report_compute.delay_on_commit(report.pk)
    return report


def agreement_report_run(*, report_id: int) -> None:
    """Compute a queued report (the worker's side); a second delivery of the same message does nothing."""
    claimed = AgreementReport.objects.filter(id=report_id, status=AgreementReport.Status.QUEUED).update(
        status=AgreementReport.Status.RUNNING, stage="Starting"
    )
    if not claimed:
        return
    _compute(AgreementReport.objects.select_related("project", "rubric_version").get(pk=report_id))


def _compute(report: AgreementReport) -> None:
    from annotate.reports import report_build

    def progress(fraction: float, stage: str) -> None:
        AgreementReport.objects.filter(pk=report.pk).update(progress=round(fraction, 3), stage=stage[:200])

    try:
        result = report_build(project=report.project, rubric_version=report.rubric_version, progress=progress)
    except Exception as exc:
        logger.exception("agreement report %s failed", report.pk)
        AgreementReport.objects.filter(pk=report.pk).update(
            status=AgreementReport.Status.FAILED, message=f"The report could not be computed: {exc}"
        )
        report.refresh_from_db()
        return
    AgreementReport.objects.filter(pk=report.pk).update(
        status=AgreementReport.Status.DONE, result=result, progress=1.0, stage="Done"
    )
    report.refresh_from_db()
