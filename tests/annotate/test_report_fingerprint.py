"""The report's fingerprint and result counts: found by item id when the project's items are a run of their
own, and then the same as through the join to the items."""

import hashlib

import pytest
from django.db.models import Count, Max

from annotate import selectors
from annotate.models import Annotation, Item, ItemResult
from annotate.reports import report_build
from annotate.services.projects import project_create
from tests.factories import annotate, make_item, pref


def joined(project) -> tuple[str, int]:
    """The digest as the join to the items gives it, whatever the ids."""
    annotations = Annotation.objects.filter(item__project=project, item__is_calibration=False).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    results = ItemResult.objects.filter(item__project=project).aggregate(n=Count("id"), last=Max("updated_at"))
    checks = Item.objects.filter(project=project, is_check=True).aggregate(n=Count("id"), last=Max("id"))
    state = (
        f"{annotations['n']}|{annotations['last']}|{results['n']}|{results['last']}|{checks['n']}|{checks['last']}"
        f"||{project.score_tolerance}"
    )
    return hashlib.sha256(state.encode()).hexdigest(), annotations["n"]


def reviewed(project, reviewers, *, calibration=False) -> Item:
    item = make_item(project, "preference", is_calibration=calibration)
    for i, reviewer in enumerate(reviewers):
        annotate(item, reviewer, pref(chosen=i % 2, rejected=1 - i % 2))
    ItemResult.objects.create(item=item, kind="preference", status="consensus", reviewer_ids=[])
    return item


@pytest.fixture
def other(admin_user):
    return project_create(name="Other", slug="other", task_kinds=["preference"], created_by=admin_user)


def test_a_project_whose_items_are_a_run_of_their_own(project, alice, bob):
    for _ in range(4):
        reviewed(project, [alice, bob])
    assert selectors.report_fingerprint(project=project, rubric_version=None) == joined(project)


@pytest.mark.parametrize("calibration", [False, True])
def test_items_of_another_project_or_calibration_items_inside_the_run(project, other, alice, bob, calibration):
    reviewed(project, [alice, bob])
    if calibration:
        reviewed(project, [alice, bob], calibration=True)
    else:
        reviewed(other, [alice, bob])
    reviewed(project, [alice])
    fingerprint, n = selectors.report_fingerprint(project=project, rubric_version=None)
    assert (fingerprint, n) == joined(project)
    assert n == 3
    # The report counts the project's results (calibration items' too) the same way.
    assert report_build(project=project, n_boot=0)["result_status"]["consensus"] == (3 if calibration else 2)


def test_a_new_review_changes_the_fingerprint(project, alice, bob):
    item = reviewed(project, [alice])
    before = selectors.report_fingerprint(project=project, rubric_version=None)
    annotate(item, bob, pref(chosen=0, rejected=1))
    after = selectors.report_fingerprint(project=project, rubric_version=None)
    assert after != before and after == joined(project)
