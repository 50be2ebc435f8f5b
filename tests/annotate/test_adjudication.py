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


def test_the_queue_is_searched_by_prompt_item_and_reviewer_and_paged(client, disputed, judge, carol, project):
    others = []
    for n in range(52):
        item = make_item(project, "preference", prompt=f"Refund question {n}")
        annotate(item, carol, pref(chosen=0, rejected=1))
        annotate(item, judge, pref("both_bad"))
        item_result_refresh(item=item)
        others.append(item)
    queue = f"/projects/{project.slug}/adjudication/"
    client = login(client, judge)
    first = client.get(queue).content.decode()
    assert "53 disputed items" in first and "Page 1 of 2" in first
    assert f"#{disputed.pk}<" in first, "oldest first"
    second = client.get(queue, {"page": 2}).content.decode()
    assert f"#{others[-1].pk}<" in second and f"#{disputed.pk}<" not in second
    by_alice = client.get(queue, {"q": "ALICE"}).content.decode()
    assert "1 disputed item " in by_alice and f"#{disputed.pk}<" in by_alice
    by_text = client.get(queue, {"q": "question 51"}).content.decode()
    assert "1 disputed item " in by_text and f"#{others[51].pk}<" in by_text
    by_number = client.get(queue, {"q": f"#{others[3].pk}"}).content.decode()
    assert f"#{others[3].pk}<" in by_number
    nothing = client.get(queue, {"q": "nobody at all"}).content.decode()
    assert "0 disputed items" in nothing and "No disputed item matches" in nothing
    fragment = client.get(queue, {"q": "carol"}, headers={"HX-Request": "true"})
    body = fragment.content.decode()
    assert body.lstrip().startswith('<div id="disputes"') and "<html" not in body and "52 disputed items" in body


def test_with_nothing_disputed_the_queue_says_so_and_links_to_the_review_queue(client, judge, project):
    html = login(client, judge).get(f"/projects/{project.slug}/adjudication/").content.decode()
    assert "Nothing is disputed" in html and f'href="/projects/{project.slug}/queue/"' in html


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
