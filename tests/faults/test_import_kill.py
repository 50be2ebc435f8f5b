"""SIGKILL the worker in the middle of an import: nothing of it is visible, the batch ends failed with the
reason, and a retry imports the whole file."""

import io

import pytest

from annotate.models import ImportBatch, Item
from annotate.services import imports
from tests.faults.workers import kill, start_default_worker, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROWS = 60_000


def _upload() -> bytes:
    return imports.sample_bytes(
        [{"prompt": f"Where is order {i}? " + "x" * 40, "response": f"It ships on day {i}."} for i in range(ROWS)]
    )


def test_a_killed_import_leaves_nothing_is_failed_with_the_reason_and_can_be_retried(
    project, admin_user, settings, tmp_path
):
    settings.GOLDSET_IMPORT_INLINE_MAX_BYTES = 1  # through the worker
    settings.MEDIA_ROOT = settings.VAR_DIR / "media"
    log = tmp_path / "worker.log"
    batch = imports.import_batch_submit(
        project=project, uploaded_by=admin_user, upload=io.BytesIO(_upload()), filename="orders.jsonl"
    )
    assert batch.status == ImportBatch.Status.QUEUED
    worker = start_default_worker(log, env={"GOLDSET_IMPORT_INLINE_MAX_BYTES": "1"})
    try:
        # Mid-import: in the write pass, inside its one transaction.
        wait_for(
            lambda: ImportBatch.objects.filter(pk=batch.pk, message__startswith="Writing").exists(),
            timeout=180,
            what="the worker to start writing",
            log_path=log,
            every=0.02,
        )
    finally:
        kill(worker)
    assert Item.objects.filter(project=project).count() == 0, "a partial import is visible"
    batch.refresh_from_db()
    assert batch.status == ImportBatch.Status.RUNNING  # what the dead worker left

    # The page (and the periodic sweep) see the worker is gone and say so.
    from django.test import Client

    client = Client()
    client.force_login(admin_user)
    page = client.get(f"/projects/{project.slug}/imports/{batch.pk}/").content.decode()
    batch.refresh_from_db()
    assert batch.status == ImportBatch.Status.FAILED
    assert "stopped before it finished" in batch.message and "nothing was imported" in batch.message
    assert "stopped before it finished" in page and "Retry the import" in page
    assert Item.objects.filter(project=project).count() == 0

    # Retry it: a new worker imports the whole file, once.
    response = client.post(f"/projects/{project.slug}/imports/{batch.pk}/retry/")
    assert response.status_code == 302
    worker = start_default_worker(log)
    try:
        wait_for(
            lambda: ImportBatch.objects.filter(pk=batch.pk, status__in=["succeeded", "failed"]).exists(),
            timeout=240,
            what="the retried import",
            log_path=log,
        )
    finally:
        kill(worker)
    batch.refresh_from_db()
    assert batch.status == ImportBatch.Status.SUCCEEDED, batch.message
    assert batch.rows_imported == ROWS == Item.objects.filter(project=project).count()


def test_a_live_worker_is_never_taken_for_a_dead_one(project, admin_user):
    """The sweep fails only batches whose lock is free: one held by a live run stays RUNNING."""
    from config import liveness

    batch = imports.import_batch_create(
        project=project, uploaded_by=admin_user, filename="a.jsonl", upload=io.BytesIO(b"{}\n")
    )
    ImportBatch.objects.filter(pk=batch.pk).update(status="running")
    import psycopg
    from django.db import connections

    params = connections["default"].get_connection_params()
    with psycopg.connect(**params) as other:  # another process's session holds the lock
        other.execute("SELECT pg_advisory_lock(%s, %s)", [liveness._namespace(imports.LIVENESS), batch.pk])
        assert imports.import_batches_fail_abandoned() == []
    assert imports.import_batches_fail_abandoned() == [batch.pk]
