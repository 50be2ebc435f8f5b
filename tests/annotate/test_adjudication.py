import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from annotate.models import Adjudication, ItemResult
from annotate.services.adjudication import adjudication_record
from annotate.services.results import item_result_refresh
from tests.conftest import login
from tests.factories import annotate, gold, make_item, pref


@pytest.fixture
def disputed(project, alice, bob):
    item = make_item(project, "preference", prompt="Which <reply> is better?")
    annotate(item, alice, pref(chosen=0, rejected=1))
    annotate(item, bob, pref("both_bad"))
    assert item_result_refresh(item=item).status == ItemResult.Status.DISPUTED
    return item


def test_a_dispute_is_decided_with_a_reason_and_becomes_the_final_result(disputed, judge, alice, bob):
    adjudication_record(item=disputed, adjudicator=judge, payload=pref(chosen=0, rejected=1), reason="0 answers it.")
    result = ItemResult.objects.get(item=disputed)
    assert result.status == ItemResult.Status.ADJUDICATED
    assert result.payload["chosen"] == 0
    assert result.agreement == pytest.approx(0.5)
    assert sorted(result.reviewer_ids) == sorted([alice.pk, bob.pk])
    assert Adjudication.objects.get(item=disputed).reason == "0 answers it."
    assert item_result_refresh(item=disputed).status == ItemResult.Status.ADJUDICATED


def test_reviewers_cannot_adjudicate(disputed, alice):
    with pytest.raises(PermissionDenied):
        adjudication_record(item=disputed, adjudicator=alice, payload=pref("tie"), reason="because")
    assert not Adjudication.objects.exists()


def test_a_decision_needs_a_reason_and_a_valid_payload(disputed, judge):
    with pytest.raises(ValidationError, match="reason"):
        adjudication_record(item=disputed, adjudicator=judge, payload=pref("tie"), reason="  ")
    with pytest.raises(ValidationError, match="chosen: give the index of one of the 2 responses"):
        adjudication_record(item=disputed, adjudicator=judge, payload=pref(chosen=7), reason="r")
    with pytest.raises(ValidationError, match="choice: choose one of"):
        adjudication_record(item=disputed, adjudicator=judge, payload={"choice": "left"}, reason="r")
    assert not Adjudication.objects.exists()
    assert ItemResult.objects.get(item=disputed).status == ItemResult.Status.DISPUTED


def test_the_queue_lists_disputed_items_for_adjudicators_only(client, disputed, judge, alice, mallory, project):
    response = login(client, judge).get(f"/projects/{project.slug}/adjudication/")
    assert response.status_code == 200
    assert f"#{disputed.pk}" in response.content.decode()
    assert login(client, alice).get(f"/projects/{project.slug}/adjudication/").status_code == 403
    assert login(client, mallory).get(f"/projects/{project.slug}/adjudication/").status_code == 404


def test_the_item_page_shows_every_review_unblinded_and_escaped(client, disputed, judge, project):
    html = login(client, judge).get(f"/projects/{project.slug}/adjudication/{disputed.pk}/").content.decode()
    assert "alice" in html and "bob" in html and "both_bad" in html
    assert "Which &lt;reply&gt; is better?" in html and "<reply>" not in html


def test_adopting_a_review_through_the_page_records_the_decision(client, disputed, judge, alice, project):
    from annotate.models import Annotation

    chosen = Annotation.objects.get(item=disputed, reviewer=alice)
    response = login(client, judge).post(
        f"/projects/{project.slug}/adjudication/{disputed.pk}/", {"adopt": str(chosen.pk), "reason": "Clearer."}
    )
    assert response.status_code == 302
    result = ItemResult.objects.get(item=disputed)
    assert result.status == "adjudicated" and result.payload == chosen.payload
    assert f"#{disputed.pk}" not in client.get(f"/projects/{project.slug}/adjudication/").content.decode()


def test_a_malformed_custom_decision_is_refused_with_where_the_error_is(client, disputed, judge, project):
    response = login(client, judge).post(
        f"/projects/{project.slug}/adjudication/{disputed.pk}/",
        {"adopt": "custom", "payload": '{"choice": "tie",\n oops}', "reason": "r"},
    )
    assert response.status_code == 400
    assert "line 2, column 2" in response.content.decode()
    assert ItemResult.objects.get(item=disputed).status == "disputed"


def test_a_custom_gold_answer_can_be_written_by_the_adjudicator(client, project, judge, alice, bob):
    item = make_item(project, "gold")
    annotate(item, alice, gold("edit", "Reboot."))
    annotate(item, bob, gold("unusable"))
    item_result_refresh(item=item)
    response = login(client, judge).post(
        f"/projects/{project.slug}/adjudication/{item.pk}/",
        {
            "adopt": "custom",
            "payload": '{"action": "write", "answer": "Reboot, then call us."}',
            "reason": "Both lacking.",
        },
    )
    assert response.status_code == 302
    result = ItemResult.objects.get(item=item)
    assert result.payload["answer"] == "Reboot, then call us." and result.agreement == 0.0
