"""The demo reaches a trained adapter's doorstep: its audit shows the planted flaws, curation removes them,
and its training data passes the contamination check against its own eval set."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from annotate import demo
from annotate.models import Item, Lease, Project
from annotate.payloads import GoldPayload, PreferencePayload, RubricPayload
from annotate.selectors import rubric_version_active
from annotate.services.annotations import annotation_submit
from evalsets.services import evalset_freeze, snapshot_contamination_check
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


def _review_eval_items(project):
    """Two reviewers agree on the correct answer of every eval item, as the demo's reviewers would."""
    users = get_user_model().objects
    reviewers = [users.get(username="reviewer1"), users.get(username="reviewer2")]
    version = rubric_version_active(project=project)
    for item in Item.objects.filter(project=project, split="eval"):
        good = next(i for i, r in enumerate(item.responses) if r["model"] == demo.GOOD)
        if item.kind == "gold":
            payload = GoldPayload(action="accept", answer=item.responses[good]["text"], source_index=good)
        elif item.kind == "preference":
            payload = PreferencePayload(choice="response", chosen=good, rejected=1 - good)
        else:
            payload = RubricPayload(item.scored_response_index, {"helpfulness": 4, "correctness": 1, "tone": "warm"})
        for reviewer in reviewers:
            lease = Lease.objects.create(
                project=project,
                item=item,
                reviewer=reviewer,
                display_order=[0, 1],
                expires_at=timezone.now() + timedelta(minutes=30),
            )
            annotation_submit(
                project=project, lease_id=lease.pk, reviewer=reviewer, payload=payload, rubric_version=version
            )


def test_the_demo_starts_with_reviewed_training_data_and_untouched_eval_items(demo_project):
    train = Item.objects.filter(project=demo_project, split="train", kind__in=["gold", "preference"])
    assert train.filter(result__status="consensus").count() >= 150
    assert not Item.objects.filter(project=demo_project, split="eval", review_count__gt=0).exists()


def test_the_demos_audit_finds_its_planted_flaws_and_curation_leaves_a_clean_trainable_snapshot(demo_project):
    admin = get_user_model().objects.get(username="admin")
    _review_eval_items(demo_project)
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
