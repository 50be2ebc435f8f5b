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
def background_sweep() -> dict:
    """Fail imports whose worker died, and send again the ones the broker lost (Celery beat, every minute)."""
    from annotate.services.imports import import_batches_fail_abandoned, import_batches_requeue

    return {"failed": import_batches_fail_abandoned(), "requeued": import_batches_requeue()}
