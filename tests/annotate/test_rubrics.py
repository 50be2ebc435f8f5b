import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import DatabaseError, transaction

from annotate import selectors
from annotate.models import AnnotationRevision, ItemResult, Lease, RubricVersion
from annotate.services import rubrics
from tests.conftest import login
from tests.factories import CRITERIA, annotate, make_item, scores


@pytest.fixture
def rubric(project):
    return rubrics.rubric_create(project=project, name="Quality")


@pytest.fixture
def proposed(rubric, admin_user):
    version = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=admin_user)
    return rubrics.rubric_version_propose(version=version)


def activate_first(rubric, admin_user, alice, bob):
    version = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=admin_user)
    rubrics.rubric_version_propose(version=version)
    rubrics.rubric_signoff(version=version, reviewer=alice)
    rubrics.rubric_signoff(version=version, reviewer=bob)
    version.refresh_from_db()
    return version


def test_bad_criteria_are_refused_with_where_and_how_to_fix(rubric, admin_user):
    bad = [
        {"key": "Helpful", "name": "", "scale": "likert", "levels": [{"value": 1}]},
        {
            "key": "ok",
            "name": "Ok",
            "scale": "ordinal",
            "levels": [{"value": "high", "description": "x"}, {"value": 2}],
        },
    ]
    with pytest.raises(ValidationError) as err:
        rubrics.rubric_version_create(rubric=rubric, criteria=bad, created_by=admin_user)
    text = " ".join(err.value.messages)
    assert "criteria[0].key" in text and "criteria[0].scale" in text and "criteria[0].levels" in text
    assert "criteria[1].levels[0].value: a ordinal level needs a number" in text
    assert "criteria[1].levels[1].description" in text
    assert not RubricVersion.objects.exists()


def test_versions_are_numbered_in_order(rubric, admin_user):
    first = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=admin_user)
    second = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=admin_user)
    assert (first.number, second.number) == (1, 2)


def test_a_proposed_version_cannot_be_edited_by_the_service(proposed):
    with pytest.raises(ValidationError, match="immutable"):
        rubrics.rubric_version_update(version=proposed, criteria=CRITERIA[:1])


def test_the_database_refuses_to_change_a_proposed_versions_criteria(proposed):
    with pytest.raises(DatabaseError, match="immutable once proposed"):
        with transaction.atomic():
            RubricVersion.objects.filter(pk=proposed.pk).update(criteria=CRITERIA[:1])
    proposed.refresh_from_db()
    assert len(proposed.criteria) == 2


def test_the_database_lets_a_draft_change_and_a_proposed_version_change_status(rubric, admin_user, proposed):
    draft = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=admin_user)
    RubricVersion.objects.filter(pk=draft.pk).update(criteria=CRITERIA[:1])
    RubricVersion.objects.filter(pk=proposed.pk).update(status="retired")
    assert RubricVersion.objects.get(pk=draft.pk).criteria == CRITERIA[:1]
    assert RubricVersion.objects.get(pk=proposed.pk).status == "retired"


def test_a_version_activates_only_after_the_required_signoffs(project, proposed, alice, bob):
    rubrics.rubric_signoff(version=proposed, reviewer=alice)
    proposed.refresh_from_db()
    assert proposed.status == "proposed"
    assert selectors.rubric_version_active(project=project) is None
    rubrics.rubric_signoff(version=proposed, reviewer=bob)
    proposed.refresh_from_db()
    assert proposed.status == "active"
    assert selectors.rubric_version_active(project=project) == proposed


def test_scoring_keeps_the_previous_version_until_the_new_one_is_signed_off(project, rubric, admin_user, alice, bob):
    first = activate_first(rubric, admin_user, alice, bob)
    second = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=admin_user)
    rubrics.rubric_version_propose(version=second)
    rubrics.rubric_signoff(version=second, reviewer=alice)
    assert selectors.rubric_version_active(project=project) == first
    rubrics.rubric_signoff(version=second, reviewer=bob)
    assert selectors.rubric_version_active(project=project) == second
    first.refresh_from_db()
    assert first.status == "retired"


def test_non_members_cannot_sign_off_and_nobody_signs_twice(proposed, alice, mallory):
    with pytest.raises(PermissionDenied):
        rubrics.rubric_signoff(version=proposed, reviewer=mallory)
    rubrics.rubric_signoff(version=proposed, reviewer=alice)
    with pytest.raises(ValidationError, match="already signed off"):
        rubrics.rubric_signoff(version=proposed, reviewer=alice)


def test_activation_explains_missing_signoffs(proposed):
    with pytest.raises(ValidationError, match="0 of 2 sign-offs"):
        rubrics.rubric_version_activate(version=proposed)


@pytest.fixture
def calibrating(project, proposed, alice, bob):
    project.calibration_required = True
    project.calibration_threshold = 0.6
    project.save()
    rubrics.rubric_signoff(version=proposed, reviewer=alice)
    rubrics.rubric_signoff(version=proposed, reviewer=bob)
    proposed.refresh_from_db()
    return proposed


def score_all(version, items, reviewer, values):
    for item, (helpful, safe) in zip(items, values, strict=True):
        rubrics.calibration_score_submit(
            version=version, item=item, reviewer=reviewer, payload=scores(helpful=helpful, safe=safe)
        )


def test_calibration_gates_activation_until_every_reviewer_scored_and_agreement_is_reached(
    project, calibrating, alice, bob, carol
):
    assert calibrating.status == "calibrating"
    items = [make_item(project, "rubric", is_calibration=True) for _ in range(4)]
    agreed = [(1, "yes"), (3, "no"), (5, "yes"), (2, "no")]
    score_all(calibrating, items, alice, agreed)
    score_all(calibrating, items, bob, agreed)
    status = rubrics.calibration_evaluate(version=calibrating)
    assert status.missing == {"carol": 4}
    with pytest.raises(ValidationError, match="still to score: carol"):
        rubrics.rubric_version_activate(version=calibrating)
    score_all(calibrating, items, carol, agreed)
    calibrating.refresh_from_db()
    assert calibrating.status == "active"
    assert rubrics.calibration_evaluate(version=calibrating).alphas == {"helpful": 1.0, "safe": 1.0}


def test_calibration_below_the_threshold_names_the_failing_criterion(project, calibrating, alice, bob, carol):
    items = [make_item(project, "rubric", is_calibration=True) for _ in range(4)]
    score_all(calibrating, items, alice, [(1, "yes"), (3, "no"), (5, "yes"), (2, "no")])
    score_all(calibrating, items, bob, [(5, "yes"), (1, "no"), (2, "yes"), (4, "no")])
    score_all(calibrating, items, carol, [(3, "yes"), (5, "no"), (1, "yes"), (1, "no")])
    calibrating.refresh_from_db()
    assert calibrating.status == "calibrating"
    with pytest.raises(ValidationError, match=r"below the threshold 0.6 on: helpful"):
        rubrics.rubric_version_activate(version=calibrating)


def test_rescoring_a_calibration_item_adds_a_revision(project, calibrating, alice):
    item = make_item(project, "rubric", is_calibration=True)
    rubrics.calibration_score_submit(
        version=calibrating, item=item, reviewer=alice, payload=scores(helpful=2, safe="no")
    )
    ann = rubrics.calibration_score_submit(
        version=calibrating, item=item, reviewer=alice, payload=scores(helpful=4, safe="no")
    )
    assert ann.revision == 2
    assert ann.rubric_version == calibrating
    assert list(
        AnnotationRevision.objects.filter(annotation=ann).values_list("payload__scores__helpful", flat=True)
    ) == [
        2,
        4,
    ]


def test_calibration_scores_outside_the_levels_are_refused(project, calibrating, alice):
    item = make_item(project, "rubric", is_calibration=True)
    with pytest.raises(ValidationError, match="Helpfulness: 9 is not one of 1, 2, 3, 4, 5"):
        rubrics.calibration_score_submit(
            version=calibrating, item=item, reviewer=alice, payload=scores(helpful=9, safe="no")
        )


def test_sending_back_releases_leases_and_resets_results_of_items_scored_under_the_old_version(
    project, rubric, admin_user, alice, bob, judge
):
    from django.utils import timezone

    old = activate_first(rubric, admin_user, alice, bob)
    stale, adjudicated = make_item(project, "rubric"), make_item(project, "rubric")
    for item in (stale, adjudicated):
        for reviewer in (alice, bob):
            annotate(item, reviewer, scores(helpful=3, safe="yes"), version=old)
            Lease.objects.create(
                project=project, item=item, reviewer=reviewer, status="submitted", expires_at=timezone.now()
            )
    ItemResult.objects.create(item=stale, kind="rubric", status="consensus", payload=scores(helpful=3, safe="yes"))
    ItemResult.objects.create(item=adjudicated, kind="rubric", status="adjudicated", payload=scores(helpful=3))

    new = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=admin_user)
    rubrics.rubric_version_propose(version=new)
    rubrics.rubric_signoff(version=new, reviewer=alice)
    rubrics.rubric_signoff(version=new, reviewer=bob)
    new.refresh_from_db()
    assert rubrics.rubric_items_send_back_preview(version=new) == {"items": 1, "reviews": 2, "adjudicated_kept": 1}
    assert rubrics.rubric_items_send_back(version=new) == 1
    assert set(Lease.objects.filter(item=stale).values_list("status", flat=True)) == {"released"}
    assert set(Lease.objects.filter(item=adjudicated).values_list("status", flat=True)) == {"submitted"}
    assert ItemResult.objects.get(item=stale).status == "pending"
    assert ItemResult.objects.get(item=adjudicated).status == "adjudicated"


# --- Pages ------------------------------------------------------------------------------------


def test_an_admin_writes_a_version_and_bad_json_is_pointed_at(client, project, rubric, admin_user):
    import json

    login(client, admin_user)
    url = f"/projects/{project.slug}/rubrics/{rubric.pk}/versions/new/"
    assert client.get(url).status_code == 200
    response = client.post(url, {"criteria": '[{"key": "x",}]', "notes": ""})
    assert response.status_code == 400
    assert "line 1, column 14: Expecting property name" in response.content.decode()
    response = client.post(url, {"criteria": json.dumps(CRITERIA), "notes": "First cut"})
    version = RubricVersion.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/rubrics/versions/{version.pk}/")
    assert version.status == "draft" and version.created_by == admin_user


def test_reviewers_cannot_write_versions(client, project, rubric, alice):
    response = login(client, alice).post(
        f"/projects/{project.slug}/rubrics/{rubric.pk}/versions/new/", {"criteria": "[]"}
    )
    assert response.status_code == 403


def test_members_sign_off_on_the_version_page(client, project, proposed, alice, bob):
    url = f"/projects/{project.slug}/rubrics/versions/{proposed.pk}/"
    page = login(client, alice).get(url).content.decode()
    assert "Sign off" in page and "Helpfulness" in page and "How to pick a lock" in page
    assert client.post(url + "signoff/").status_code == 302
    login(client, bob).post(url + "signoff/")
    proposed.refresh_from_db()
    assert proposed.status == "active"


def test_the_version_page_offers_send_back_with_the_count(client, project, rubric, admin_user, alice, bob):
    old = activate_first(rubric, admin_user, alice, bob)
    for _ in range(3):
        annotate(make_item(project, "rubric"), alice, scores(helpful=3, safe="yes"), version=old)
    new = activate_first(rubric, admin_user, alice, bob)
    page = login(client, admin_user).get(f"/projects/{project.slug}/rubrics/versions/{new.pk}/").content.decode()
    assert "Send 3 items back for re-review" in page
    response = client.post(f"/projects/{project.slug}/rubrics/versions/{new.pk}/send-back/", follow=True)
    assert "3 item(s) scored under older versions were sent back for re-review." in response.content.decode()


def test_calibration_scores_are_saved_through_an_htmx_fragment(client, project, calibrating, alice):
    item = make_item(project, "rubric", is_calibration=True, prompt="Rate <this>")
    login(client, alice)
    page = client.get(f"/projects/{project.slug}/calibration/{calibrating.pk}/").content.decode()
    assert "Rate &lt;this&gt;" in page and f'id="calibration-item-{item.pk}"' in page
    url = f"/projects/{project.slug}/calibration/{calibrating.pk}/items/{item.pk}/"
    response = client.post(url, {"helpful": "4", "safe": "no"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith("<section") and "Saved" in html
    assert "<html" not in html
    from annotate.models import Annotation

    assert Annotation.objects.get(item=item, reviewer=alice).payload["scores"] == {"helpful": 4, "safe": "no"}
    bad = client.post(url, {"helpful": "4"}, HTTP_HX_REQUEST="true")
    assert bad.status_code == 400 and "Safe: choose a level." in bad.content.decode()


def test_non_reviewers_cannot_score_calibration_items(client, project, calibrating, judge):
    item = make_item(project, "rubric", is_calibration=True)
    url = f"/projects/{project.slug}/calibration/{calibrating.pk}/items/{item.pk}/"
    assert login(client, judge).post(url, {"helpful": "4", "safe": "no"}).status_code == 403


def test_the_admin_shows_a_proposed_version_read_only(proposed, rubric, admin_user):
    from django.contrib import admin as django_admin

    model_admin = django_admin.site._registry[RubricVersion]
    assert "criteria" in model_admin.get_readonly_fields(None, proposed)
    assert not model_admin.has_delete_permission(None, proposed)
    draft = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=admin_user)
    assert "criteria" not in model_admin.get_readonly_fields(None, draft)


def test_an_admin_adds_an_unreviewed_rubric_item_to_calibration(client, project, calibrating, admin_user, alice):
    fresh, reviewed = make_item(project, "rubric"), make_item(project, "rubric")
    annotate(reviewed, alice, scores(helpful=3, safe="yes"))
    login(client, admin_user)
    url = f"/projects/{project.slug}/calibration/{calibrating.pk}/items/"
    client.post(url, {"item_id": str(fresh.pk)})
    fresh.refresh_from_db()
    assert fresh.is_calibration
    page = client.post(url, {"item_id": str(reviewed.pk)}, follow=True).content.decode()
    assert "already been served to reviewers" in page
    reviewed.refresh_from_db()
    assert not reviewed.is_calibration
    assert login(client, alice).post(url, {"item_id": str(fresh.pk)}).status_code == 403
