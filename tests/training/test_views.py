"""The training pages: admin-only, the job page and its htmx fragment, the form's errors, downloads."""

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from django.urls import reverse

from tests.training.conftest import FAST
from training import services
from training.models import JobProgress, TrainingJob, TrainingPreflight

pytestmark = pytest.mark.django_db

PASSED = {
    "ok": True,
    "errors": [],
    "samples": [
        {
            "kind": "sft",
            "source_item_id": 1,
            "tokens": 3,
            "original_tokens": 3,
            "loss_tokens": 1,
            "truncated": False,
            "pieces": [{"text": "<b>hi", "loss": False}, {"text": "yes", "loss": True}],
        }
    ],
    "stats": {
        "sft_examples": 8,
        "fit": {"sft": {"examples": 8, "kept": 6, "prompt_truncated": 1, "left_out": 1, "left_out_items": [41]}},
    },
    "warnings": ["1 SFT example(s) will be left out: their answer does not fit whole in max_length 128 (items 41)."],
}


def finish_preflight(preflight, result) -> TrainingPreflight:
    """What the preflight worker does (its services, on the default connection)."""
    services.training_preflight_claim(
        preflight_id=preflight.pk, secret=preflight.worker_secret, worker="cpu-1", using="default"
    )
    services.training_preflight_finish(
        preflight_id=preflight.pk, secret=preflight.worker_secret, result=result, using="default"
    )
    preflight.refresh_from_db()
    return preflight


def requested(snapshot, admin, base_model="/models/tiny", **config) -> TrainingPreflight:
    return services.training_preflight_request(
        snapshot=snapshot, base_model=base_model, method="sft", config={**FAST, **config}, created_by=admin
    )


@pytest.fixture
def job(trainable_snapshot, admin_user):
    preflight = finish_preflight(requested(trainable_snapshot, admin_user), PASSED)
    return services.training_job_create(preflight=preflight, created_by=admin_user)


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
    preflight = finish_preflight(requested(trainable_snapshot, admin_user, base_model="m2"), PASSED)
    other = services.training_job_create(preflight=preflight, created_by=admin_user)
    client.force_login(admin_user)
    page = client.get(reverse("training:job-list")).content.decode()
    assert page.count('class="queue-place"') == 2 and "1 (next)" in page
    fragment = client.get(reverse("training:job-list"), headers={"HX-Request": "true"})
    assert fragment.content.decode().lstrip().startswith('<div id="job-table"')
    assert f"#{other.pk}" in fragment.content.decode() and "<html" not in fragment.content.decode()


def test_the_jobs_page_filters_by_status_searches_and_keeps_its_filters_while_it_polls(
    client, admin_user, job, trainable_snapshot
):
    preflight = finish_preflight(requested(trainable_snapshot, admin_user, base_model="/models/other"), PASSED)
    other = services.training_job_create(preflight=preflight, created_by=admin_user)
    TrainingJob.objects.filter(pk=job.pk).update(status="failed", error="out of memory")
    client.force_login(admin_user)
    url = reverse("training:job-list")
    failed = client.get(url, {"status": "failed"}).content.decode()
    assert "1 job" in failed and f">#{job.pk}<" in failed and f">#{other.pk}<" not in failed
    assert f'hx-get="{url}?status=failed"' in failed, "the polled table keeps the filter"
    found = client.get(url, {"q": "OTHER"}).content.decode()
    assert f">#{other.pk}<" in found and f">#{job.pk}<" not in found
    assert f">#{job.pk}<" in client.get(url, {"q": f"#{job.pk}"}).content.decode()
    none = client.get(url, {"q": "nothing like it"}).content.decode()
    assert "No jobs match" in none
    assert "2 jobs" in client.get(url, {"status": "bogus"}).content.decode(), "an unknown status filters nothing"


def progress(job, phase, step, loss, **extra):
    defaults = {"total_steps": 6, "learning_rate": 1e-3, "grad_norm": 0.5, "tokens_per_second": 1000}
    return JobProgress.objects.create(job=job, phase=phase, step=step, loss=loss, **{**defaults, **extra})


def test_the_job_page_shows_progress_eta_chart_and_the_escaped_log_tail(client, admin_user, job):
    running(job, phase="sft", step=2, total_steps=6, loss=1.5, log_tail="step 2 <script>alert(1)</script>")
    for step, loss in ((1, 2.0), (2, 1.5)):
        progress(job, "sft", step, loss)
    client.force_login(admin_user)
    page = client.get(job.get_absolute_url()).content.decode()
    assert 'aria-valuenow="33"' in page and "ETA" in page
    assert "<polyline" in page and 'class="loss-chart loss-sft"' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert '<span class="tok loss">yes</span>' in page and "&lt;b&gt;hi" in page  # preflight preview, escaped
    assert 'hx-trigger="every 2s"' in page


def test_sft_and_dpo_losses_get_their_own_panel_with_labelled_axes(client, admin_user, job):
    running(job, phase="dpo", step=4, total_steps=4)
    for step, loss in ((2, 2.4), (4, 1.9)):
        progress(job, "sft", step, loss)
    for step, loss in ((2, 0.69), (4, 0.52)):
        progress(job, "dpo", step, loss, reward_margin=0.1 * step, reward_accuracy=0.75)
    client.force_login(admin_user)
    page = client.get(job.get_absolute_url()).content.decode()
    panels = page.split('<figure class="loss-chart')[1:]
    assert [p.split('"', 1)[0] for p in panels] == [" loss-sft", " loss-dpo"]
    expected = (("SFT loss", "2.4", "1.9"), ("DPO loss", "0.69", "0.52"))
    for panel, (title, top, bottom) in zip(panels, expected, strict=True):
        assert f">{title}</text>" in panel and ">Step</text>" in panel
        assert (">Loss (nats/token)</text>" if title == "SFT loss" else ">Loss (nats/pair)</text>") in panel
        # Each panel is scaled to its own losses: its own top and bottom tick labels.
        assert f">{top}</text>" in panel and f">{bottom}</text>" in panel


def test_the_metrics_table_pages_through_every_logged_step(client, admin_user, job):
    running(job, phase="sft", step=60, total_steps=60)
    for step in range(1, 61):
        progress(job, "sft", step, 3.0 - step / 100, total_steps=60)
    client.force_login(admin_user)
    page = client.get(job.get_absolute_url()).content.decode()
    table = page.split('<section id="job-metrics"')[1].split("</section>")[0]
    assert "60 logged steps, newest first" in table and "Page 1 of 3" in table
    assert "<td>SFT</td><td>60</td>" in table and "<td>SFT</td><td>36</td>" in table
    assert "<td>SFT</td><td>35</td>" not in table
    assert 'hx-trigger="every 5s"' in table  # the newest page follows a running job
    older = client.get(job.get_absolute_url() + "?page=3", headers={"HX-Request": "true", "HX-Target": "job-metrics"})
    body = older.content.decode()
    assert body.lstrip().startswith('<section id="job-metrics"') and "<html" not in body
    assert "Page 3 of 3" in body and "<td>SFT</td><td>1</td>" in body and "<td>SFT</td><td>11</td>" not in body
    assert "every 5s" not in body  # an older page stays put
    assert "Page 2 of 3" in client.get(job.get_absolute_url() + "?page=2").content.decode()


def test_the_loss_chart_points_at_its_numbers_and_every_step_downloads_as_csv(client, admin_user, job):
    running(job, phase="sft", step=40, total_steps=40)
    for step in range(1, 41):
        progress(job, "sft", step, 3.0 - step / 100, total_steps=40)
    client.force_login(admin_user)
    page = client.get(job.get_absolute_url()).content.decode()
    figure = page.split('<figure class="loss-chart loss-sft"')[1].split("</figure>")[0]
    csv_url = f"{job.get_absolute_url()}?format=csv"
    assert 'href="#job-metrics"' in figure and f'href="{csv_url}"' in figure
    response = client.get(csv_url)
    assert response["Content-Type"].startswith("text/csv")
    assert f'filename="job-{job.pk}-metrics.csv"' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:5] == ["phase", "step", "total_steps", "epoch", "loss"]
    assert len(rows) == 41, "every logged step, not one page of them"
    assert [(r[1], float(r[4])) for r in rows[1:3]] == [("1", 2.99), ("2", 2.98)]


def test_the_config_shows_as_a_table_with_what_each_setting_does(client, admin_user, job):
    client.force_login(admin_user)
    page = client.get(job.get_absolute_url()).content.decode()
    config = page.split('<table class="table config-table">')[1].split("</table>")[0]
    assert '<code>lora_r</code></td><td>16</td><td class="muted">LoRA rank.</td>' in config
    assert '<code>max_steps</code></td><td>6 <span class="muted">(default 0)</span>' in config
    assert "<code>target_modules</code></td><td>all-linear</td>" in config
    assert "{&#x27;" not in page  # no Python dict repr
    names = [row.split("</code>")[0] for row in config.split("<code>")[1:]]
    assert names[:3] == ["method", "load_in_4bit", "quant_type"]  # in the config's own order


def test_the_manifest_summary_names_code_batch_warmup_truncation_and_cuda(client, admin_user, job):
    manifest = {
        "job_id": job.pk,
        "code_version": {"goldset": "0.1.0", "git_commit": "a" * 40, "git_dirty": False},
        "base_model": {"source": "local", "path": "/models/tiny", "sha256": "b" * 64},
        "hardware": {"gpus": [{"name": "NVIDIA H200"}], "cuda": "13.0", "cudnn": 91002, "driver": "580.82"},
        "metrics": {
            "sft": {
                "steps": 6,
                "batch": {"per_device": 8, "gradient_accumulation": 2, "processes": 4, "global": 64},
                "warmup_steps": 1,
                "adapter_dtype": "float32",
                "peak_gpu_bytes": 3 * 2**30,
                "fit": {"examples": 8, "prompt_truncated": 2, "left_out": 1},
            }
        },
        "evalset_versions_checked": [{"name": "support-eval v1"}],
    }
    TrainingJob.objects.filter(pk=job.pk).update(status="succeeded", manifest=manifest)
    client.force_login(admin_user)
    page = client.get(job.get_absolute_url()).content.decode()
    summary = page.split('<table class="table manifest-summary">')[1].split("</table>")[0]
    assert "goldset 0.1.0 · commit aaaaaaaaaaaa" in summary
    assert "/models/tiny · sha256 bbbbbbbbbbbbbbbb" in summary
    assert "CUDA 13.0, cuDNN 91002, driver 580.82" in summary and "NVIDIA H200" in summary
    assert "global batch 64 (8 per device × 2 accumulation × 4 process(es)), warmup 1 step(s)" in summary
    assert "adapter weights float32, peak 3.0 GiB" in summary
    assert "8 in the snapshot: 2 with the prompt cut from the left, 1 left out" in summary
    assert "support-eval v1" in summary


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


def form_data(client, snapshot, **changes) -> dict:
    data = {"snapshot": snapshot.pk, "base_model": "/models/x", "method": "sft"}
    form = client.get(reverse("training:job-new")).context["form"]
    for name in form.fields:
        if name not in data and form.fields[name].initial is not None:
            initial = form.fields[name].initial
            data[name] = ", ".join(initial) if isinstance(initial, list) else initial
    return {k: v for k, v in {**data, **changes}.items() if v is not False}


def test_the_form_queues_a_preflight_on_a_worker_and_its_page_shows_progress_then_errors(
    client, admin_user, trainable_snapshot, django_capture_on_commit_callbacks, monkeypatch
):
    from training.tasks import training_preflight_run

    sent = []
    monkeypatch.setattr(training_preflight_run, "apply_async", lambda args, kwargs=None, **kw: sent.append(args))
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("training:job-new"), form_data(client, trainable_snapshot, max_length=8192))
    preflight = TrainingPreflight.objects.get()
    assert response.status_code == 302 and response.url == preflight.get_absolute_url()
    assert [args[0] for args in sent] == [preflight.pk]  # to the preflight queue: the request loads no model
    preflight.worker_secret = sent[0][1]  # the worker's secret travels in the message
    assert preflight.status == "queued" and preflight.config["max_length"] == 8192
    assert TrainingJob.objects.count() == 0

    page = client.get(preflight.get_absolute_url()).content.decode()
    assert "waiting for a preflight worker" in page and 'hx-trigger="every 1s"' in page
    services.training_preflight_claim(
        preflight_id=preflight.pk, secret=preflight.worker_secret, worker="cpu-1", using="default"
    )
    services.training_preflight_progress(
        preflight_id=preflight.pk,
        secret=preflight.worker_secret,
        progress=0.4,
        message="fitting SFT examples into 8192 tokens",
        using="default",
    )
    fragment = client.get(preflight.get_absolute_url(), headers={"HX-Request": "true"})
    body = fragment.content.decode()
    assert fragment.status_code == 200 and body.lstrip().startswith('<section id="preflight-progress"')
    assert 'aria-valuenow="40"' in body and "fitting SFT examples" in body and "<html" not in body

    error = "max length 8192 exceeds the model's 4096: set max_length to 4096 or less."
    services.training_preflight_finish(
        preflight_id=preflight.pk,
        secret=preflight.worker_secret,
        result={"ok": False, "errors": [error]},
        using="default",
    )
    final = client.get(preflight.get_absolute_url(), headers={"HX-Request": "true"})
    assert final.status_code == 286  # htmx swaps the final state in, then stops polling
    body = final.content.decode()
    assert "max length 8192 exceeds the model&#x27;s 4096" in body and "every 1s" not in body
    assert "Queue the job" not in body
    retry = client.get(reverse("training:job-new") + f"?preflight={preflight.pk}")
    assert retry.context["form"].initial["max_length"] == 8192  # the form comes back as it was, to fix
    assert client.post(reverse("training:preflight-queue", args=[preflight.pk])).status_code == 302
    assert TrainingJob.objects.count() == 0


def test_a_passed_preflight_shows_its_findings_and_queues_the_job_once(client, admin_user, trainable_snapshot):
    preflight = finish_preflight(requested(trainable_snapshot, admin_user), PASSED)
    client.force_login(admin_user)
    page = client.get(preflight.get_absolute_url()).content.decode()
    assert "Queue the job" in page and "every 1s" not in page
    assert "1 SFT example(s) will be left out" in page and "(items 41)" in page
    assert '<span class="tok loss">yes</span>' in page and "&lt;b&gt;hi" in page
    response = client.post(reverse("training:preflight-queue", args=[preflight.pk]))
    job = TrainingJob.objects.get()
    assert response.status_code == 302 and response.url == job.get_absolute_url()
    assert job.config == preflight.config and job.preflight == PASSED
    again = client.post(reverse("training:preflight-queue", args=[preflight.pk]), follow=True)
    assert f"Job {job.pk} was already queued from this preflight" in again.content.decode()
    assert TrainingJob.objects.count() == 1
    assert f"Job #{job.pk} is queued" in client.get(preflight.get_absolute_url()).content.decode()


def test_reviewers_cannot_see_or_queue_a_preflight(client, alice, admin_user, trainable_snapshot):
    preflight = finish_preflight(requested(trainable_snapshot, admin_user), PASSED)
    client.force_login(alice)
    assert client.get(preflight.get_absolute_url()).status_code == 403
    assert client.post(reverse("training:preflight-queue", args=[preflight.pk])).status_code == 403
    assert TrainingJob.objects.count() == 0


def test_without_the_training_extra_the_form_says_which_command_installs_it(client, admin_user, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    client.force_login(admin_user)
    page = client.get(reverse("training:job-new")).content.decode()
    assert "The training extra is not installed on this web server" in page
    assert "pip install torch==2.13.0 -e &#x27;.[train]&#x27;" in page
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert "training extra is not installed" not in client.get(reverse("training:job-new")).content.decode()


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


def test_a_nearly_flat_loss_curve_still_has_distinct_tick_labels(client, admin_user, job):
    running(job, phase="sft", step=4, total_steps=4)
    for step, loss in ((2, 5.9626), (4, 5.9642)):
        progress(job, "sft", step, loss)
    client.force_login(admin_user)
    page = client.get(job.get_absolute_url()).content.decode()
    labels = [t.split(">", 1)[1].split("<", 1)[0] for t in page.split('class="tick y-tick"')[1:]]
    assert sorted(labels) == ["5.9626", "5.9634", "5.9642"]  # not "5.96" three times
