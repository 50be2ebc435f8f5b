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
