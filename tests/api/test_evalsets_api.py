"""Eval sets through the API: the same bytes as the page's download, manifests that match them, the same
visibility rules (and admins only), and contamination checks that run on a worker and are polled."""

import hashlib
import json

import pytest
from django.urls import reverse

from evalsets.export import FORMATS
from evalsets.models import ContaminationCheckRun
from evalsets.services import contamination_check_run
from tests.api import training_world
from training.models import SnapshotCheck

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(project, alice, bob, admin_user):
    return training_world.eval_version(project, [alice, bob], admin_user)


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_each_layout_is_the_pages_download_byte_for_byte_and_matches_its_manifest(client, api_as, admin_user, version):
    api = api_as(admin_user, "read")
    detail = api("GET", f"/evalsets/versions/{version.pk}").json()
    assert detail["sha256"] == version.sha256 and detail["record_count"] == 3
    layouts = [e["layout"] for e in detail["exports"]]
    assert layouts == ["goldset", "prompt-completion", "messages", "openai-sft"]  # a gold-only version
    client.force_login(admin_user)
    for export in detail["exports"]:
        data = body(api("GET", export["url"]))
        page = body(client.get(reverse("evalsets:version-export", args=[version.pk, export["layout"]])))
        assert data == page and data.count(b"\n") == 3
        manifest = api("GET", export["manifest_url"]).json()
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest() and manifest["bytes"] == len(data)
        assert manifest["records"] == 3 and manifest["version_sha256"] == version.sha256
    goldset = body(api("GET", f"/evalsets/versions/{version.pk}/export/goldset"))
    assert hashlib.sha256(goldset).hexdigest() == version.sha256


def test_a_layout_the_version_cannot_fill_says_which_it_can_and_an_unknown_one_is_invalid(api_as, admin_user, version):
    api = api_as(admin_user, "read")
    missing = api("GET", f"/evalsets/versions/{version.pk}/export/preference")
    assert missing.status_code == 404 and missing["Content-Type"] == "application/problem+json"
    assert "no preference pairs" in missing.json()["detail"] and "prompt-completion" in missing.json()["detail"]
    unknown = api("GET", f"/evalsets/versions/{version.pk}/export/parquet")
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "layout"
    assert set(FORMATS) >= {"goldset", "preference"}


def test_reviewers_never_read_eval_sets_through_the_api_even_where_their_page_shows_them(
    client, api_as, project, alice, mallory, version
):
    project.reviewers_see_evalsets = True
    project.save()
    client.force_login(alice)
    assert client.get(reverse("evalsets:version-export", args=[version.pk, "goldset"])).status_code == 200
    for user, status in ((alice, 403), (mallory, 404)):
        api = api_as(user, "read")
        for path in (f"/evalsets/versions/{version.pk}", f"/evalsets/versions/{version.pk}/export/goldset"):
            assert api("GET", path).status_code == status, (user, path)
        assert api("GET", "/evalsets/versions").status_code == 403


def test_the_version_list_filters_by_project_and_pages_by_keyset(api_as, admin_user, version, project, alice, bob):
    from annotate.services.projects import project_create

    other = project_create(name="Other", slug="other", task_kinds=["gold"], created_by=admin_user)
    second = training_world.eval_version(other, [alice, bob], admin_user)
    api = api_as(admin_user, "read")
    first = api("GET", "/evalsets/versions?limit=1").json()
    assert [v["id"] for v in first["items"]] == [version.pk] and first["next_cursor"]
    rest = api("GET", f"/evalsets/versions?limit=1&cursor={first['next_cursor']}").json()
    assert [v["id"] for v in rest["items"]] == [second.pk] and rest["next_cursor"] is None
    only = api("GET", "/evalsets/versions?project=other").json()["items"]
    assert [v["name"] for v in only] == ["other-eval-v1"]


def test_a_contamination_check_is_queued_polled_and_records_its_verdict(
    api_as, admin_user, project, alice, bob, version
):
    training_world.approved_train_data(project)
    snapshot = training_world.trainable_snapshot(project, admin_user)
    api = api_as(admin_user)
    queued = api("POST", f"/training/snapshots/{snapshot.pk}/contamination-checks")
    assert queued.status_code == 202 and queued["Location"] == queued.json()["status_url"]
    run = queued.json()
    assert run["status"] == "queued" and run["verdict"] is None
    assert api("GET", run["status_url"]).json()["status"] == "queued"

    contamination_check_run(run_id=run["id"])  # what the worker does with the message
    done = api("GET", run["status_url"]).json()
    assert done["status"] == "succeeded" and done["progress"] == 1.0
    assert done["verdict"]["passed"] is True
    assert done["verdict"]["evalset_versions"] == [{"id": version.pk, "name": version.name, "sha256": version.sha256}]
    assert SnapshotCheck.objects.filter(snapshot=snapshot).latest().pk == done["verdict"]["id"]
    assert contamination_check_run(run_id=run["id"]) is None  # a redelivered message does nothing
    assert ContaminationCheckRun.objects.get(pk=run["id"]).verdict_id == done["verdict"]["id"]


def test_a_snapshot_that_copies_an_eval_answer_fails_its_check_through_the_api(
    api_as, admin_user, project, alice, bob, version
):
    from annotate.models import ItemResult
    from training.curation import SnapshotFilters
    from training.services import snapshot_create

    leaked = training_world._item(
        project, kind="gold", prompt="Which plan includes phone support, case 0?", split="train"
    )
    ItemResult.objects.create(
        item=leaked,
        kind="gold",
        status="consensus",
        agreement=1.0,
        payload={"action": "write", "answer": "The business plan, case 0.", "source_index": None},
    )
    snapshot = snapshot_create(name="leaky", projects=[project], created_by=admin_user, filters=SnapshotFilters())
    run = api_as(admin_user)("POST", f"/training/snapshots/{snapshot.pk}/contamination-checks").json()
    contamination_check_run(run_id=run["id"])
    done = api_as(admin_user)("GET", run["status_url"]).json()
    assert done["status"] == "succeeded" and done["verdict"]["passed"] is False
    assert done["verdict"]["report"]["offending_train_records"] == 1
    assert "business plan" not in json.dumps(done)  # counts and training record ids: no eval text
    detail = api_as(admin_user)("GET", f"/training/snapshots/{snapshot.pk}").json()
    assert detail["trainable"] is False and "overlaps an eval set" in detail["untrainable_reason"]
