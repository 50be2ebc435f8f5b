"""The training pages in a real browser: the preflight and job fragments poll, and show the end without a reload."""

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.django_db(transaction=True)


def _snapshot(project, admin_user):
    from tests.training.conftest import approve, make_item
    from training import services
    from training.models import SnapshotCheck

    approve(make_item(project, kind="gold", prompt="How do I reset it?"), {"action": "write", "answer": "Settings."})
    snapshot = services.snapshot_create(name="v1", projects=[project], created_by=admin_user)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5)
    return snapshot


def _rekey(preflight) -> str:
    """A new worker secret for a preflight whose message (and secret) went to a worker we do not run here."""
    from training import services
    from training.models import PreflightSecret

    secret = "browser-test-secret"
    PreflightSecret.objects.filter(preflight=preflight).update(secret_sha256=services.job_secret_hash(secret))
    return secret


def test_the_job_page_follows_a_running_job_to_its_end(login_page, live_server, admin_user, project, screenshot_dir):
    from tests.training.conftest import FAST
    from training import services
    from training.models import JobProgress, TrainingJob

    snapshot = _snapshot(project, admin_user)
    preflight = services.training_preflight_request(
        snapshot=snapshot, base_model="/models/tiny", method="sft", config=FAST, created_by=admin_user
    )
    services.training_preflight_claim(
        preflight_id=preflight.pk, secret=preflight.worker_secret, worker="cpu-1", using="default"
    )
    services.training_preflight_finish(
        preflight_id=preflight.pk, secret=preflight.worker_secret, result={"ok": True}, using="default"
    )
    preflight.refresh_from_db()
    job = services.training_job_create(preflight=preflight, created_by=admin_user)
    TrainingJob.objects.filter(pk=job.pk).update(
        status="running", phase="sft", step=2, total_steps=6, started_at=job.created_at, log_tail="step 2"
    )
    JobProgress.objects.create(job=job, phase="sft", step=2, total_steps=6, loss=2.0)

    page = login_page(admin_user)
    page.goto(live_server.url + job.get_absolute_url())
    assert page.locator(".job-status").inner_text() == "Running"
    JobProgress.objects.create(job=job, phase="sft", step=6, total_steps=6, loss=1.0)
    TrainingJob.objects.filter(pk=job.pk).update(status="succeeded", step=6, log_tail="done")
    page.locator(".job-status", has_text="Succeeded").wait_for(timeout=10000)
    assert page.locator(".progress").get_attribute("aria-valuenow") == "100"
    assert page.locator("figure.loss-sft polyline").count() == 1
    assert page.locator("figure.loss-sft text.axis-title").all_text_contents() == ["Step", "Loss (nats/token)"]
    # The metrics table follows too: its newest row is step 6.
    expect(page.locator("#job-metrics tbody tr").first.locator("td:nth-child(2)")).to_have_text("6", timeout=10000)
    page.screenshot(path=str(screenshot_dir / "training-job-succeeded.png"), full_page=True)


def test_the_preflight_page_shows_the_workers_progress_then_queues_the_job(
    login_page, live_server, admin_user, project, screenshot_dir
):
    from training import services
    from training.models import TrainingJob, TrainingPreflight

    snapshot = _snapshot(project, admin_user)
    page = login_page(admin_user)
    page.goto(live_server.url + f"/training/jobs/new/?snapshot={snapshot.pk}")
    page.fill("input[name=base_model]", "/models/tiny")
    page.click("text=Run the preflight")
    page.wait_for_url(re.compile(r".*/training/preflights/\d+/$"))
    preflight = TrainingPreflight.objects.get()
    preflight.worker_secret = _rekey(preflight)
    assert page.url == live_server.url + preflight.get_absolute_url()
    assert "waiting for a preflight worker" in page.locator("#preflight-progress").inner_text()

    # The worker's side, through its services: the open page follows without a reload.
    services.training_preflight_claim(
        preflight_id=preflight.pk, secret=preflight.worker_secret, worker="cpu-1", using="default"
    )
    services.training_preflight_progress(
        preflight_id=preflight.pk,
        secret=preflight.worker_secret,
        progress=0.5,
        message="fitting SFT examples into 1024 tokens",
        using="default",
    )
    page.locator("#preflight-progress", has_text="fitting SFT examples").wait_for(timeout=10000)
    assert page.locator("#preflight-progress .progress").get_attribute("aria-valuenow") == "50"
    result = {
        "ok": True,
        "errors": [],
        "warnings": [],
        "samples": [
            {
                "kind": "sft",
                "source_item_id": 1,
                "tokens": 2,
                "loss_tokens": 1,
                "truncated": False,
                "pieces": [{"text": "Reset?", "loss": False}, {"text": "Settings.", "loss": True}],
            }
        ],
        "stats": {"sft_examples": 1, "dpo_pairs": 0},
    }
    services.training_preflight_finish(
        preflight_id=preflight.pk, secret=preflight.worker_secret, result=result, using="default"
    )
    page.locator(".preflight-status", has_text="Passed").wait_for(timeout=10000)
    assert page.locator("#preflight-progress").get_attribute("hx-trigger") is None  # polling stopped
    assert page.locator(".tok.loss").inner_text() == "Settings."
    page.screenshot(path=str(screenshot_dir / "training-preflight-passed.png"), full_page=True)
    page.click("text=Queue the job")
    job = TrainingJob.objects.get()
    page.wait_for_url(live_server.url + job.get_absolute_url())
    assert page.locator(".job-status").inner_text() == "Queued"
