"""Agreement reports: computed once per state of the data, inline when small, by a worker when large."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from annotate import selectors
from annotate.models import AgreementReport, Project, RubricVersion
from annotate.reports import report_build, report_rubric_version
from annotate.tasks import agreement_report_compute
from config.background import send_on_commit

logger = logging.getLogger(__name__)


def inline_limit() -> int:
    """Reports over this many annotations go to a Celery worker (setting GOLDSET_REPORT_INLINE_MAX)."""
    return int(getattr(settings, "GOLDSET_REPORT_INLINE_MAX", 20000))


@transaction.atomic
def agreement_report_request(
    *, project: Project, rubric_version: RubricVersion | None = None, refresh: bool = False
) -> AgreementReport:
    """The report for the data as it is now: the one already made for it, or a new one computed on the
    spot (small projects) or queued for a worker. ``refresh`` makes a new one even if one exists."""
    version = report_rubric_version(project=project, rubric_version=rubric_version)
    fingerprint, n = selectors.report_fingerprint(project=project, rubric_version=version)
    existing = selectors.agreement_report_for_fingerprint(
        project=project, rubric_version=version, fingerprint=fingerprint
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
        AgreementReport.claim(report.pk)
        _compute(report)
    else:
        send_on_commit(agreement_report_compute, report.pk)
    report.refresh_from_db()
    return report


def agreement_report_run(*, report_id: int) -> None:
    """Compute a queued report (the worker's side); a second delivery of the same message does nothing."""
    if not AgreementReport.claim(report_id):
        return
    _compute(AgreementReport.objects.select_related("project", "rubric_version").get(pk=report_id))


def _compute(report: AgreementReport) -> None:
    def progress(fraction: float, stage: str) -> None:
        AgreementReport.report_progress(report.pk, fraction, stage)

    try:
        result = report_build(project=report.project, rubric_version=report.rubric_version, progress=progress)
    except Exception as exc:
        logger.exception("agreement report %s failed", report.pk)
        AgreementReport.finish(report.pk, AgreementReport.Status.FAILED, f"The report could not be computed: {exc}")
        return
    AgreementReport.finish(report.pk, AgreementReport.Status.SUCCEEDED, "Done", result=result)
