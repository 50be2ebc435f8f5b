"""Submitting, revising and undoing annotations; payload validation per task kind."""

from datetime import timedelta
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotate.forms import task_form
from annotate.models import Annotation, AnnotationRevision, ItemResult, Lease, Rubric, RubricVersion
from annotate.payloads import GoldPayload, PreferencePayload
from annotate.services import annotations, queue
from tests import factories
from tests.factories import lease_for, submit

pytestmark = pytest.mark.django_db


def make_item(project, n, kind="gold", responses=2):
    return factories.make_item(project, kind, n=n, responses=responses)


def test_accept_stores_the_candidate_text_by_its_real_index(project, alice):
    make_item(project, 1)
    lease = lease_for(project, alice, display_order=[1, 0])
    annotation = submit(lease, action="accept", source="1", answer="ignored")
    assert annotation.payload == {"action": "accept", "answer": "Answer B1", "source_index": 1, "reason": ""}


def test_edit_and_write_store_the_text_as_given(project, alice, bob):
    make_item(project, 1)
    text = "  <script>alert(1)</script>\n  keeps its spaces "
    assert submit(lease_for(project, alice), action="write", answer=text).payload["answer"] == text
    edited = submit(lease_for(project, bob, [0, 1]), action="edit", source="2", answer="Better")
    assert edited.payload["source_index"] == 1 and edited.payload["answer"] == "Better"


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({}, "action", "Choose what to do"),
        ({"action": "accept"}, "source", "Choose a response between 1 and 2"),
        ({"action": "accept", "source": "3"}, "source", "got '3'"),
        ({"action": "write", "answer": " "}, "answer", "it is empty"),
        ({"action": "unusable"}, "reason", "Say why the item is unusable"),
    ],
)
def test_bad_gold_answers_say_what_is_wrong(project, alice, data, field, message):
    make_item(project, 1)
    lease = lease_for(project, alice)
    with pytest.raises(ValidationError) as exc:
        submit(lease, **data)
    assert message in exc.value.message_dict[field][0]
    assert not Annotation.objects.exists()
    lease.refresh_from_db()
    assert lease.status == "active"  # nothing half-written


def test_unusable_keeps_the_reason(project, alice):
    make_item(project, 1)
    payload = submit(lease_for(project, alice), action="unusable", reason="Prompt cut off").payload
    assert payload == {"action": "unusable", "answer": "", "source_index": None, "reason": "Prompt cut off"}


def test_preference_maps_display_positions_to_response_indices(project, alice):
    make_item(project, 1, kind="preference")
    lease = lease_for(project, alice, display_order=[1, 0])
    payload = submit(lease, choice="1", strength="slight", rationale="Shorter").payload
    assert payload == {"choice": "response", "chosen": 1, "rejected": 0, "strength": "slight", "rationale": "Shorter"}


@pytest.mark.parametrize("choice", ["tie", "both_bad"])
def test_preference_tie_and_both_bad_have_no_winner(project, alice, choice):
    make_item(project, 1, kind="preference")
    payload = submit(lease_for(project, alice), choice=choice).payload
    assert payload["choice"] == choice and payload["chosen"] is None and payload["rejected"] is None


def test_preference_with_three_responses_takes_an_optional_worst(project, alice):
    make_item(project, 1, kind="preference", responses=3)
    lease = lease_for(project, alice, display_order=[2, 0, 1])
    payload = submit(lease, choice="1", worst="3").payload
    assert payload["chosen"] == 2 and payload["rejected"] == 1
    form = task_form(lease.item, {"choice": "1", "worst": "1"}, display_order=[2, 0, 1])
    assert not form.is_valid() and "cannot also be the best" in form.errors["worst"][0]


def test_preference_needs_a_choice_and_a_known_strength(project, alice):
    make_item(project, 1, kind="preference")
    lease = lease_for(project, alice)
    with pytest.raises(ValidationError, match="Pick the better response"):
        submit(lease)
    with pytest.raises(ValidationError, match="Strength is slight or clear"):
        submit(lease, choice="1", strength="huge")


@pytest.fixture
def active_rubric(project):
    rubric = Rubric.objects.create(project=project, name="Quality")
    return RubricVersion.objects.create(
        rubric=rubric,
        number=1,
        status="active",
        activated_at=timezone.now(),
        criteria=[
            {"key": "acc", "name": "Accuracy", "scale": "ordinal", "levels": [{"value": v} for v in (1, 2, 3)]},
            {"key": "safe", "name": "Safety", "scale": "binary", "levels": [{"value": "yes"}, {"value": "no"}]},
        ],
    )


def test_rubric_scores_every_criterion_with_the_active_version(project, alice, active_rubric):
    make_item(project, 1, kind="rubric")
    lease = lease_for(project, alice, display_order=[1, 0])
    annotation = submit(lease, **{"score-acc": "3", "score-safe": "no"})
    # The item's scored response (the first, by default), whatever order the screen showed them in.
    assert annotation.payload == {"response_index": 0, "scores": {"acc": 3, "safe": "no"}}
    assert annotation.rubric_version == active_rubric
    assert annotation.revisions.get().rubric_version == active_rubric


def test_rubric_refuses_missing_or_unknown_levels(project, alice, active_rubric):
    make_item(project, 1, kind="rubric")
    lease = lease_for(project, alice)
    with pytest.raises(ValidationError) as exc:
        submit(lease, **{"score-acc": "7"})
    assert "'7' is not a level of Accuracy" in exc.value.message_dict["score-acc"][0]
    assert "Score Safety" in exc.value.message_dict["score-safe"][0]


def test_every_submission_is_a_revision_and_the_latest_counts(project, alice):
    item = make_item(project, 1)
    lease = lease_for(project, alice)
    submit(lease, action="write", answer="one")
    factories.revise(item, alice, action="write", answer="two")
    annotation = Annotation.objects.get()
    assert annotation.revision == 2 and annotation.payload["answer"] == "two"
    assert list(AnnotationRevision.objects.order_by("number").values_list("payload__answer", flat=True)) == [
        "one",
        "two",
    ]


def test_a_released_lease_re_review_adds_a_revision_to_the_same_annotation(project, alice):
    make_item(project, 1)
    lease = lease_for(project, alice)
    submit(lease, action="write", answer="first")
    queue.lease_release(lease=lease)
    again = queue.lease_next_for_reviewer(project=project, reviewer=alice)
    submit(again, action="write", answer="second")
    annotation = Annotation.objects.get()
    assert annotation.revision == 2 and annotation.revisions.count() == 2


def test_submitting_twice_is_refused(project, alice):
    make_item(project, 1)
    lease = lease_for(project, alice)
    submit(lease, action="write", answer="x")
    with pytest.raises(ValidationError, match="already submitted"):
        submit(lease, action="write", answer="y")
    assert Annotation.objects.get().revision == 1


def test_a_skipped_lease_cannot_be_submitted(project, alice):
    make_item(project, 1)
    lease = lease_for(project, alice)
    queue.lease_skip(lease_id=lease.pk, reviewer=alice)
    with pytest.raises(ValidationError, match="You skipped this item"):
        submit(lease, action="write", answer="x")


def test_an_expired_lease_still_submits_while_the_item_has_room(project, alice):
    make_item(project, 1)
    lease = lease_for(project, alice)
    Lease.objects.filter(pk=lease.pk).update(status="expired")
    submit(lease, action="write", answer="late but fine")
    lease.refresh_from_db()
    assert lease.status == "submitted"


def test_an_expired_lease_on_a_full_item_is_refused_without_losing_the_others(project, alice, bob, carol):
    item = make_item(project, 1)
    lease = lease_for(project, alice)
    Lease.objects.filter(pk=lease.pk).update(status="expired")
    submit(lease_for(project, bob), action="write", answer="b")
    submit(lease_for(project, carol), action="write", answer="c")
    with pytest.raises(ValidationError, match="other reviewers have since completed it"):
        submit(lease, action="write", answer="a")
    item.refresh_from_db()
    assert item.review_count == 2 and Annotation.objects.count() == 2


def test_every_submission_refreshes_the_item_result(project, alice, bob):
    item = make_item(project, 1)
    refresh = annotations.item_result_refresh_in_transaction
    with mock.patch("annotate.services.annotations.item_result_refresh_in_transaction", wraps=refresh) as spy:
        submit(lease_for(project, alice), action="write", answer="same")
        submit(lease_for(project, bob), action="write", answer="same")
    assert spy.call_count == 2
    assert ItemResult.objects.get(item=item).status == "consensus"


def test_undo_takes_back_the_last_submission_and_reopens_its_lease(project, alice):
    item = make_item(project, 1)
    lease = lease_for(project, alice)
    submit(lease, action="write", answer="oops")
    undone_lease, undone = annotations.annotation_undo_last(project=project, reviewer=alice)
    assert undone_lease.pk == lease.pk and undone_lease.status == "active"
    assert undone["answer"] == "oops"
    assert not Annotation.objects.exists() and not AnnotationRevision.objects.exists()
    assert ItemResult.objects.get(item=item).reviewer_ids == []
    item.refresh_from_db()
    assert item.review_count == 1  # still held by alice


def test_undo_of_a_re_review_restores_the_previous_revision(project, alice):
    make_item(project, 1)
    lease = lease_for(project, alice)
    submit(lease, action="write", answer="first")
    queue.lease_release(lease=lease)
    submit(queue.lease_next_for_reviewer(project=project, reviewer=alice), action="write", answer="second")
    annotations.annotation_undo_last(project=project, reviewer=alice)
    annotation = Annotation.objects.get()
    assert annotation.revision == 1 and annotation.payload["answer"] == "first"


def test_undo_after_the_lease_ran_out_is_refused(project, alice):
    make_item(project, 1)
    lease = lease_for(project, alice)
    submit(lease, action="write", answer="x")
    Lease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ValidationError, match="Too late to undo"):
        annotations.annotation_undo_last(project=project, reviewer=alice)
    assert Annotation.objects.exists()


def test_durations_are_clipped_to_the_lease(project, alice):
    make_item(project, 1)
    lease = lease_for(project, alice)
    annotation = submit(lease, action="write", answer="x", duration_ms="999999999")
    assert annotation.duration_ms == project.lease_minutes * 60_000


def test_a_gold_item_without_candidates_is_written_from_scratch(project, alice):
    item = make_item(project, 1, responses=0)
    lease = lease_for(project, alice)
    assert lease.item == item and lease.display_order == []
    assert submit(lease, action="write", answer="From scratch").payload["answer"] == "From scratch"


def test_saving_an_unchanged_answer_adds_no_revision(project, alice):
    item = make_item(project, 1)
    submit(lease_for(project, alice), action="write", answer="same")
    with pytest.raises(annotations.AnswerUnchanged, match="Nothing changed"):
        factories.revise(item, alice, action="write", answer="same")
    assert AnnotationRevision.objects.count() == 1


def test_a_payload_of_another_kind_is_refused_by_the_service(project, alice):
    make_item(project, 1, kind="preference")
    lease = lease_for(project, alice)
    with pytest.raises(ValidationError, match="a gold answer does not fit it"):
        annotations.annotation_submit(
            project=project, lease_id=lease.pk, reviewer=alice, payload=GoldPayload(action="write", answer="x")
        )
    assert not Annotation.objects.exists()


def test_a_rubric_answer_needs_an_active_version_at_the_service(project, alice, active_rubric):
    make_item(project, 1, kind="rubric")
    lease = lease_for(project, alice)
    retired = RubricVersion.objects.create(rubric=active_rubric.rubric, number=2, status="retired")
    from annotate.payloads import RubricPayload

    with pytest.raises(ValidationError, match="no active rubric version"):
        annotations.annotation_submit(
            project=project,
            lease_id=lease.pk,
            reviewer=alice,
            payload=RubricPayload(response_index=0, scores={"acc": 1, "safe": "yes"}),
            rubric_version=retired,
        )


def test_the_preference_payload_names_responses_not_positions(project, alice):
    form = task_form(
        make_item(project, 1, kind="preference", responses=3),
        {"choice": "3", "worst": "1", "strength": "clear"},
        display_order=[1, 2, 0],
    )
    assert form.is_valid()
    assert form.payload == PreferencePayload(choice="response", chosen=0, rejected=1, strength="clear")
