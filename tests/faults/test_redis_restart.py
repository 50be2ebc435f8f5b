"""Redis (the broker) stopped and restarted, empty, while reviewers work: submitting annotations never needs
it, and background work whose message was lost or never sent is sent again by the sweep, then runs once.

The Redis here is the test's own redis-server on a free port, never the machine's shared one."""

import io

import pytest
from django.test import Client

from annotate.models import AgreementReport, Annotation, ImportBatch, Item, Lease
from annotate.services import imports
from annotate.tasks import background_sweep
from tests.factories import make_item
from tests.faults.workers import PrivateRedis, kill, start_default_worker, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis(tmp_path, settings):
    """A private broker, and this process's Celery app pointed at it."""
    from config.celery import app

    server = PrivateRedis(tmp_path)
    server.start()
    saved = app.conf.broker_url
    app.conf.broker_url = settings.CELERY_BROKER_URL = server.url
    app._pool = None
    app.amqp._producer_pool = None
    # Fail fast while it is down, instead of retrying the connection for long.
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "max_retries": 1}
    app.conf.broker_connection_timeout = 1
    app.conf.task_publish_retry_policy = {"max_retries": 0}
    yield server
    server.stop()
    app.conf.broker_url = saved
    app._pool = None
    app.amqp._producer_pool = None


def _submit_all(client, project) -> int:
    """Work the queue as a reviewer does, through the pages, until it is empty; returns the submissions."""
    done = 0
    while True:
        lease = Lease.objects.filter(project=project, reviewer__username="alice", status="active").first()
        if lease is None:
            client.get(f"/projects/{project.slug}/queue/")
            lease = Lease.objects.filter(project=project, reviewer__username="alice", status="active").first()
            if lease is None:
                return done
        response = client.post(
            f"/projects/{project.slug}/queue/leases/{lease.pk}/submit/",
            {"action": "write", "answer": f"An answer {done}."},
            HTTP_HX_REQUEST="true",
        )
        assert response.status_code == 200, response.content[:300]
        done += 1


def test_reviewers_submit_while_redis_is_down_and_lost_work_is_sent_again(
    redis, project, alice, admin_user, settings, tmp_path
):
    settings.GOLDSET_IMPORT_INLINE_MAX_BYTES = 1
    project.task_kinds = ["gold"]
    project.save()
    for _ in range(6):
        make_item(project, "gold")
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(50)]

    # Queued with Redis up; then Redis restarts empty (no persistence): the message is gone.
    first = imports.import_batch_submit(
        project=project, uploaded_by=admin_user, upload=io.BytesIO(imports.sample_bytes(rows[:25])), filename="a.jsonl"
    )
    redis.stop()

    # Reviewers keep working while it is down.
    reviewer = Client()
    reviewer.force_login(alice)
    assert _submit_all(reviewer, project) == 6
    assert Annotation.objects.filter(reviewer=alice).count() == 6

    # An upload while it is down is kept, queued, and the page answers.
    page = Client()
    page.force_login(admin_user)
    response = page.post(
        f"/projects/{project.slug}/imports/",
        {"file": _file("b.jsonl", imports.sample_bytes(rows[25:])), "mode": "all_or_nothing", "provenance": "human"},
    )
    assert response.status_code in {200, 302}, response.content[:300]
    second = ImportBatch.objects.exclude(pk=first.pk).get()
    assert second.status == ImportBatch.Status.QUEUED
    # So is an agreement report asked for while it is down (bigger than the inline limit: a worker's job).
    settings.GOLDSET_REPORT_INLINE_MAX = 1
    response = page.post(f"/projects/{project.slug}/report/compute/")
    assert response.status_code == 302, response.content[:300]
    report = AgreementReport.objects.get(project=project)
    assert report.status == AgreementReport.Status.QUEUED

    redis.start()  # empty: neither message is in it
    log = tmp_path / "worker.log"
    worker = start_default_worker(log, env={"REDIS_URL": redis.url})
    try:
        swept = background_sweep(older_than_s=0)
        assert sorted(swept["requeued"]) == sorted([first.pk, second.pk]) and swept["reports"] == [report.pk]
        wait_for(
            lambda: (
                ImportBatch.objects.filter(status="succeeded").count() == 2
                and AgreementReport.objects.filter(pk=report.pk, status="succeeded").exists()
            ),
            timeout=120,
            what="both imports to run",
            log_path=log,
        )
        # Sent again once more: the claim makes the duplicate harmless.
        imports.import_batches_requeue(older_than_s=0)
    finally:
        kill(worker)
    assert Item.objects.filter(project=project, prompt__startswith="Question").count() == 50


def _file(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="application/x-ndjson")
