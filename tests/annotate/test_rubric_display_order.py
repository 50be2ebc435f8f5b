"""What a reviewer scores on a rubric item does not depend on the order the responses were shown in."""

import random
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate.consensus import rubric_consensus
from annotate.models import ItemResult, Lease, Rubric, RubricVersion
from annotate.reports import report_build
from tests import factories

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
CRITERIA = [
    {"key": "length", "name": "Length", "scale": "ordinal", "levels": [{"value": v} for v in (1, 2, 3)]},
    {"key": "polite", "name": "Polite", "scale": "binary", "levels": [{"value": "yes"}, {"value": "no"}]},
]


def _rule(text: str) -> dict:
    """One deterministic rule both reviewers apply to the response they are asked to score."""
    return {"score-length": str(1 + len(text) % 3), "score-polite": "yes" if "please" in text else "no"}


def _scored_text(html: str) -> str:
    match = re.search(
        r'id="queue-current".*?Response to score</span>\s*<div class="prewrap response-text">(.*?)</div>', html, re.S
    )
    return match.group(1)


def test_two_reviewers_with_one_rule_agree_on_every_item_whatever_the_display_order(client, project, alice, bob):
    project.task_kinds = ["rubric"]
    project.save()
    rubric = Rubric.objects.create(project=project, name="Style")
    RubricVersion.objects.create(
        rubric=rubric, number=1, status="active", activated_at=timezone.now(), criteria=CRITERIA
    )
    rng = random.Random(7)
    for n in range(50):
        words = ["please" if rng.random() < 0.5 else "now", *["x" * rng.randint(1, 9) for _ in range(3)]]
        other = ["thanks", *["y" * rng.randint(1, 9) for _ in range(rng.randint(1, 4))]]
        factories.make_item(project, "rubric", n=n, responses=[{"text": " ".join(words)}, {"text": " ".join(other)}])
    orders = set()
    for reviewer in (alice, bob):
        client.force_login(reviewer)
        for _ in range(50):
            html = client.get(reverse("annotate:queue-next", args=[project.slug]), **HX).content.decode()
            lease_id = int(re.search(r'id="queue-current".*?data-lease="(\d+)"', html, re.S).group(1))
            orders.add(tuple(Lease.objects.get(pk=lease_id).display_order))
            response = client.post(
                reverse("annotate:queue-submit", args=[project.slug, lease_id]), _rule(_scored_text(html)), **HX
            )
            assert response.status_code == 200, response.content.decode()
    assert orders == {(0, 1), (1, 0)}  # both display orders were shown
    assert ItemResult.objects.filter(status="consensus").count() == 50
    report = report_build(project=project, n_boot=50)
    (section,) = report["sections"]
    assert {v["key"]: v["alpha"]["value"] for v in section["variables"]} == {"length": 1.0, "polite": 1.0}


def test_reviews_of_different_responses_are_not_compared_and_leave_the_item_disputed():
    # Reviews stored before rubric items named their scored response keep the response they scored.
    same = [{"response_index": 0, "scores": {"q": 2}}, {"response_index": 0, "scores": {"q": 2}}]
    mixed = [{"response_index": 0, "scores": {"q": 2}}, {"response_index": 1, "scores": {"q": 2}}]
    criteria = {"q": {"key": "q", "scale": "ordinal", "levels": [{"value": 1}, {"value": 2}]}}
    assert rubric_consensus(same, criteria, rule="majority", tolerance=0.5) == (
        {"response_index": 0, "scores": {"q": 2}},
        1.0,
    )
    assert rubric_consensus(mixed, criteria, rule="majority", tolerance=0.5) == (None, 0.5)


def test_agreement_compares_only_scores_of_the_same_response(project, alice, bob):
    """Reviews stored before items named their scored response keep the response they scored: the agreement
    report pairs them only with reviews of that same response."""
    project.task_kinds = ["rubric"]
    project.save()
    rubric = Rubric.objects.create(project=project, name="Style")
    version = RubricVersion.objects.create(
        rubric=rubric, number=1, status="active", activated_at=timezone.now(), criteria=CRITERIA
    )
    mixed = factories.make_item(project, "rubric", n=1)
    same = factories.make_item(project, "rubric", n=2)
    for reviewer, index in ((alice, 0), (bob, 1)):  # one item, two different responses scored
        factories.annotate(mixed, reviewer, {"response_index": index, "scores": {"length": 3}}, version=version)
    for reviewer, value in ((alice, 1), (bob, 2)):
        factories.annotate(same, reviewer, {"response_index": 0, "scores": {"length": value}}, version=version)
    report = report_build(project=project, n_boot=0)
    (section,) = report["sections"]
    length = next(v for v in section["variables"] if v["key"] == "length")
    assert length["n_units"] == 1  # only the item whose reviews scored one response is paired
    assert length["percent"]["value"] == 0.0  # ... and there the two scores differ
    assert section["n_items"] == 2
