"""Blind comparison queues: built on the review queue, sides drawn per item and shown per reviewer, judgements
stored in the runs' terms whatever the display, and nothing a reviewer can reach names or hints at a model."""

import itertools
import re

import pytest
from django.urls import get_resolver, reverse

from annotate.models import Annotation, Item, Lease
from evalsets.judging.models import ComparisonItem, GenerationOutput
from evalsets.judging.results import comparison_results
from evalsets.judging.services import runs
from evalsets.judging.services.comparisons import comparison_create
from tests.test_csv_cells import _patterns

pytestmark = pytest.mark.django_db

BASE_LABEL = "llama-base-QX7"
TUNED_LABEL = "support-tune-ZK9"
COMPARISON_NAME = "secret sauce v2 against the base"
BASE_MODEL = "/models/secret-base-model-VV3"


def finished_run(version, admin, *, label, base_model="", job=None, text=lambda r: r.prompt):
    """A run whose outputs are written as the gpu worker writes them (no model needed here)."""
    from evalsets.judging.generate import DecodingConfig

    run = runs.generation_run_start(
        label=label, decoding=DecodingConfig(), created_by=admin, version=version, base_model=base_model, job=job
    )
    secret = run.worker_secret
    assert runs.generation_run_claim(run_id=run.pk, secret=secret, worker="gpu", using="default")
    rows = [
        {
            "position": i,
            "record_id": r.pk,
            "check_key": "",
            "text": text(r),
            "new_tokens": 5,
            "finish_reason": "eos",
        }
        for i, r in enumerate(version.records.order_by("position"))
    ]
    assert runs.generation_outputs_add(run_id=run.pk, secret=secret, rows=rows, using="default")
    identity = {"base_model": {"source": "local", "path": base_model, "sha256": "b" * 64}}
    assert runs.generation_run_update(run_id=run.pk, secret=secret, using="default", model_identity=identity)
    assert runs.generation_run_finish(run_id=run.pk, secret=secret, status="succeeded", using="default")
    run.refresh_from_db()
    return run


@pytest.fixture
def comparison(eval_version, adapter_job, admin_user, alice, bob, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    base = finished_run(
        eval_version, admin_user, label=BASE_LABEL, base_model=BASE_MODEL, text=lambda r: f"Base: {r.pk}"
    )
    tuned = finished_run(eval_version, admin_user, label=TUNED_LABEL, job=adapter_job, text=lambda r: f"Tuned: {r.pk}")
    return comparison_create(
        name=COMPARISON_NAME,
        run_a=base,
        run_b=tuned,
        reviewers=[alice, bob],
        overlap_k=2,
        seed=3,
        created_by=admin_user,
    )


def test_the_queue_holds_each_prompt_with_both_responses_and_the_provenance_apart(comparison, eval_version):
    items = list(Item.objects.filter(project=comparison.project).order_by("pk"))
    assert len(items) == eval_version.record_count == 6
    links = {link.item_id: link for link in ComparisonItem.objects.filter(comparison=comparison)}
    sides = []
    for item in items:
        link = links[item.pk]
        assert item.kind == "preference" and item.provenance == "model_generated" and item.metadata == {}
        assert [r["model"] for r in item.responses] == ["", ""]
        assert item.responses[link.a_index]["text"] == GenerationOutput.objects.get(pk=link.output_a_id).text
        assert item.responses[link.b_index]["text"].startswith("Tuned: ")
        sides.append(link.a_index)
    assert set(sides) == {0, 1}  # the sides are drawn per item, not fixed
    assert comparison.project.overlap_k == 2 and set(comparison.project.members.all()) >= {comparison.created_by}
    assert TUNED_LABEL not in comparison.project.name and COMPARISON_NAME not in comparison.project.name


def test_two_runs_on_different_versions_or_unfinished_cannot_be_compared(comparison, admin_user, alice):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="two different runs"):
        comparison_create(
            name="x",
            run_a=comparison.run_a,
            run_b=comparison.run_a,
            reviewers=[alice],
            overlap_k=1,
            seed=0,
            created_by=admin_user,
        )


def _work(client, user, project, *, order, pick):
    """``user`` opens the queue, sees the first item's responses in ``order`` and picks ``pick`` (a run: a/b)."""
    client.force_login(user)
    assert client.get(reverse("annotate:queue", args=[project.slug])).status_code == 200
    lease = Lease.objects.filter(reviewer=user, status="active").order_by("item_id").first()
    Lease.objects.filter(pk=lease.pk).update(display_order=order)
    link = ComparisonItem.objects.get(item_id=lease.item_id)
    index = link.a_index if pick == "a" else link.b_index
    position = order.index(index) + 1  # what the reviewer pressed: a place on the screen
    response = client.post(
        reverse("annotate:queue-submit", args=[project.slug, lease.pk]),
        {"choice": str(position), "strength": "clear", "rationale": "", "duration_ms": "900"},
    )
    assert response.status_code == 302, response.content[:2000]
    return lease.item_id


def test_two_reviewers_in_opposite_displays_who_pick_the_same_run_store_the_same_judgement(
    client, comparison, alice, bob
):
    first = _work(client, alice, comparison.project, order=[0, 1], pick="b")
    second = _work(client, bob, comparison.project, order=[1, 0], pick="b")
    assert first == second
    payloads = [a.payload for a in Annotation.objects.filter(item_id=first).order_by("reviewer_id")]
    assert payloads[0]["chosen"] == payloads[1]["chosen"] == ComparisonItem.objects.get(item_id=first).b_index
    result = comparison_results(comparison)
    assert result["overall"]["counts"] == {"b": 2, "tie": 0, "both_bad": 0, "a": 0}
    assert result["position_bias"] == {"n": 2, "left": 1, "left_share": 0.5, "p_value": 1.0}


# --- blindness over every endpoint a reviewer can reach ---------------------------------------------------


GENERIC_HINTS = {"/judging/", "generation run", "adapter", "fine-tun", "checkpoint"}
SCHEMA_URLS = ("/api/v1/openapi.json", "/api/v1/docs")


def _hints(comparison) -> list[str]:
    """Everything that names or points at a model or a run."""
    tuned = next(r for r in comparison.runs if r.job_id)
    hints = [r.label for r in comparison.runs] + [f"run #{r.pk}" for r in comparison.runs]
    hints += [r.base_model for r in comparison.runs if r.base_model]
    return hints + [
        COMPARISON_NAME,
        comparison.name,
        tuned.adapter_dir,
        str(tuned.job.output_dir),
        tuned.job.snapshot.name,
        "b" * 64,  # the base model's hash
        "/judging/",
        "generation run",
        "adapter",
        "fine-tun",
        "checkpoint",
        f"job #{tuned.job_id}",
    ]


def _values(comparison, alice) -> dict[str, list]:
    project = comparison.project
    tuned = next(r for r in comparison.runs if r.job_id)
    item = ComparisonItem.objects.filter(comparison=comparison).first().item
    leases = list(Lease.objects.filter(project=project).values_list("pk", flat=True)) or [1]
    return {
        "slug": [project.slug],
        "item_id": [item.pk],
        "lease_id": leases,
        "run_id": [r.pk for r in comparison.runs],
        "comparison_id": [comparison.pk],
        "job_id": [tuned.job_id],
        "username": [alice.username],
        # Arguments of pages about other things: the first of each (or an id that is not there: a 404).
        "batch_id": [1],
        "import_id": [1],
        "evalsets:fmt": ["goldset"],
        "annotate:fmt": ["jsonl", "csv"],
        "snapshot_id": [tuned.job.snapshot_id],
        "other_id": [1],
        "audit_id": [1],
        "preflight_id": [1],
        "evalsets:version_id": [comparison.run_a.evalset_version_id],
        "annotate:version_id": [1],
        "rubric_id": [1],
        "token_id": [1],
        "api:version_id": [1],
        "evalset_version_id": [comparison.run_a.evalset_version_id],
        "api:layout": ["goldset"],
        "api:path": ["manifest.json"],
        "flag_id": [1],
    }


def _body(response) -> str:
    raw = b"".join(response.streaming_content) if response.streaming else response.content
    return raw.decode("utf-8", "replace")


def test_no_page_fragment_export_or_api_answer_a_reviewer_can_reach_hints_at_a_model(client, comparison, alice):
    # The reviewer works part of the queue first, so the queue, history and progress have content.
    _work(client, alice, comparison.project, order=[1, 0], pick="a")
    assert_nothing_a_reviewer_reaches_hints_at_a_model(client, comparison, alice)


def assert_nothing_a_reviewer_reaches_hints_at_a_model(client, comparison, alice) -> None:
    """Every page and fragment of the URL conf, and the API with the reviewer's token, searched for the hints."""
    client.force_login(alice)
    client.get(reverse("annotate:queue", args=[comparison.project.slug]))
    hints = _hints(comparison)
    specific = [h for h in hints if h not in GENERIC_HINTS]
    values = _values(comparison, alice)
    reached, leaks = [], []
    for namespace, pattern in _patterns(get_resolver().url_patterns):
        names = list(pattern.pattern.converters)
        missing = [n for n in names if f"{namespace}:{n}" not in values and n not in values]
        assert not missing, f"{namespace}:{pattern.name} takes {missing}: give this test values for them"
        choices = [values.get(f"{namespace}:{n}", values.get(n)) for n in names]
        for combination in itertools.product(*choices):
            if pattern.name is None:
                url = "/" + str(pattern.pattern).strip("^$")
            else:
                name = f"{namespace}:{pattern.name}" if namespace else pattern.name
                url = reverse(name, kwargs=dict(zip(names, combination, strict=True)))
            for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
                response = client.get(url, **headers)
                body = _body(response)
                if response.status_code < 400:
                    reached.append(url)
                # Words that only hint at judging in general count on what the reviewer is served; a refusal
                # (the same words for every caller) and the API's own schema describe the app, not a model.
                served = response.status_code < 400 and not url.startswith(SCHEMA_URLS)
                for hint in hints if served else specific:
                    if hint.lower() in body.lower() or hint.lower() in str(response.headers).lower():
                        leaks.append(f"{url} ({response.status_code}): {hint!r}")
    # The API as a pipeline would call it, with a token of the reviewer's.
    from annotate.services.tokens import api_token_create

    _, token = api_token_create(user=alice, name="t", scope="write")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    slug = comparison.project.slug
    for method, path in [
        ("get", "/api/v1/projects"),
        ("get", f"/api/v1/projects/{slug}"),
        ("get", f"/api/v1/projects/{slug}/items"),
        ("post", f"/api/v1/projects/{slug}/queue/next"),
        ("get", f"/api/v1/projects/{slug}/rubrics"),
    ]:
        response = getattr(client, method)(path, **auth)
        body = _body(response)
        if response.status_code < 400:
            reached.append(path)
        leaks += [f"API {path}: {h!r}" for h in hints if h.lower() in body.lower()]
    assert not leaks, "\n".join(leaks)
    # The enumeration reached the queue, its fragments, the history and the API's items and queue.
    must = {
        f"/projects/{slug}/queue/",
        f"/projects/{slug}/queue/next/",
        f"/projects/{slug}/",
        f"/api/v1/projects/{slug}/items",
        f"/api/v1/projects/{slug}/queue/next",
    }
    assert must <= set(reached), must - set(reached)
    assert any(re.search(r"/queue/items/\d+/history/", u) for u in reached)
    # And the hints are there to be found: the admin's comparison page names both runs.
    client.force_login(comparison.created_by)
    page = client.get(comparison.get_absolute_url()).content.decode()
    assert all(r.label in page for r in comparison.runs) and comparison.name in page


def test_the_results_page_gives_the_verdict_breakdowns_judges_and_what_was_compared(
    client, comparison, alice, bob, make_item, freeze
):
    for i in range(6):
        _work(client, alice, comparison.project, order=[0, 1], pick="b")
        _work(client, bob, comparison.project, order=[1, 0], pick="b" if i % 2 else "a")
    results = comparison_results(comparison)
    assert results["overall"]["counts"] == {"b": 9, "tie": 0, "both_bad": 0, "a": 3}
    assert results["verdict"].startswith(f"{TUNED_LABEL} ")
    assert "on support-eval v1, n=6, 2 reviewers per item, α=" in results["verdict"]
    assert {row["group"] for row in results["by_meta"]["category"]} == {"refunds", "orders", "billing"}
    assert [row["group"] for row in results["by_reviewer"]] == ["alice", "bob"]
    assert results["by_reviewer"][0]["win"].value == 1.0 and results["by_reviewer"][1]["win"].value == 0.5

    client.force_login(comparison.created_by)
    page = client.get(comparison.get_absolute_url()).content.decode()
    for text in (results["verdict"], "By category", "By difficulty", "Position bias", eval_sha(comparison), "alice"):
        assert text in page
    assert "superseded" not in page
    # The win rates at a glance: a bar each for all judgements and each reviewer, named axis, numbers linked.
    figure = page.split('<figure class="chart-box">')[1].split("</figure>")[0]
    assert 'class="axis-title"' in figure and "Win rate of B (0 to 1; ties count half; 0.5 = even)" in figure
    for label, share in (("All judgements", results["overall"]), ("by alice", results["by_reviewer"][0])):
        assert f"{label}: {share['win_rate'].value:.3f}" in figure
    assert 'href="#results-table"' in figure and 'id="results-table"' in page

    make_item("gold", prompt="A new question for the second version?")
    freeze(changelog="One more record.")
    page = client.get(comparison.get_absolute_url()).content.decode()
    assert "has been superseded by support-eval-v2" in page


def eval_sha(comparison) -> str:
    return comparison.run_a.evalset_version.sha256
