"""Celery tasks of the eval sets app (default queue: the web side's worker, app role)."""

from celery import shared_task


@shared_task(acks_late=True)
def snapshot_contamination_check_run(snapshot_id: int, run_id: int | None = None) -> None:
    """Check one training snapshot against every frozen eval set version and record the verdict.

    With a run (every check queued since runs exist), the run is claimed first, so a redelivered message
    does nothing, and it carries the progress. Without one (a message queued before), a redelivery only
    adds a second, identical verdict: checks are append-only and the latest one counts.
    """
    from evalsets.services import contamination_run, snapshot_contamination_check
    from training.models import TrainingSnapshot

    if run_id is not None:
        contamination_run(run_id=run_id)
        return
    snapshot = TrainingSnapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        return
    snapshot_contamination_check(snapshot=snapshot)
