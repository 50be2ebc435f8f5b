"""The job page in a real browser: the progress fragment polls and shows the job's end without a reload."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_job_page_follows_a_running_job_to_its_end(login_page, live_server, admin_user, project, screenshot_dir):
    from tests.training.conftest import FAST, approve, make_item
    from training import services
    from training.models import JobProgress, SnapshotCheck, TrainingJob

    approve(make_item(project, kind="gold", prompt="How do I reset it?"), {"action": "write", "answer": "Settings."})
    snapshot = services.snapshot_create(name="v1", projects=[project], created_by=admin_user)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5)
    job = services._job_insert(
        snapshot=snapshot,
        base_model="/models/tiny",
        created_by=admin_user,
        preflight={},
        config=services.training_config_parse(method="sft", config=FAST),
    )
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
    assert page.locator("polyline.loss-sft").count() == 1
    page.screenshot(path=str(screenshot_dir / "training-job-succeeded.png"), full_page=True)
