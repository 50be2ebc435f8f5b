import pytest

from annotate.consensus import normalize_text
from annotate.models import ItemResult, RubricVersion
from annotate.services import rubrics
from annotate.services.results import item_result_refresh
from tests.factories import CRITERIA, annotate, gold, make_item, pref, scores


@pytest.fixture
def active_version(project):
    rubric = rubrics.rubric_create(project=project, name="Quality")
    version = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=project.created_by)
    RubricVersion.objects.filter(pk=version.pk).update(status="active")
    version.refresh_from_db()
    return version


def refresh(item):
    return item_result_refresh(item=item)


def test_an_item_stays_pending_until_it_has_overlap_k_reviews(project, alice):
    item = make_item(project, "gold")
    annotate(item, alice, gold("accept", source_index=0))
    result = refresh(item)
    assert result.status == ItemResult.Status.PENDING
    assert result.payload is None
    assert result.reviewer_ids == [alice.pk]


def test_gold_answers_that_differ_only_in_case_and_spacing_reach_consensus(project, alice, bob):
    item = make_item(project, "gold")
    annotate(item, alice, gold("edit", "Restart  the router."))
    annotate(item, bob, gold("write", "restart the router.\n"))
    result = refresh(item)
    assert result.status == ItemResult.Status.CONSENSUS
    assert result.agreement == 1.0
    assert result.payload["answer"] == "Restart  the router."  # stored as given
    assert normalize_text(" A\u00a0b ") == "a b"


def test_gold_answers_with_different_text_are_disputed(project, alice, bob):
    item = make_item(project, "gold")
    annotate(item, alice, gold("edit", "Restart the router."))
    annotate(item, bob, gold("edit", "Call support."))
    assert refresh(item).status == ItemResult.Status.DISPUTED


def test_majority_needs_more_than_half(project, alice, bob, carol):
    project.overlap_k = 3
    project.save()
    item = make_item(project, "preference")
    annotate(item, alice, pref(chosen=0, rejected=1))
    annotate(item, bob, pref(chosen=0, rejected=1))
    annotate(item, carol, pref("tie"))
    result = refresh(item)
    assert result.status == ItemResult.Status.CONSENSUS
    assert result.payload["chosen"] == 0
    assert result.agreement == pytest.approx(2 / 3)


def test_unanimous_rule_disputes_a_two_to_one_split(project, alice, bob, carol):
    project.overlap_k, project.consensus_rule = 3, "unanimous"
    project.save()
    item = make_item(project, "preference")
    annotate(item, alice, pref(chosen=0, rejected=1))
    annotate(item, bob, pref(chosen=0, rejected=1))
    annotate(item, carol, pref("both_bad"))
    result = refresh(item)
    assert result.status == ItemResult.Status.DISPUTED
    assert result.payload is None


def test_tie_and_both_bad_are_separate_categories(project, alice, bob):
    item = make_item(project, "preference")
    annotate(item, alice, pref("tie"))
    annotate(item, bob, pref("both_bad"))
    assert refresh(item).status == ItemResult.Status.DISPUTED


def test_rubric_scores_within_tolerance_agree_on_the_level_nearest_the_mean(project, alice, bob, active_version):
    project.score_tolerance = 1.0
    project.save()
    item = make_item(project, "rubric")
    annotate(item, alice, scores(helpful=4, safe="yes"), version=active_version)
    annotate(item, bob, scores(helpful=5, safe="yes"), version=active_version)
    result = refresh(item)
    assert result.status == ItemResult.Status.CONSENSUS
    assert result.payload == {"response_index": 0, "scores": {"helpful": 4, "safe": "yes"}}
    assert result.rubric_version == active_version


def test_rubric_scores_beyond_tolerance_are_disputed(project, alice, bob, active_version):
    item = make_item(project, "rubric")
    annotate(item, alice, scores(helpful=2, safe="yes"), version=active_version)
    annotate(item, bob, scores(helpful=5, safe="yes"), version=active_version)
    result = refresh(item)
    assert result.status == ItemResult.Status.DISPUTED
    assert result.agreement == pytest.approx(0.5)  # helpful disagrees, safe agrees


def test_a_binary_criterion_split_one_to_one_is_disputed(project, alice, bob, active_version):
    item = make_item(project, "rubric")
    annotate(item, alice, scores(helpful=3, safe="yes"), version=active_version)
    annotate(item, bob, scores(helpful=3, safe="no"), version=active_version)
    assert refresh(item).status == ItemResult.Status.DISPUTED


def test_mean_within_tolerance_gives_the_mean_of_an_interval_criterion(project, alice, bob):
    project.consensus_rule, project.score_tolerance = "mean_within_tolerance", 0.5
    project.save()
    rubric = rubrics.rubric_create(project=project, name="Length")
    criteria = [
        {
            "key": "words",
            "name": "Words (hundreds)",
            "scale": "interval",
            "levels": [{"value": v / 2, "description": f"{v / 2}"} for v in range(11)],
        }
    ]
    version = rubrics.rubric_version_create(rubric=rubric, criteria=criteria, created_by=project.created_by)
    item = make_item(project, "rubric")
    annotate(item, alice, scores(words=2.0), version=version)
    annotate(item, bob, scores(words=2.5), version=version)
    result = refresh(item)
    assert result.status == ItemResult.Status.CONSENSUS
    assert result.payload["scores"]["words"] == pytest.approx(2.25)


def test_an_adjudicated_result_is_never_overwritten_by_a_refresh(project, alice, bob):
    item = make_item(project, "gold")
    annotate(item, alice, gold("unusable"))
    annotate(item, bob, gold("accept", source_index=1))
    ItemResult.objects.create(item=item, kind="gold", status="adjudicated", payload=gold("unusable"), agreement=0.5)
    result = refresh(item)
    assert result.status == ItemResult.Status.ADJUDICATED
    assert result.payload["action"] == "unusable"


def test_calibration_items_are_never_decided(project, alice, bob):
    item = make_item(project, "gold", is_calibration=True)
    annotate(item, alice, gold("unusable"))
    annotate(item, bob, gold("unusable"))
    assert refresh(item).status == ItemResult.Status.PENDING


def test_only_reviews_under_the_newest_rubric_version_count(project, alice, bob, active_version):
    rubric = active_version.rubric
    newer = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=project.created_by)
    RubricVersion.objects.filter(pk=newer.pk).update(status="active")
    RubricVersion.objects.filter(pk=active_version.pk).update(status="retired")
    newer.refresh_from_db()
    item = make_item(project, "rubric")
    annotate(item, alice, scores(helpful=1, safe="no"), version=active_version)
    annotate(item, bob, scores(helpful=5, safe="yes"), version=newer)
    result = refresh(item)
    assert result.status == ItemResult.Status.PENDING  # only one review under the newer version
    assert result.reviewer_ids == [bob.pk]
