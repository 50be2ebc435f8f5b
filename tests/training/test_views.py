"""The training pages: admin-only, the job page and its htmx fragment, the form's errors, downloads."""

import io
import json
import zipfile
from pathlib import Path

import pytest
from django.urls import reverse

from tests.training.conftest import FAST
from training import services
from training.models import JobProgress, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(trainable_snapshot, admin_user):
    config = services.training_config_parse(method="sft", config=FAST)
    return services._job_insert(
        snapshot=trainable_snapshot,
        base_model="/models/tiny",
        config=config,
        created_by=admin_user,
        preflight={
            "ok": True,
            "samples": [
                {
                    "kind": "sft",
                    "source_item_id": 1,
                    "tokens": 3,
                    "loss_tokens": 1,
                    "truncated": False,
                    "pieces": [{"text": "<b>hi", "loss": False}, {"text": "yes", "loss": True}],
                }
            ],
            "stats": {"sft_examples": 8},
            "warnings": [],
        },
    )


def running(job, **fields):
    TrainingJob.objects.filter(pk=job.pk).update(status="running", started_at=job.created_at, **fields)
    job.refresh_from_db()
    return job


@pytest.mark.parametrize("name", ["training:job-list", "training:snapshot-list", "training:job-new"])
def test_reviewers_are_refused_the_training_pages(client, alice, name):
    client.force_login(alice)
    assert client.get(reverse(name)).status_code == 403


def test_reviewers_cannot_open_a_job_or_cancel_it(client, alice, job):
    client.force_login(alice)
    assert client.get(job.get_absolute_url()).status_code == 403
    assert client.post(reverse("training:job-cancel", args=[job.pk])).status_code == 403
    job.refresh_from_db()
    assert job.status == "queued"


def test_the_nav_shows_training_to_admins_only(client, admin_user, alice):
    client.force_login(admin_user)
    assert reverse("training:job-list") in client.get(reverse("annotate:project-list")).content.decode()
    client.force_login(alice)
    assert reverse("training:job-list") not in client.get(reverse("annotate:project-list")).content.decode()


def test_the_jobs_page_shows_each_waiting_jobs_place(client, admin_user, job, trainable_snapshot):
    other = services._job_insert(
        snapshot=trainable_snapshot,
        base_model="m2",
        config=services.training_config_parse(method="sft", config={}),
        created_by=admin_user,
        preflight={},
    )
    client.force_login(admin_user)
    page = client.get(reverse("training:job-list")).content.decode()
    assert page.count('class="queue-place"') == 2 and "1 (next)" in page
    fragment = client.get(reverse("training:job-list"), headers={"HX-Request": "true"})
    assert fragment.content.decode().lstrip().startswith('<div id="job-table"')
    assert f"#{other.pk}" in fragment.content.decode() and "<html" not in fragment.content.decode()


def test_the_job_page_shows_progress_eta_chart_and_the_escaped_log_tail(client, admin_user, job):
    running(job, phase="sft", step=2, total_steps=6, loss=1.5, log_tail="step 2 <script>alert(1)</script>")
    for step, loss in ((1, 2.0), (2, 1.5)):
        JobProgress.objects.create(
            job=job,
            phase="sft",
            step=step,
            total_steps=6,
            loss=loss,
            learning_rate=1e-3,
            grad_norm=0.5,
            tokens_per_second=1000,
        )
    client.force_login(admin_user)
    page = client.get(job.get_absolute_url()).content.decode()
    assert 'aria-valuenow="33"' in page and "ETA" in page
    assert "<polyline" in page and 'class="loss-sft"' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert '<span class="tok loss">yes</span>' in page and "&lt;b&gt;hi" in page  # preflight preview, escaped
    assert 'hx-trigger="every 2s"' in page


def test_the_progress_fragment_polls_until_the_job_ends_then_stops_polling(client, admin_user, job):
    client.force_login(admin_user)
    running(job, phase="sft", step=1, total_steps=6)
    fragment = client.get(job.get_absolute_url(), headers={"HX-Request": "true"})
    body = fragment.content.decode()
    assert fragment.status_code == 200 and body.lstrip().startswith('<section id="job-progress"')
    assert "every 2s" in body and "<html" not in body
    TrainingJob.objects.filter(pk=job.pk).update(status="failed", error="Lost the worker's heartbeat")
    final = client.get(job.get_absolute_url(), headers={"HX-Request": "true"})
    assert final.status_code == 286  # htmx stops polling
    assert "every 2s" not in final.content.decode() and "Lost the worker&#x27;s heartbeat" in final.content.decode()
    assert "Retry from the start" in final.content.decode()


def test_cancel_from_the_page_marks_a_running_job_to_stop(client, admin_user, job):
    running(job)
    client.force_login(admin_user)
    response = client.post(reverse("training:job-cancel", args=[job.pk]))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.cancel_requested and job.status == "running"
    assert "stopping at the next step" in client.get(job.get_absolute_url()).content.decode()


def test_the_form_shows_preflight_errors_and_queues_nothing(client, admin_user, trainable_snapshot, monkeypatch):
    monkeypatch.setattr(
        services,
        "_preflight",
        lambda **kw: {
            "ok": False,
            "errors": ["max length 8192 exceeds the model's 4096: set max_length to 4096 or less."],
        },
    )
    client.force_login(admin_user)
    data = {"snapshot": trainable_snapshot.pk, "base_model": "/models/x", "method": "sft"}
    form = client.get(reverse("training:job-new")).context["form"]
    for name in form.fields:
        if name not in data and form.fields[name].initial is not None:
            initial = form.fields[name].initial
            data[name] = ", ".join(initial) if isinstance(initial, list) else initial
    data = {k: v for k, v in data.items() if v is not False}
    data["max_length"] = 8192
    response = client.post(reverse("training:job-new"), data)
    assert response.status_code == 200
    assert "max length 8192 exceeds the model&#x27;s 4096" in response.content.decode()
    assert TrainingJob.objects.count() == 0
    monkeypatch.setattr(services, "_preflight", lambda **kw: {"ok": True, "errors": [], "samples": []})
    data["max_length"] = 1024
    response = client.post(reverse("training:job-new"), data)
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response.url == job.get_absolute_url()
    assert job.config["max_length"] == 1024 and job.config["batch_size"] == "auto" and job.config["packing"] is True


def test_a_snapshot_is_frozen_from_its_page(client, admin_user, approved_data):
    client.force_login(admin_user)
    response = client.post(reverse("training:snapshot-list"), {"name": "v1", "projects": [approved_data.pk]})
    assert response.status_code == 302
    page = client.get(response.url).content.decode()
    assert "has not passed a contamination check against the current eval sets" in page


def test_the_adapter_downloads_as_a_zip(client, admin_user, job, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    adapter = tmp_path / f"job-{job.pk}" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "manifest.json").write_text(json.dumps({"job_id": job.pk}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    TrainingJob.objects.filter(pk=job.pk).update(status="succeeded", output_dir=str(adapter.parent))
    client.force_login(admin_user)
    response = client.get(reverse("training:job-download", args=[job.pk]))
    assert response.status_code == 200 and "goldset-job" in response["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert sorted(names) == ["adapter_model.safetensors", "manifest.json"]


def test_a_job_outside_the_artifacts_dir_is_not_served(client, admin_user, job, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    (tmp_path / "elsewhere" / "adapter").mkdir(parents=True)
    TrainingJob.objects.filter(pk=job.pk).update(status="succeeded", output_dir=str(tmp_path / "elsewhere"))
    client.force_login(admin_user)
    assert client.get(reverse("training:job-download", args=[job.pk])).status_code == 404
    assert Path(tmp_path / "elsewhere" / "adapter").is_dir()


def test_the_django_admin_lists_jobs_read_only(client, django_user_model, job):
    boss = django_user_model.objects.create_superuser("boss", password="pw")
    client.force_login(boss)
    assert client.get(reverse("admin:training_trainingjob_changelist")).status_code == 200
    assert client.get(reverse("admin:training_trainingjob_add")).status_code == 403


def test_the_eta_follows_the_pace_of_the_current_phase(job):
    from datetime import timedelta

    from training.selectors import job_eta

    job = running(job, phase="dpo", step=20, total_steps=100)
    t0 = job.created_at
    rows = [
        JobProgress(job=job, phase="sft", step=50, total_steps=50, created_at=t0),
        JobProgress(job=job, phase="dpo", step=10, total_steps=100, created_at=t0 + timedelta(seconds=100)),
        JobProgress(job=job, phase="dpo", step=20, total_steps=100, created_at=t0 + timedelta(seconds=120)),
    ]
    assert job_eta(job, rows) == timedelta(seconds=160)  # 2 s a step, 80 steps left
    job.status = "succeeded"
    assert job_eta(job, rows) is None
