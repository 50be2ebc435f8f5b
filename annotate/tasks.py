"""Celery tasks of the annotate app (queue "default"): ids in, services do the work."""

from celery import shared_task


@shared_task(name="annotate.tasks.agreement_report_compute", ignore_result=True)
def agreement_report_compute(report_id: int) -> None:
    """Compute a queued agreement report, writing progress onto its row."""
    from annotate.services.reports import agreement_report_run

    agreement_report_run(report_id=report_id)


@shared_task(acks_late=True)
def import_run(batch_id: int) -> None:
    """Import an uploaded file; a batch that is no longer queued (already claimed) is skipped."""
    from annotate.services.imports import import_batch_run

    import_batch_run(batch_id=batch_id)


@shared_task(name="annotate.tasks.background_sweep", ignore_result=True)
def background_sweep(older_than_s: float = 60) -> dict:
    """Fail imports whose worker died, and send again the imports, agreement reports, snapshot audits and
    contamination checks the broker lost (Celery beat, every minute)."""
    from annotate.models import AgreementReport
    from annotate.services.imports import import_batches_fail_abandoned, import_batches_requeue
    from config.background import requeue
    from evalsets.models import ContaminationCheckRun
    from evalsets.tasks import contamination_check_run_task
    from training.models import SnapshotAudit
    from training.tasks import snapshot_audit_run_task

    return {
        "failed": import_batches_fail_abandoned(),
        "requeued": import_batches_requeue(older_than_s=older_than_s),
        "reports": requeue(AgreementReport, agreement_report_compute, older_than_s=older_than_s),
        "audits": requeue(SnapshotAudit, snapshot_audit_run_task, older_than_s=older_than_s),
        "checks": requeue(ContaminationCheckRun, contamination_check_run_task, older_than_s=older_than_s),
    }


@shared_task(name="annotate.tasks.export_lines_refresh", ignore_result=True)
def export_lines_refresh() -> dict:
    """Build the annotation-export lines that changes outdated, new items included (Celery beat, every
    minute; at most ``REFRESH_BUDGET_S`` a run, the next run goes on)."""
    from annotate.export_cache import refresh

    return refresh()
