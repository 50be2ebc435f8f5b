"""Training through the API: snapshots made as the page makes them, audits, the preflight-then-job path with
its gates, job actions that refuse what the state does not allow, metrics, and adapter downloads that never
leave the adapter folder."""

import os

import pytest
from django.urls import reverse

from tests.api import training_world
from training.models import AuditAcknowledgement, JobProgress, TrainingJob, TrainingPreflight, TrainingSnapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(project, alice, bob, admin_user, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    return training_world.build({}, project=project, admin=admin_user, reviewers=[alice, bob])


@pytest.fixture
def api(api_as, admin_user):
    return api_as(admin_user)


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_a_snapshot_made_through_the_api_stores_what_the_pages_form_stores(client, api, admin_user, project, world):
    made = api(
        "POST",
        "/training/snapshots",
        {
            "name": "gold only",
            "projects": ["support"],
            "kinds": ["gold"],
            "min_agreement": 1.0,
            "exclude_items": [],
            "note": "API",
        },
    )
    assert made.status_code == 201, made.content
    snapshot = made.json()
    assert snapshot["sft_count"] == 4 and snapshot["dpo_count"] == 0
    assert snapshot["latest_audit"]["status"] == "succeeded"  # small: audited during the request
    assert snapshot["trainable"] is False and "contamination check" in snapshot["untrainable_reason"]
    client.force_login(admin_user)
    page = client.post(
        reverse("training:snapshot-list"),
        {
            "name": "gold only (page)",
            "projects": [project.pk],
            "kinds": ["gold"],
            "min_agreement": "1.0",
            "note": "page",
        },
    )
    assert page.status_code == 400 and "already holds exactly this data" in page.content.decode()
    stored = TrainingSnapshot.objects.get(pk=snapshot["id"]).filters
    assert stored["kinds"] == ["gold"] and stored["min_agreement"] == 1.0


def test_bad_snapshot_requests_say_which_field_and_make_nothing(api, world, admin_user):
    from annotate.models import Rubric, RubricVersion
    from annotate.services.projects import project_create

    before = TrainingSnapshot.objects.count()
    unknown = api("POST", "/training/snapshots", {"name": "x", "projects": ["support", "nope"]})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "projects"
    dates = api(
        "POST",
        "/training/snapshots",
        {"name": "x", "projects": ["support"], "decided_from": "2026-05-02", "decided_until": "2026-05-01"},
    )
    assert dates.status_code == 422 and dates.json()["errors"][0]["field"] == "decided_until"
    other = project_create(name="Other", slug="other", task_kinds=["rubric"], created_by=admin_user)
    version = RubricVersion.objects.create(
        rubric=Rubric.objects.create(project=other, name="R"), number=1, status="active", criteria=[]
    )
    foreign = api(
        "POST", "/training/snapshots", {"name": "x", "projects": ["support"], "rubric_version_id": version.pk}
    )
    assert foreign.status_code == 422 and "another project" in foreign.json()["detail"]
    same = api("POST", "/training/snapshots", {"name": "again", "projects": ["support"]})
    assert same.status_code == 422 and "already holds exactly this data" in same.json()["detail"]
    nothing = api("POST", "/training/snapshots", {"name": "x", "projects": ["other"]})
    assert nothing.status_code == 422 and nothing.json()["errors"][0]["field"] == "projects"
    orphan = api("POST", "/training/snapshots", {"name": "x", "projects": ["support"], "exclude_findings": ["k"]})
    assert orphan.status_code == 422 and orphan.json()["errors"][0]["field"] == "exclude_findings"
    assert TrainingSnapshot.objects.count() == before


def test_a_curated_snapshot_leaves_out_a_findings_examples_by_key(api, world):
    snapshot = world["snapshot"]
    excluded = api(
        "POST",
        "/training/snapshots",
        {"name": "curated", "projects": ["support"], "exclude_items": [], "from_snapshot": snapshot.pk},
    )
    # Nothing was excluded, so it is the same data: refused, as the page refuses it.
    assert excluded.status_code == 422 and "already holds" in excluded.json()["detail"]
    item = world["snapshot"].records.order_by("position").first().source_item_id
    curated = api(
        "POST",
        "/training/snapshots",
        {"name": "curated", "projects": ["support"], "exclude_items": [item], "from_snapshot": snapshot.pk},
    )
    assert curated.status_code == 201 and curated.json()["filters"]["excluded"] == {"picked": 1}


def test_an_audit_runs_inline_when_small_and_on_a_worker_above_the_limit(api, world, settings):
    snapshot = world["snapshot"]
    inline = api("POST", f"/training/snapshots/{snapshot.pk}/audits")
    assert inline.status_code == 201 and inline.json()["status"] == "succeeded"
    settings.GOLDSET_AUDIT_INLINE_MAX = 1
    queued = api("POST", f"/training/snapshots/{snapshot.pk}/audits")
    assert queued.status_code == 202 and queued["Location"] == queued.json()["status_url"]
    assert api("GET", queued["Location"]).json()["status"] == "queued"
    # The latest audit has not run: jobs wait for it.
    refused = api("POST", "/training/preflights", {"snapshot_id": snapshot.pk, "base_model": "/models/tiny"})
    assert refused.status_code == 409 and "waiting for a worker" in refused.json()["detail"]


def test_a_blocking_finding_stops_the_preflight_until_acknowledged_with_a_reason(api, world, admin_user):
    snapshot, audit = world["snapshot"], world["audit"]
    # Make the blocking audit the latest one.
    from training.models import SnapshotAudit

    SnapshotAudit.objects.filter(snapshot=snapshot).exclude(pk=audit.pk).delete()
    refused = api("POST", "/training/preflights", {"snapshot_id": snapshot.pk, "base_model": "/models/tiny"})
    assert refused.status_code == 409 and "One answer everywhere" in refused.json()["detail"]
    shown = api("GET", f"/training/audits/{audit.pk}").json()
    assert shown["open_blocks"] == ["dup-answer"]
    empty = api("POST", f"/training/audits/{audit.pk}/acknowledgements", {"finding": "dup-answer", "reason": ""})
    assert empty.status_code == 422
    wrong = api("POST", f"/training/audits/{audit.pk}/acknowledgements", {"finding": "nope", "reason": "x"})
    assert wrong.status_code == 422 and "no finding 'nope'" in wrong.json()["detail"]
    ack = api("POST", f"/training/audits/{audit.pk}/acknowledgements", {"finding": "dup-answer", "reason": "Policy."})
    assert ack.status_code == 201 and ack.json()["by"] == admin_user.username
    assert api("GET", f"/training/audits/{audit.pk}").json()["open_blocks"] == []
    again = api("POST", f"/training/audits/{audit.pk}/acknowledgements", {"finding": "dup-answer", "reason": "x"})
    assert again.status_code == 422 and AuditAcknowledgement.objects.count() == 1
    passed = api("POST", "/training/preflights", {"snapshot_id": snapshot.pk, "base_model": "/models/tiny"})
    assert passed.status_code == 202, passed.content


def test_a_preflight_is_checked_by_the_job_form_and_queued_for_a_worker(api, world, django_capture_on_commit_callbacks):
    snapshot = world["snapshot"]
    with django_capture_on_commit_callbacks() as sent:
        made = api(
            "POST",
            "/training/preflights",
            {
                "snapshot_id": snapshot.pk,
                "base_model": " /models/tiny ",
                "method": "dpo",
                "config": {"max_steps": 3, "target_modules": ["q_proj", "v_proj"]},
            },
        )
    assert made.status_code == 202 and made["Location"] == made.json()["status_url"]
    preflight = made.json()
    assert len(sent) == 1  # the preflight task, sent at commit
    assert (
        preflight["status"] == "queued" and preflight["method"] == "dpo" and preflight["base_model"] == "/models/tiny"
    )
    assert preflight["config"]["max_steps"] == 3 and preflight["config"]["target_modules"] == ["q_proj", "v_proj"]
    early = api("POST", preflight["job_url"])
    assert early.status_code == 409 and "only a passed preflight" in early.json()["detail"]

    typo = api(
        "POST", "/training/preflights", {"snapshot_id": snapshot.pk, "base_model": "m", "config": {"max_stepz": 3}}
    )
    assert typo.status_code == 422 and typo.json()["errors"][0]["field"] == "config.max_stepz"
    bad = api(
        "POST",
        "/training/preflights",
        {"snapshot_id": snapshot.pk, "base_model": "m", "config": {"batch_size": "lots"}},
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "config.batch_size"
    missing = api("POST", "/training/preflights", {"snapshot_id": 999_999, "base_model": "m"})
    assert missing.status_code == 404
    assert TrainingPreflight.objects.count() == 2  # the world's and the one above


def test_a_snapshot_without_a_passed_check_gets_no_preflight(api, world, project, admin_user):
    untested = training_world.trainable_snapshot(project, admin_user, name="gold", kinds=("gold",))
    from training.models import SnapshotCheck

    SnapshotCheck.objects.create(snapshot=untested, passed=False, threshold=0.5, report={"offending_count": 1})
    refused = api("POST", "/training/preflights", {"snapshot_id": untested.pk, "base_model": "/models/tiny"})
    assert refused.status_code == 409 and "overlaps an eval set" in refused.json()["detail"]


def test_a_passed_preflight_queues_one_job_once(api, world, django_capture_on_commit_callbacks):
    preflight = world["preflight"]
    with django_capture_on_commit_callbacks() as sent:
        made = api("POST", f"/training/preflights/{preflight.pk}/job")
    assert made.status_code == 201 and len(sent) == 1
    job = made.json()
    assert job["status"] == "queued" and job["queue_place"] == 2  # behind the world's queued job
    assert job["audit"]["id"] and job["config"]["max_steps"] == 4
    again = api("POST", f"/training/preflights/{preflight.pk}/job")
    assert again.status_code == 409 and "already queued" in again.json()["detail"]
    assert api("GET", f"/training/preflights/{preflight.pk}").json()["job_id"] == job["id"]


def test_job_actions_follow_the_jobs_state(api, world):
    queued, failed = world["jobs"]["queued"], world["jobs"]["failed"]
    cancelled = api("POST", f"/training/jobs/{queued.pk}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    twice = api("POST", f"/training/jobs/{queued.pk}/cancel")
    assert twice.status_code == 409 and "nothing to cancel" in twice.json()["detail"]
    retried = api("POST", f"/training/jobs/{failed.pk}/retry").json()
    assert retried["retry_of_id"] == failed.pk and retried["resumes"] is False and retried["status"] == "queued"
    resumed = api("POST", f"/training/jobs/{failed.pk}/resume").json()
    assert resumed["retry_of_id"] == failed.pk and resumed["resumes"] is True
    TrainingJob.objects.filter(pk=failed.pk).update(last_checkpoint="")
    no_checkpoint = api("POST", f"/training/jobs/{failed.pk}/resume")
    assert no_checkpoint.status_code == 409 and "retry it from the start" in no_checkpoint.json()["detail"]
    running = api("POST", f"/training/jobs/{retried['id']}/retry")
    assert running.status_code == 409 and "Only a failed or cancelled job" in running.json()["detail"]
    listed = api("GET", "/training/jobs?status=queued").json()["items"]
    assert {j["id"] for j in listed} == {retried["id"], resumed["id"]}


def test_metrics_page_by_keyset_oldest_first(api, world):
    job = world["jobs"]["failed"]
    for step in range(1, 6):
        JobProgress.objects.create(job=job, phase="sft", step=step, total_steps=5, loss=2.0 / step)
    first = api("GET", f"/training/jobs/{job.pk}/metrics?limit=3").json()
    assert [m["step"] for m in first["items"]] == [1, 2, 3]
    rest = api("GET", f"/training/jobs/{job.pk}/metrics?limit=3&cursor={first['next_cursor']}").json()
    assert [m["step"] for m in rest["items"]] == [4, 5] and rest["next_cursor"] is None
    assert rest["items"][-1]["loss"] == pytest.approx(0.4)


def test_artifacts_list_and_stream_the_adapters_files_only(api, world, settings):
    job = world["jobs"]["failed"]
    listed = api("GET", f"/training/jobs/{job.pk}/artifacts").json()
    assert [a["path"] for a in listed] == ["adapter_model.safetensors", "manifest.json", "tokenizer/tokenizer.json"]
    weights = api("GET", listed[0]["url"])
    assert weights.status_code == 200 and body(weights) == bytes(range(256)) * 64 and weights.streaming
    assert weights["Content-Type"] == "application/octet-stream"
    assert body(api("GET", listed[2]["url"])) == b'{"model": "tiny"}'


@pytest.mark.parametrize(
    "path",
    [
        "../train.log",
        "..%2Ftrain.log",
        "%2E%2E/train.log",
        "tokenizer/../../train.log",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "tokenizer",
        "link.json",
        "nothing.bin",
        "manifest.json%00.txt",
    ],
)
def test_no_artifact_path_reaches_outside_the_adapter(api, world, path):
    job = world["jobs"]["failed"]
    adapter = TrainingJob.objects.get(pk=job.pk).output_dir
    link = os.path.join(adapter, "adapter", "link.json")
    if not os.path.lexists(link):
        os.symlink(os.path.join(adapter, "train.log"), link)
    response = api("GET", f"/api/v1/training/jobs/{job.pk}/artifacts/{path}")
    assert response.status_code == 404, (path, response.status_code)
    assert b"not part of the adapter" not in body(response)
    assert "link.json" not in {a["path"] for a in api("GET", f"/training/jobs/{job.pk}/artifacts").json()}


def test_a_job_without_an_adapter_has_no_artifacts(api, world):
    queued = world["jobs"]["queued"]
    response = api("GET", f"/training/jobs/{queued.pk}/artifacts")
    assert response.status_code == 404 and "no adapter" in response.json()["detail"]
