"""Celery tasks of the eval sets app (default queue: the web side's worker, app role)."""

from celery import shared_task


@shared_task(acks_late=True)
def snapshot_contamination_check_run(snapshot_id: int) -> None:
    """Check one training snapshot against every frozen eval set version and record the verdict.

    A redelivered message only adds a second, identical verdict (checks are append-only and the
    latest one counts), so no claim step is needed.
    """
    from evalsets.services import snapshot_contamination_check
    from training.models import TrainingSnapshot

    snapshot = TrainingSnapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        return
    snapshot_contamination_check(snapshot=snapshot)


@shared_task(acks_late=True)
def contamination_check_run_task(run_id: int) -> None:
    """Run one requested contamination check (a ``ContaminationCheckRun`` row, claimed first)."""
    from evalsets.services import contamination_check_run

    contamination_check_run(run_id=run_id)
