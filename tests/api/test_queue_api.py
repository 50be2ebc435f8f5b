"""Scripted reviewing through the API: the page's queue, leases, task forms and blindness."""

import json

import pytest

from annotate.models import Annotation, Lease, Rubric, RubricVersion
from tests import factories

pytestmark = pytest.mark.django_db

MODEL_LABELS = ("m1", "m2", "m3", "secret-model")


def blind(task: dict, *, other_payload_text: str = "") -> None:
    """Nothing in a task names a model, a response index or the display order, or quotes another review."""
    text = json.dumps(task)
    for label in MODEL_LABELS:
        assert f'"{label}"' not in text
    assert "model" not in text.replace("model_", "")  # no key or value naming a model
    for forbidden in ("display_order", "index", "source_index", "chosen", "rejected", "metadata", "reviewer"):
        assert forbidden not in text, forbidden
    if other_payload_text:
        assert other_payload_text not in text


def next_task(api, slug="support"):
    response = api("POST", f"/projects/{slug}/queue/next")
    assert response.status_code == 200, response.content
    return response.json()["task"]


def test_a_task_is_blind_and_shows_responses_in_the_reviewers_order(api_as, alice, bob, project):
    responses = [
        {"text": "First", "model": "secret-model"},
        {"text": "Second", "model": "m2"},
        {"text": "Third", "model": "m3"},
    ]
    item = factories.make_item(
        project, "preference", responses=responses, metadata={"source_preference": {"chosen": 0}}
    )
    bob_lease = factories.lease_for(project, bob, display_order=[0, 1, 2])
    factories.submit(bob_lease, choice="1", worst="3", rationale="Bob thinks the first one wins")
    alice_api = api_as(alice)
    task = next_task(alice_api)
    lease = Lease.objects.get(pk=task["lease_id"])
    assert lease.item_id == item.pk and lease.reviewer == alice
    assert [r["text"] for r in task["responses"]] == [responses[i]["text"] for i in lease.display_order]
    assert [r["position"] for r in task["responses"]] == [1, 2, 3]
    blind(task, other_payload_text="Bob thinks")


def test_a_submission_names_display_positions_and_is_stored_as_indices(api_as, alice, project):
    item = factories.make_item(
        project, "preference", responses=[{"text": "A", "model": "m1"}, {"text": "B", "model": "m2"}]
    )
    api = api_as(alice)
    task = next_task(api)
    Lease.objects.filter(pk=task["lease_id"]).update(display_order=[1, 0])  # B shown first
    response = api("POST", task["submit_url"], {"choice": 1, "strength": "clear", "duration_ms": 1200})
    assert response.status_code == 200, response.content
    annotation = Annotation.objects.get(item=item, reviewer=alice)
    assert annotation.payload["chosen"] == 1 and annotation.payload["rejected"] == 0  # B is index 1
    assert annotation.display_order == [1, 0] and annotation.duration_ms == 1200
    assert response.json()["revision"] == 1


def test_an_invalid_answer_names_the_field_and_stores_nothing(api_as, alice, project):
    factories.make_item(project, "gold")
    api = api_as(alice)
    task = next_task(api)
    response = api("POST", task["submit_url"], {"action": "accept", "source": 7})
    problem = response.json()
    assert response.status_code == 422 and response["Content-Type"] == "application/problem+json"
    assert problem["errors"] == [
        {"in": "body", "field": "source", "message": "Choose a response between 1 and 2 (got '7')."}
    ]
    response = api("POST", task["submit_url"], {"action": "fly"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "action"
    assert not Annotation.objects.exists()


def test_rubric_scores_are_checked_by_the_rubric_form(api_as, alice, admin_user, project):
    rubric = Rubric.objects.create(project=project, name="Q")
    version = RubricVersion.objects.create(rubric=rubric, number=1, criteria=factories.CRITERIA, status="active")
    factories.make_item(project, "rubric", responses=3, rubric_response=2)
    api = api_as(alice)
    task = next_task(api)
    assert task["rubric"]["version_id"] == version.pk
    lease = Lease.objects.get(pk=task["lease_id"])
    assert task["scored_position"] == lease.display_order.index(2) + 1
    bad = api("POST", task["submit_url"], {"scores": {"helpful": 9}})
    fields = {e["field"] for e in bad.json()["errors"]}
    assert bad.status_code == 422 and fields == {"scores.helpful", "scores.safe"}
    good = api("POST", task["submit_url"], {"scores": {"helpful": 4, "safe": "yes"}})
    assert good.status_code == 200
    assert Annotation.objects.get(reviewer=alice).payload == {
        "response_index": 2,
        "scores": {"helpful": 4, "safe": "yes"},
    }


def test_next_keeps_the_same_item_until_it_is_answered_and_the_answer_brings_the_next(api_as, alice, project):
    for _ in range(2):
        factories.make_item(project, "gold")
    api = api_as(alice)
    first = next_task(api)
    assert next_task(api)["lease_id"] == first["lease_id"]
    answered = api("POST", first["submit_url"], {"action": "write", "answer": "Mine"}).json()
    assert answered["next"]["item_id"] != first["item_id"]
    again = api("POST", first["submit_url"], {"action": "write", "answer": "Again"})
    assert again.status_code == 409 and "already submitted" in again.json()["detail"]


def test_skip_puts_the_item_back_for_later(api_as, alice, project):
    one = factories.make_item(project, "gold")
    two = factories.make_item(project, "gold")
    api = api_as(alice)
    task = next_task(api)
    skipped = api("POST", task["skip_url"]).json()
    assert skipped["next"]["item_id"] != task["item_id"]
    assert {task["item_id"], skipped["next"]["item_id"]} == {one.pk, two.pk}
    assert Lease.objects.get(pk=task["lease_id"]).status == "skipped"


def test_the_overlap_cap_holds_through_the_api(api_as, alice, bob, carol, project):
    project.task_kinds, project.overlap_k = ["gold"], 2
    project.save()
    item = factories.make_item(project, "gold")
    tasks = [next_task(api_as(user)) for user in (alice, bob, carol)]
    assert [t["item_id"] if t else None for t in tasks] == [item.pk, item.pk, None]


def test_a_reviewer_cannot_submit_on_someone_elses_lease(api_as, alice, bob, project):
    factories.make_item(project, "gold")
    task = next_task(api_as(alice))
    response = api_as(bob)("POST", task["submit_url"], {"action": "write", "answer": "Not mine"})
    assert response.status_code == 404 and not Annotation.objects.exists()
