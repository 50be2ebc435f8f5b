"""Reference mode (one run's response against the eval record's reference answer) and rubric mode (one run's
responses scored under the eval set project's active rubric): built on the review queue's rubric items, blind,
stored in display-independent terms, with results and CIs on the results page and the model card."""

import re

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from annotate.models import Annotation, Item, Lease, Rubric, RubricVersion
from evalsets.judging import stats
from evalsets.judging.models import Comparison, ComparisonItem, GenerationOutput
from evalsets.judging.results import comparison_results
from evalsets.judging.services.comparisons import comparison_create
from evalsets.models import EvalRecord
from tests.judging.test_comparison import (
    BASE_LABEL,
    BASE_MODEL,
    COMPARISON_NAME,
    TUNED_LABEL,
    assert_nothing_a_reviewer_reaches_hints_at_a_model,
    finished_run,
)

pytestmark = pytest.mark.django_db

CRITERIA = [
    {
        "key": "helpful",
        "name": "Helpful",
        "scale": "ordinal",
        "levels": [{"value": v, "label": str(v), "description": f"Helpfulness {v} of 5."} for v in range(1, 6)],
    },
    {
        "key": "correct",
        "name": "Correct",
        "scale": "binary",
        "levels": [
            {"value": 0, "label": "No", "description": "Something in it is wrong."},
            {"value": 1, "label": "Yes", "description": "All of it is right."},
        ],
    },
]


@pytest.fixture
def tuned(eval_version, adapter_job, admin_user, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    return finished_run(eval_version, admin_user, label=TUNED_LABEL, job=adapter_job, text=lambda r: f"Tuned: {r.pk}")


@pytest.fixture
def reference_queue(tuned, admin_user, alice, bob):
    return comparison_create(
        name=COMPARISON_NAME,
        mode="reference",
        run_a=tuned,
        reviewers=[alice, bob],
        overlap_k=2,
        seed=3,
        created_by=admin_user,
    )


@pytest.fixture
def signed_rubric(eval_version, admin_user):
    """The eval set project's active rubric version (as sign-offs leave it)."""
    rubric = Rubric.objects.create(project=eval_version.project, name="Support quality")
    return RubricVersion.objects.create(
        rubric=rubric, number=3, status=RubricVersion.Status.ACTIVE, criteria=CRITERIA, created_by=admin_user
    )


@pytest.fixture
def rubric_queue(tuned, signed_rubric, admin_user, alice, bob):
    return comparison_create(
        name=COMPARISON_NAME,
        mode="rubric",
        run_a=tuned,
        reviewers=[alice, bob],
        overlap_k=2,
        seed=3,
        created_by=admin_user,
    )


def _open(client, user, project, order):
    """``user`` opens the queue; their first lease is shown in ``order``. Returns the lease and the card's HTML."""
    client.force_login(user)
    assert client.get(reverse("annotate:queue", args=[project.slug])).status_code == 200
    lease = Lease.objects.filter(reviewer=user, status="active").order_by("item_id").first()
    Lease.objects.filter(pk=lease.pk).update(display_order=order)
    page = client.get(reverse("annotate:queue", args=[project.slug])).content.decode()
    return lease, page


def _submit(client, project, lease, **scores):
    client.force_login(lease.reviewer)
    data = {f"score-{k}": str(v) for k, v in scores.items()} | {"duration_ms": "800"}
    response = client.post(reverse("annotate:queue-submit", args=[project.slug, lease.pk]), data)
    assert response.status_code == 302, response.content[:2000]
    return lease.item_id


# --- reference mode ------------------------------------------------------------------------------------


def test_the_reference_queue_holds_each_gold_prompt_with_its_reference_and_the_response_apart(
    reference_queue, eval_version
):
    records = EvalRecord.objects.filter(version=eval_version)
    with_reference = {r.pk: r for r in records if r.reference.strip()}
    assert len(with_reference) == 6
    links = {link.item_id: link for link in ComparisonItem.objects.filter(comparison=reference_queue)}
    items = list(Item.objects.filter(project=reference_queue.project))
    assert len(items) == len(links) == 6
    sides = []
    for item in items:
        link = links[item.pk]
        assert item.kind == "rubric" and item.provenance == "model_generated" and item.split == "eval"
        assert item.metadata == {} and [r["model"] for r in item.responses] == ["", ""]
        assert item.rubric_response == link.a_index  # the response reviewers judge is the run's
        assert item.responses[link.a_index]["text"] == GenerationOutput.objects.get(pk=link.output_a_id).text
        assert item.responses[link.b_index] == {
            "text": with_reference[link.record_id].reference,
            "model": "",
            "role": "reference",
        }
        assert link.output_b_id is None
        sides.append(link.a_index)
    assert set(sides) == {0, 1}  # where the reference sits is drawn per item
    project = reference_queue.project
    assert project.task_kinds == ["rubric"] and project.overlap_k == 2
    assert TUNED_LABEL not in project.name and COMPARISON_NAME not in project.name
    version = RubricVersion.objects.get(rubric__project=project)
    assert version.status == "active"
    assert [level["value"] for level in version.criteria[0]["levels"]] == list(stats.VERDICTS)


def test_a_version_without_reference_answers_cannot_have_a_reference_queue(
    make_item, freeze, admin_user, alice, settings, tmp_path
):
    settings.ARTIFACTS_DIR = tmp_path
    make_item("preference", prompt="Which reply is kinder?")
    version = freeze().version
    run = finished_run(version, admin_user, label="x", base_model="m")
    with pytest.raises(ValidationError, match="has no record with a reference answer"):
        comparison_create(
            name="x", mode="reference", run_a=run, reviewers=[alice], overlap_k=1, seed=0, created_by=admin_user
        )
    assert not Comparison.objects.exists()


def test_single_run_modes_take_one_run_and_pairwise_takes_two(tuned, admin_user, alice, eval_version):
    base = finished_run(eval_version, admin_user, label=BASE_LABEL, base_model=BASE_MODEL)
    common = {"name": "x", "reviewers": [alice], "overlap_k": 1, "seed": 0, "created_by": admin_user}
    with pytest.raises(ValidationError, match="judge one run"):
        comparison_create(mode="reference", run_a=tuned, run_b=base, **common)
    with pytest.raises(ValidationError, match="needs a second run"):
        comparison_create(mode="pairwise", run_a=tuned, **common)
    with pytest.raises(ValidationError, match="no active rubric version"):
        comparison_create(mode="rubric", run_a=tuned, **common)
    assert not Comparison.objects.exists()


def test_two_reviewers_who_see_the_reference_on_opposite_sides_store_the_same_verdict(
    client, reference_queue, alice, bob
):
    project = reference_queue.project
    lease_a, page_a = _open(client, alice, project, [0, 1])
    lease_b, page_b = _open(client, bob, project, [1, 0])
    assert lease_a.item_id == lease_b.item_id
    link = ComparisonItem.objects.get(item_id=lease_a.item_id)
    # The screens differ: the reference is on the left for one reviewer, on the right for the other.
    heads = [re.findall(r"(Reference answer|Response to score)", page)[:2] for page in (page_a, page_b)]
    left_is_reference = link.a_index == 1  # display order [0, 1] shows stored response 0 on the left
    expected = ["Reference answer", "Response to score"]
    expected = expected if left_is_reference else expected[::-1]
    assert heads[0] == expected and heads[1] == expected[::-1]
    # Each presses the level of the verdict (the same keys whatever the sides): the stored judgement is the same.
    _submit(client, project, lease_a, verdict="worse")
    _submit(client, project, lease_b, verdict="worse")
    payloads = [a.payload for a in Annotation.objects.filter(item_id=lease_a.item_id).order_by("reviewer_id")]
    assert payloads[0] == payloads[1] == {"response_index": link.a_index, "scores": {"verdict": "worse"}}
    result = comparison_results(reference_queue)
    assert result["overall"]["counts"] == {"better": 0, "as_good": 0, "worse": 2, "wrong": 0}


def test_the_reference_results_give_shares_the_verdict_line_breakdowns_and_judges(client, reference_queue, alice, bob):
    project = reference_queue.project
    alice_verdicts = ["better", "as_good", "as_good", "worse", "wrong", "as_good"]
    bob_verdicts = ["better", "as_good", "worse", "worse", "wrong", "better"]
    for mine, theirs in zip(alice_verdicts, bob_verdicts, strict=True):
        lease, _ = _open(client, alice, project, [1, 0])
        _submit(client, project, lease, verdict=mine)
        lease, _ = _open(client, bob, project, [0, 1])
        _submit(client, project, lease, verdict=theirs)
    r = comparison_results(reference_queue)
    overall = r["overall"]
    assert overall["counts"] == {"better": 3, "as_good": 4, "worse": 3, "wrong": 2}
    assert overall["as_good_or_better"].value == pytest.approx(7 / 12)
    assert overall["n_items"] == 6 and r["items_judged"] == r["items_total"] == 6
    assert r["verdict"].startswith(f"{TUNED_LABEL} is as good as the reference or better on 58% ± ")
    assert "of support-eval v1 (wrong on 17% ± " in r["verdict"]
    assert r["verdict"].endswith(f"n=6, 2 reviewers per item, α={r['alpha']:.2f}")
    assert [row["group"] for row in r["by_reviewer"]] == ["alice", "bob"]
    assert r["by_reviewer"][0]["as_good"].value == pytest.approx(3 / 6)
    assert {row["group"] for row in r["by_meta"]["category"]} == {"refunds", "orders", "billing"}
    assert {row["group"] for row in r["by_meta"]["difficulty"]} == {"easy", "hard"}

    client.force_login(reference_queue.created_by)
    page = client.get(reference_queue.get_absolute_url()).content.decode()
    for text in (r["verdict"], "As good or better", "By category", "By difficulty", "The judges", "bob"):
        assert text in page, text
    card = client.get(reverse("judging:model-card", args=[reference_queue.run_a.job_id])).content.decode()
    assert r["verdict"] in card and "Against the reference" in card
    readme = client.get(reverse("judging:model-card-markdown", args=[reference_queue.run_a.job_id]))
    body = readme.content.decode()
    assert f"| {COMPARISON_NAME} | reference | {r['verdict']} |" in body
    assert "| better | as good | worse | wrong |" in body and "| 25.0% [" in body


def test_the_reference_queue_is_blind_over_every_endpoint_a_reviewer_can_reach(client, reference_queue, alice):
    lease, page = _open(client, alice, reference_queue.project, [1, 0])
    assert "Reference answer" in page and "Response to score" in page
    _submit(client, reference_queue.project, lease, verdict="as_good")
    assert_nothing_a_reviewer_reaches_hints_at_a_model(client, reference_queue, alice)


# --- rubric mode ---------------------------------------------------------------------------------------


def test_the_rubric_queue_scores_each_response_under_the_projects_active_version(
    rubric_queue, signed_rubric, eval_version
):
    assert rubric_queue.rubric_version == signed_rubric
    queue_version = RubricVersion.objects.select_related("rubric").get(rubric__project=rubric_queue.project)
    assert queue_version.status == "active" and queue_version.criteria == signed_rubric.criteria
    assert (queue_version.rubric.name, queue_version.number) == ("Support quality", 3)
    items = list(Item.objects.filter(project=rubric_queue.project))
    assert len(items) == eval_version.record_count == 6
    for item in items:
        assert item.kind == "rubric" and item.provenance == "model_generated" and item.rubric_response == 0
        assert len(item.responses) == 1 and item.responses[0]["text"].startswith("Tuned: ")
    # A newer version activated in the eval set's project later does not change what this queue scores under.
    newer = RubricVersion.objects.create(
        rubric=signed_rubric.rubric, number=4, status="proposed", criteria=CRITERIA[:1], created_by=None
    )
    from annotate.services.rubrics import _activate

    _activate(newer)
    from annotate.selectors import rubric_version_active

    assert rubric_version_active(project=rubric_queue.project) == queue_version


def test_the_rubric_results_give_per_criterion_means_with_cis_on_the_results_page_and_the_model_card(
    client, rubric_queue, alice, bob
):
    project = rubric_queue.project
    helpful = {"alice": [5, 4, 3, 4, 2, 5], "bob": [4, 4, 3, 5, 1, 5]}
    correct = {"alice": [1, 1, 0, 1, 0, 1], "bob": [1, 1, 0, 1, 1, 1]}
    for i in range(6):
        for user in (alice, bob):
            lease, page = _open(client, user, project, [0])
            assert "Response to score" in page and "Reference answer" not in page
            _submit(client, project, lease, helpful=helpful[user.username][i], correct=correct[user.username][i])
    r = comparison_results(rubric_queue)
    by_key = {c["key"]: c for c in r["criteria"]}
    assert by_key["helpful"]["mean"].value == pytest.approx(45 / 12)
    assert by_key["correct"]["mean"].value == pytest.approx(9 / 12)
    assert by_key["helpful"]["n_items"] == 6 and by_key["helpful"]["n_scores"] == 12
    low, high = by_key["helpful"]["mean"].low, by_key["helpful"]["mean"].high
    assert 1 <= low < 45 / 12 < high <= 5
    assert by_key["helpful"]["alpha"] is not None
    assert [row["group"] for row in by_key["helpful"]["by_reviewer"]] == ["alice", "bob"]
    assert by_key["helpful"]["by_reviewer"][0]["mean"].value == pytest.approx(23 / 6)
    assert r["verdict"].startswith(f"{TUNED_LABEL} under Support quality v3 on support-eval v1: Helpful 3.75 ± ")
    assert r["verdict"].endswith("n=6, 2 reviewers per item")

    client.force_login(rubric_queue.created_by)
    page = client.get(rubric_queue.get_absolute_url()).content.decode()
    for text in (r["verdict"], "Support quality v3", "3.75", "0.75", "Helpful", "Correct"):
        assert text in page, text
    card = client.get(reverse("judging:model-card", args=[rubric_queue.run_a.job_id])).content.decode()
    assert r["verdict"] in card and "rubric-means" in card
    body = client.get(reverse("judging:model-card-markdown", args=[rubric_queue.run_a.job_id])).content.decode()
    assert "| criterion | n | mean [95% CI] | α |" in body and "| Helpful | 6 | 3.75 [" in body


def test_the_rubric_queue_is_blind_over_every_endpoint_a_reviewer_can_reach(client, rubric_queue, alice):
    lease, _ = _open(client, alice, rubric_queue.project, [0])
    _submit(client, rubric_queue.project, lease, helpful=4, correct=1)
    assert_nothing_a_reviewer_reaches_hints_at_a_model(client, rubric_queue, alice)


def test_the_comparison_form_creates_each_mode_and_says_what_is_wrong(client, tuned, signed_rubric, admin_user, alice):
    client.force_login(admin_user)
    url = reverse("judging:comparison-list")
    common = {"name": "one run", "run_a": tuned.pk, "overlap_k": 1, "reviewers": [alice.pk], "seed": 0}
    response = client.post(url, {**common, "mode": "pairwise"})
    assert (
        response.status_code == 400 and "A pairwise comparison needs the challenger run." in response.content.decode()
    )
    for mode in ("reference", "rubric"):
        response = client.post(url, {**common, "mode": mode})
        assert response.status_code == 302
        comparison = Comparison.objects.get(pk=int(response["Location"].rstrip("/").rsplit("/", 1)[1]))
        assert comparison.mode == mode and comparison.run_b is None
    listing = client.get(url).content.decode()
    assert "Is the response as good as the reference answer" in listing and "Rubric scores" in listing
