"""Freezing an eval set version: what goes in, what is refused and why, and that it is all-or-nothing."""

import hashlib

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from annotate.models import ItemResult
from evalsets.export import iter_export
from evalsets.models import EvalRecord, EvalSetVersion
from evalsets.selectors import evalset_records_iter, evalset_version_diff
from tests.evalsets.conftest import gold_payload, preference_payload, rubric_payload

pytestmark = pytest.mark.django_db


def reasons(result) -> dict[int, str]:
    return {r["item_id"]: r["reason"] for r in result.refusals}


def test_an_admin_freezes_gold_preference_and_rubric_records_with_what_humans_agreed(
    make_item, freeze, admin_user, alice, bob, rubric_version
):
    gold = make_item("gold", prompt="How do I reset my password?", payload=gold_payload("Use the reset link."))
    pref = make_item(
        "preference",
        responses=[{"text": "Rude reply", "model": "x"}, {"text": "Kind reply", "model": "y"}],
        payload=preference_payload(chosen=1, rejected=0),
    )
    rubric = make_item("rubric", payload=rubric_payload({"helpful": 3}), rubric_version=rubric_version)

    result = freeze("First eval set.")

    version = result.version
    assert (version.number, version.record_count, version.frozen_by, version.changelog) == (
        1,
        3,
        admin_user,
        "First eval set.",
    )
    assert version.counts == {"gold": 1, "preference": 1, "rubric": 1}
    assert version.provenance_mix == {"human": 3}
    assert version.rubric_versions == [{"id": rubric_version.pk, "label": "Helpfulness v1"}]
    records = {r.item_id: r for r in EvalRecord.objects.filter(version=version)}
    assert records[gold.pk].reference == "Use the reset link."
    assert records[gold.pk].prompt == "How do I reset my password?"
    assert (records[pref.pk].chosen, records[pref.pk].rejected) == ("Kind reply", "Rude reply")
    assert records[rubric.pk].rubric_scores == {"helpful": 3}
    assert records[rubric.pk].rubric_version_id == rubric_version.pk
    assert records[gold.pk].reviewer_ids == sorted([alice.pk, bob.pk])
    assert records[gold.pk].agreement == 1.0
    assert records[gold.pk].provenance == "human"
    assert result.refusals == []


def test_the_version_hash_is_the_sha256_of_its_canonical_jsonl(make_item, freeze):
    make_item("gold")
    make_item("preference")
    version = freeze().version
    body = b"".join(iter_export(evalset_records_iter(version=version), "goldset"))
    assert hashlib.sha256(body).hexdigest() == version.sha256
    assert body.count(b"\n") == version.record_count == 2


def test_train_split_items_never_enter_an_eval_set(make_item, freeze):
    make_item("gold")
    train = make_item("gold", split="train")
    version = freeze().version
    assert not EvalRecord.objects.filter(version=version, item_id=train.pk).exists()
    assert version.record_count == 1


def test_llm_judged_items_are_refused_with_the_reason(make_item, freeze):
    make_item("gold")
    judged = make_item("gold", provenance="llm_judged")
    result = freeze()
    assert "llm_judged" in reasons(result)[judged.pk]
    assert result.version.refusals == result.refusals
    assert not EvalRecord.objects.filter(item_id=judged.pk).exists()


def test_an_item_with_one_agreeing_human_review_is_refused(make_item, freeze):
    make_item("gold")
    lone = make_item("gold", agreeing=1, disagreeing=1, agreement=0.5)
    result = freeze()
    assert reasons(result)[lone.pk] == ("only 1 agreeing human review(s): an eval record needs 2, or an adjudication")


def test_an_adjudicated_item_needs_no_agreeing_reviews(make_item, freeze):
    adjudicated = make_item("gold", agreeing=1, disagreeing=1, status=ItemResult.Status.ADJUDICATED)
    version = freeze().version
    record = EvalRecord.objects.get(version=version, item_id=adjudicated.pk)
    assert record.adjudicated is True
    assert version.agreement["adjudicated"] == 1


def test_agreement_within_tolerance_counts_as_agreeing_reviews(make_item, freeze, rubric_version):
    # Mean-within-tolerance consensus: no reviewer gave exactly the result's scores, yet all three agree.
    item = make_item(
        "rubric",
        payload=rubric_payload({"helpful": 3.5}),
        agreeing=0,
        disagreeing=3,
        agreement=1.0,
        rubric_version=rubric_version,
    )
    version = freeze().version
    assert EvalRecord.objects.filter(version=version, item_id=item.pk).exists()


def test_pending_disputed_and_unreviewed_items_are_refused(make_item, freeze):
    make_item("gold")
    pending = make_item("gold", status=ItemResult.Status.PENDING)
    disputed = make_item("gold", status=ItemResult.Status.DISPUTED)
    unreviewed = make_item("gold", agreeing=0, result=False)
    got = reasons(freeze())
    assert "its result is pending" in got[pending.pk]
    assert "its result is disputed" in got[disputed.pk]
    assert "not reviewed" in got[unreviewed.pk]


def test_a_preference_without_a_pair_and_an_unusable_gold_item_are_refused(make_item, freeze, project):
    make_item("gold")
    tie = make_item("preference", payload=preference_payload(choice="tie"))
    unusable = make_item("gold", payload={"action": "unusable", "answer": "", "source_index": None, "reason": "x"})
    bad_index = make_item("preference", payload=preference_payload(chosen=0, rejected=7))
    got = reasons(freeze())
    assert "'tie', not a chosen/rejected pair" in got[tie.pk]
    assert got[unusable.pk] == "reviewers marked the item unusable"
    assert "rejected points at response 7, but the item has 2" in got[bad_index.pk]


def test_only_admins_freeze(make_item, freeze, alice):
    make_item("gold")
    with pytest.raises(PermissionDenied):
        freeze(user=alice)
    assert not EvalSetVersion.objects.exists()


def test_a_changelog_note_is_required(make_item, freeze):
    make_item("gold")
    with pytest.raises(ValidationError, match="Write a changelog note"):
        freeze("   ")
    assert not EvalSetVersion.objects.exists()


def test_nothing_eligible_freezes_nothing_and_says_why(make_item, freeze):
    judged = make_item("gold", provenance="llm_judged")
    with pytest.raises(ValidationError, match=f"item {judged.pk}: its provenance is llm_judged"):
        freeze()
    assert not EvalSetVersion.objects.exists()


def test_freezing_unchanged_content_again_is_refused(make_item, freeze):
    make_item("gold")
    freeze()
    with pytest.raises(ValidationError, match="Nothing changed since support-eval-v1"):
        freeze("Again")
    assert EvalSetVersion.objects.count() == 1


def test_a_new_version_links_the_previous_one_and_the_diff_lists_what_changed(make_item, freeze):
    kept = make_item("gold")
    fixed = make_item("gold", payload=gold_payload("Wrong answer"))
    dropped = make_item("gold")
    v1 = freeze().version
    # A mistake is fixed in the annotations and a new version frozen; v1 stays as it was.
    ItemResult.objects.filter(item=fixed).update(payload=gold_payload("Right answer"))
    ItemResult.objects.filter(item=dropped).update(status=ItemResult.Status.DISPUTED)
    added = make_item("gold")

    v2 = freeze("Fix item answer; drop a disputed item.").version

    assert (v2.number, v2.previous) == (2, v1)
    diff = evalset_version_diff(version=v2)
    assert [r["item_id"] for r in diff["added"]] == [added.pk]
    assert [r["item_id"] for r in diff["removed"]] == [dropped.pk]
    assert [r["item_id"] for r in diff["changed"]] == [fixed.pk]
    assert diff["changed"][0]["before"].reference == "Wrong answer"
    assert diff["changed"][0]["after"].reference == "Right answer"
    assert diff["counts"] == {"added": 1, "removed": 1, "changed": 1, "unchanged": 1}
    assert EvalRecord.objects.get(version=v1, item_id=fixed.pk).reference == "Wrong answer"
    assert kept.pk in set(EvalRecord.objects.filter(version=v2).values_list("item_id", flat=True))
    assert evalset_version_diff(version=v1) is None


def test_a_failure_halfway_through_freezing_leaves_no_version_and_no_records(make_item, freeze, monkeypatch):
    from evalsets import services

    for _ in range(3):
        make_item("gold")
    monkeypatch.setattr(services, "BULK_BATCH", 1)
    calls = []
    real = EvalRecord.objects.bulk_create

    def flaky(objs, *args, **kwargs):
        calls.append(len(objs))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(objs, *args, **kwargs)

    monkeypatch.setattr(EvalRecord.objects, "bulk_create", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        freeze()
    assert not EvalSetVersion.objects.exists()
    assert not EvalRecord.objects.exists()


def test_text_is_stored_exactly_as_given(make_item, freeze):
    prompt = "  <script>alert('x')</script>\n\tÜñíçødé — “quotes” 🙂  "
    item = make_item("gold", prompt=prompt, payload=gold_payload("<b>bold</b> & more"))
    version = freeze().version
    record = EvalRecord.objects.get(version=version, item_id=item.pk)
    assert record.prompt == prompt
    assert record.reference == "<b>bold</b> & more"


@pytest.mark.parametrize(
    ("fields", "constraint"),
    [
        ({"provenance": "llm_judged"}, "evalrecord_not_llm_judged"),
        ({"agreeing_reviews": 1, "adjudicated": False}, "evalrecord_two_agreeing_humans_or_adjudicated"),
    ],
)
def test_the_database_itself_refuses_records_that_humans_did_not_agree_on(make_item, freeze, fields, constraint):
    from django.db import IntegrityError, transaction

    make_item("gold")
    version = freeze().version
    row = {
        "version": version, "position": 99, "item_id": 99, "kind": "gold", "prompt": "p", "provenance": "human",
        "agreeing_reviews": 2, "content_hash": "0" * 64, **fields,
    }  # fmt: skip
    with pytest.raises(IntegrityError, match=constraint):
        with transaction.atomic():
            EvalRecord.objects.create(**row)
    assert EvalRecord.objects.filter(version=version).count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_refuses_to_commit_a_version_missing_records(make_item, freeze, admin_user, project):
    from django.db import IntegrityError, transaction
    from django.utils import timezone

    make_item("gold")
    good = freeze().version  # committed whole: the check at commit passed
    with pytest.raises(IntegrityError, match="is incomplete at commit: 1 of 2 records"):
        with transaction.atomic():
            half = EvalSetVersion.objects.create(
                project=project, number=2, previous=good, sha256="1" * 64, record_count=2, changelog="half",
                frozen_by=admin_user, frozen_at=timezone.now(),
            )  # fmt: skip
            EvalRecord.objects.create(
                version=half, position=0, item_id=1, kind="gold", prompt="p", provenance="human",
                agreeing_reviews=2, content_hash="0" * 64,
            )  # fmt: skip
    assert list(EvalSetVersion.objects.all()) == [good]
