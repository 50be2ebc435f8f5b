"""Freezing approved train-split data into a hashed, write-once snapshot."""

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction

from tests.training.conftest import approve, make_item
from training.models import SnapshotCheck, SnapshotRecord, TrainingSnapshot
from training.services import snapshot_create, snapshot_is_trainable, snapshot_untrainable_reason

pytestmark = pytest.mark.django_db


def test_gold_answers_become_sft_and_preferences_become_dpo_triples(approved_data, admin_user):
    snapshot = snapshot_create(name="s", projects=[approved_data], created_by=admin_user)
    assert (snapshot.sft_count, snapshot.dpo_count) == (4, 4)
    dpo = snapshot.records.filter(kind="dpo").first()
    assert dpo.chosen.startswith("Yes, within thirty days") and dpo.rejected == "No."
    assert dpo.messages == [{"role": "user", "content": "Can I get a refund, case 0?"}]
    sft = snapshot.records.filter(kind="sft").first()
    assert sft.completion.startswith("Open settings") and sft.source_item_id
    assert snapshot.sources == [{"project_id": approved_data.id, "project_slug": "support"}]


def test_eval_items_pending_results_ties_unusable_and_llm_judged_items_stay_out(project, admin_user):
    keep = make_item(project, kind="gold", prompt="kept")
    approve(keep, {"action": "accept", "answer": "yes"})
    approve(make_item(project, kind="gold", prompt="eval", split="eval"), {"action": "write", "answer": "secret"})
    approve(make_item(project, kind="gold", prompt="pending"), {"action": "write", "answer": "x"}, status="pending")
    approve(make_item(project, kind="gold", prompt="unusable"), {"action": "unusable", "answer": ""})
    approve(
        make_item(project, kind="gold", prompt="judged", provenance="llm_judged"), {"action": "write", "answer": "j"}
    )
    tie = make_item(project, kind="preference", prompt="tie", responses=[{"text": "a"}, {"text": "b"}])
    approve(tie, {"choice": "tie", "chosen": None, "rejected": None})
    snapshot = snapshot_create(name="s", projects=[project], created_by=admin_user)
    assert [r.source_item_id for r in snapshot.records.all()] == [keep.id]
    assert "secret" not in str(list(snapshot.records.values()))
    assert snapshot.filters["skipped"] == {
        "unusable": 1,
        "tie": 1,
        "both_bad": 0,
        "llm_judged": 1,
        "malformed": 0,
        "marked_unusable": 0,
    }


def test_a_both_bad_item_is_not_a_pair_but_a_rewrite_candidate(project, admin_user):
    approve(make_item(project, kind="gold", prompt="kept"), {"action": "accept", "answer": "yes"})
    bad = make_item(project, kind="preference", prompt="both bad", responses=[{"text": "a"}, {"text": "b"}])
    approve(bad, {"choice": "both_bad", "chosen": None, "rejected": None})
    snapshot = snapshot_create(name="s", projects=[project], created_by=admin_user)
    assert snapshot.dpo_count == 0
    assert snapshot.filters["rewrite_candidates"] == [bad.id]


def test_llm_judged_items_enter_only_when_the_filter_allows(project, admin_user):
    approve(
        make_item(project, kind="gold", prompt="judged", provenance="llm_judged"), {"action": "write", "answer": "j"}
    )
    snapshot = snapshot_create(name="s", projects=[project], created_by=admin_user, include_llm_judged=True)
    assert snapshot.sft_count == 1 and snapshot.filters["include_llm_judged"] is True


def test_the_hash_is_canonical_and_identical_data_is_not_frozen_twice(approved_data, admin_user):
    first = snapshot_create(name="a", projects=[approved_data], created_by=admin_user)
    assert len(first.sha256) == 64
    with pytest.raises(ValidationError, match="already holds exactly this data"):
        snapshot_create(name="b", projects=[approved_data], created_by=admin_user)
    assert TrainingSnapshot.objects.count() == 1


def test_no_approved_data_gives_a_clear_error_and_writes_nothing(project, admin_user):
    with pytest.raises(ValidationError, match="no approved train-split gold answers or preference pairs"):
        snapshot_create(name="empty", projects=[project], created_by=admin_user)
    assert TrainingSnapshot.objects.count() == 0 and SnapshotRecord.objects.count() == 0


def test_snapshot_records_are_write_once(approved_data, admin_user, write_once_enforced):
    snapshot = snapshot_create(name="s", projects=[approved_data], created_by=admin_user)
    with pytest.raises(DatabaseError, match="write-once|permission denied for table training_snapshotrecord"):
        with transaction.atomic():
            SnapshotRecord.objects.filter(snapshot=snapshot).update(completion="tampered")


def test_only_a_passed_latest_check_makes_a_snapshot_trainable(approved_data, admin_user):
    snapshot = snapshot_create(name="s", projects=[approved_data], created_by=admin_user)
    assert not snapshot_is_trainable(snapshot)
    assert "has not passed a contamination check against the current eval sets: run the check from its page" in (
        snapshot_untrainable_reason(snapshot)
    )
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5)
    assert snapshot_is_trainable(snapshot)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=False, threshold=0.5)
    assert not snapshot_is_trainable(snapshot)
    assert "failed its contamination check" in snapshot_untrainable_reason(snapshot)


def test_both_bad_items_are_offered_once_as_gold_answer_rewrite_tasks(project, admin_user, client):
    from django.urls import reverse

    from annotate.models import Item

    approve(make_item(project, kind="gold", prompt="kept"), {"action": "accept", "answer": "yes"})
    bad = make_item(project, kind="preference", prompt="both bad", responses=[{"text": "a"}, {"text": "b"}])
    approve(bad, {"choice": "both_bad", "chosen": None, "rejected": None})
    snapshot = snapshot_create(name="s", projects=[project], created_by=admin_user)
    client.force_login(admin_user)
    client.post(reverse("training:snapshot-rewrite-tasks", args=[snapshot.pk]))
    client.post(reverse("training:snapshot-rewrite-tasks", args=[snapshot.pk]))
    rewrite = Item.objects.get(metadata__rewrite_of=bad.pk)
    assert (rewrite.kind, rewrite.prompt, rewrite.split, rewrite.project_id) == (
        "gold",
        "both bad",
        "train",
        project.pk,
    )
    assert Item.objects.filter(kind="gold", prompt="both bad").count() == 1
