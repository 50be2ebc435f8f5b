"""The report's Celery path with a real worker: the page queues it, the worker computes it."""

import time

import pytest
from django.test import override_settings

from annotate.models import AgreementReport
from tests.factories import annotate, make_item, pref

pytestmark = pytest.mark.django_db(transaction=True)


@override_settings(GOLDSET_REPORT_INLINE_MAX=1)
def test_a_worker_computes_a_queued_report_and_writes_progress(project, alice, bob):
    from celery.contrib.testing.worker import start_worker

    from annotate.services.reports import agreement_report_request
    from config.celery import app

    for i in range(6):
        item = make_item(project, "preference")
        annotate(item, alice, pref(chosen=i % 2, rejected=1 - i % 2))
        annotate(item, bob, pref(chosen=0, rejected=1))
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["default"], shutdown_timeout=10):
        row = agreement_report_request(project=project)
        assert row.status == AgreementReport.Status.QUEUED
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row.refresh_from_db()
            if row.status == AgreementReport.Status.SUCCEEDED:
                break
            time.sleep(0.2)
    assert row.status == AgreementReport.Status.SUCCEEDED, row.message
    assert row.progress == 1.0
    assert row.result["sections"][0]["kind"] == "preference"
