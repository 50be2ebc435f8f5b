"""The demo reaches a trained adapter's doorstep: its audit shows the planted flaws, curation removes them,
and its training data passes the contamination check against its own eval set."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotate import demo
from annotate.models import Item, Project
from evalsets.services import evalset_freeze, snapshot_contamination_check
from tests.factories import demo_eval_reviews
from training.audits import snapshot_audit_clearance
from training.curation import SnapshotFilters
from training.services import snapshot_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_project(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VAR_DIR = tmp_path  # the demo base model goes here, not into the real var/
    call_command("seed_demo")
    return Project.objects.get(slug="support-assistant")


def test_the_demo_starts_with_reviewed_training_data_and_untouched_eval_items(demo_project):
    train = Item.objects.filter(project=demo_project, split="train", kind__in=["gold", "preference"])
    assert train.filter(result__status="consensus").count() >= 150
    assert not Item.objects.filter(project=demo_project, split="eval", review_count__gt=0).exists()


def test_the_demos_audit_finds_its_planted_flaws_and_curation_leaves_a_clean_trainable_snapshot(demo_project):
    admin = get_user_model().objects.get(username="admin")
    demo_eval_reviews(demo_project)
    assert evalset_freeze(project=demo_project, user=admin, changelog="first").version.record_count >= 30
    first = snapshot_create(name="demo v1", projects=[demo_project], created_by=admin)
    audit = first.audits.get()
    by_type = {f["type"]: f for f in audit.findings}
    thanks = by_type["recurring_closing"]
    assert thanks["phrase"] == "thanks!" and 0.2 < thanks["share"] < 0.5
    assert [g["source"] for g in thanks["by_source"]] == [demo.THANKS]
    window = by_type["conflicting_facts"]
    assert window["values"][0]["value"] == "30" and {v["value"] for v in window["values"]} >= {"30", "60"}
    assert window["gate"] == "block"
    assert snapshot_contamination_check(snapshot=first).passed  # train and eval share no wording
    with pytest.raises(Exception, match="blocking audit finding"):
        snapshot_audit_clearance(first)

    excluded = [f["key"] for f in audit.findings if f["gate"] == "block" or f["type"] == "recurring_closing"]
    second = snapshot_create(
        name="demo v2",
        projects=[demo_project],
        created_by=admin,
        filters=SnapshotFilters(exclude_findings=tuple((audit.pk, key) for key in excluded)),
    )
    assert {f["type"] for f in second.audits.get().findings} & {"recurring_closing", "conflicting_facts"} == set()
    assert snapshot_contamination_check(snapshot=second).passed
    assert snapshot_audit_clearance(second)["id"] == second.audits.get().pk  # nothing blocks it


def test_the_demo_builds_a_local_base_model_and_the_job_form_offers_it(demo_project, client):
    from django.urls import reverse

    from training.demo import LABEL, demo_base_model

    path = demo_base_model()
    assert path and (__import__("pathlib").Path(path) / "README.md").read_text().count("random weights") == 1
    client.force_login(get_user_model().objects.get(username="admin"))
    page = client.get(reverse("training:job-new")).content.decode()
    assert f'value="{path}"' in page and LABEL in page
