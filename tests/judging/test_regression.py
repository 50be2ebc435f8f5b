"""Capability regression: the seeded built-in suite, the scorers, project checks and thresholds, the
base/adapter comparison with its flag on the adapter's page, and a real pair of runs on the tiny model."""

import json
import re

import pytest
from django.core.exceptions import ValidationError

from evalsets.judging import regression
from evalsets.judging.models import GenerationRun
from evalsets.judging.results import regression_comparison
from evalsets.judging.services import regression as services
from evalsets.judging.services import runs
from tests.judging.conftest import run_here

pytestmark = pytest.mark.django_db


# --- scorers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "answer", "passes"),
    [
        ({"kind": "exact", "expected": "CONFIRMED"}, "confirmed.", True),
        ({"kind": "exact", "expected": "CONFIRMED"}, "  Confirmed  ", True),
        ({"kind": "exact", "expected": "CONFIRMED"}, "CONFIRMED!", False),
        ({"kind": "exact", "expected": "73619"}, "The number is 73619", False),
        ({"kind": "regex", "expected": r"2026-04-02"}, "It arrives on 2026-04-02.", True),
        ({"kind": "regex", "expected": r"^\W*yes\W*$"}, "Yes.", True),
        ({"kind": "regex", "expected": r"^\W*yes\W*$"}, "Yes, because 17 > 9", False),
        ({"kind": "regex", "expected": r"\brefund\b"}, "No REFUND possible", True),
        ({"kind": "numeric", "expected": "30.55", "tolerance": 0.01}, "The total refund is $30.55.", True),
        ({"kind": "numeric", "expected": "30.55", "tolerance": 0.01}, "$23.40 + $7.15 = $30.56", True),
        ({"kind": "numeric", "expected": "30.55", "tolerance": 0.01}, "$23.40 + $7.15 = $30.57", False),
        ({"kind": "numeric", "expected": "30.55", "tolerance": 0}, "30.55 (not 23.40)", False),  # the last number
        ({"kind": "numeric", "expected": "1234.5", "tolerance": 0}, "That is $1,234.50 in all", True),
        ({"kind": "numeric", "expected": "-3", "tolerance": 0}, "a change of -3", True),
        ({"kind": "numeric", "expected": "3500", "tolerance": 0}, "about three thousand", False),
        ({"kind": "json_keys", "expected": ["order_id", "status"]}, '{"order_id": 4812, "status": "shipped"}', True),
        ({"kind": "json_keys", "expected": ["order_id", "status"]}, '```json\n{"status": 1, "order_id": 2}\n```', True),
        ({"kind": "json_keys", "expected": ["order_id", "status"]}, 'Sure! {"order_id": 1, "status": 2} Done.', True),
        ({"kind": "json_keys", "expected": ["order_id", "status"]}, '{"order_id": 1}', False),
        ({"kind": "json_keys", "expected": ["order_id", "status"]}, '{"order_id": 1, "status": 2, "x": 3}', False),
        ({"kind": "json_keys", "expected": ["order_id", "status"]}, "order_id: 1, status: 2", False),
        ({"kind": "max_words", "expected": "5"}, "Your parcel is delayed, sorry.", True),
        ({"kind": "max_words", "expected": "5"}, "Your parcel is delayed, we are sorry.", False),
        ({"kind": "max_words", "expected": "5"}, "   ", False),
        ({"kind": "max_words", "expected": "5", "mentions": "parcel"}, "Your parcel is late.", True),
        ({"kind": "max_words", "expected": "5", "mentions": "parcel"}, "Sorry about that.", False),
    ],
)
def test_checks_score_answers(check, answer, passes):
    assert regression.score(check, answer) is passes


def canonical_answer(check: dict) -> str:
    """A right answer to a built-in check, written from its spec the way a model would word it."""
    kind, expected = check["kind"], check["expected"]
    if kind == "numeric":
        return f"That comes to ${float(expected):,.2f} in total."
    if kind == "exact":
        return f"{expected}."
    if kind == "regex":
        core = expected.removeprefix(r"^\W*").removesuffix(r"\W*$")
        return "Yes." if core == "yes" else "No." if core == "no" else re.sub(r"\\(.)", r"\1", core)
    if kind == "json_keys":
        return json.dumps({k: 1 for k in expected})
    return f"Sorry: {check['mentions'].split('|')[0]} news."


def test_the_built_in_suite_is_seeded_a_few_hundred_items_and_each_check_is_answerable():
    suite = regression.build_suite(seed=0)
    assert len(suite) == 300 and len({c["key"] for c in suite}) == 300
    assert {c["category"] for c in suite} == set(regression.CATEGORIES)
    assert suite == regression.build_suite(seed=0) and suite != regression.build_suite(seed=1)
    for check in suite:
        assert regression.score(check, canonical_answer(check)), check
        assert not regression.score(check, "I am not sure, sorry about that, could you tell me more please?"), check
    refund = next(c for c in suite if c["category"] == "support_arithmetic" and "refund both" in c["prompt"])
    prices = [float(p) for p in re.findall(r"\$(\d+\.\d\d)", refund["prompt"])]
    assert float(refund["expected"]) == pytest.approx(sum(prices))


def test_project_checks_are_validated_and_join_the_suite(project):
    with pytest.raises(ValidationError, match="not a number"):
        services.regression_check_add(project=project, category="c", prompt="p", kind="numeric", expected="$3")
    with pytest.raises(ValidationError, match="does not compile"):
        services.regression_check_add(project=project, category="c", prompt="p", kind="regex", expected="(")
    with pytest.raises(ValidationError, match="Write the prompt"):
        services.regression_check_add(project=project, category="c", prompt=" ", kind="exact", expected="x")
    check = services.regression_check_add(
        project=project, category="policy", prompt="How many days to return?", kind="numeric", expected="30"
    )
    prompts, info = regression.prompts_and_info(per_category=2, project_ids=[project.pk])
    assert len(prompts) == info["count"] == 13
    assert info["checks"][-1] == {
        "key": f"project-{check.pk}",
        "category": "policy",
        "prompt": "How many days to return?",
        "kind": "numeric",
        "expected": "30",
        "tolerance": 0.0,
    }


# --- base against adapter --------------------------------------------------------------------------------


def suite_run(job, admin, *, base: bool, answer, project_ids=()):
    """A finished suite run whose outputs come from ``answer(check)`` (written as the gpu worker writes them)."""
    from evalsets.judging.generate import DecodingConfig

    run = runs.generation_run_start(
        label="base" if base else "adapter",
        decoding=DecodingConfig(max_new_tokens=64),
        created_by=admin,
        job=None if base else job,
        base_model=job.base_model if base else "",
        regression={"per_category": 20, "seed": 0, "project_ids": list(project_ids)},
    )
    secret = run.worker_secret
    runs.generation_run_claim(run_id=run.pk, secret=secret, worker="gpu", using="default")
    rows = [
        {
            "position": i,
            "record_id": None,
            "check_key": c["key"],
            "text": answer(c),
            "new_tokens": 3,
            "finish_reason": "eos",
        }
        for i, c in enumerate(run.suite["checks"])
    ]
    runs.generation_outputs_add(run_id=run.pk, secret=secret, rows=rows, using="default")
    runs.generation_run_finish(run_id=run.pk, secret=secret, status="succeeded", using="default")
    run.refresh_from_db()
    return run


def test_a_drop_beyond_the_projects_threshold_is_flagged_on_the_adapters_page(
    client, adapter_job, admin_user, project, settings, tmp_path
):
    settings.ARTIFACTS_DIR = tmp_path
    services.regression_threshold_set(project=project, max_drop=0.10)
    base = suite_run(adapter_job, admin_user, base=True, answer=canonical_answer)

    def worse_at_arithmetic(check):  # the fine-tune forgot how to add inside a ticket
        if check["category"] == "support_arithmetic" and int(check["key"][-4:]) % 2 == 0:
            return "Please contact billing."
        return canonical_answer(check)

    adapter = suite_run(adapter_job, admin_user, base=False, answer=worse_at_arithmetic)
    result = regression_comparison(base, adapter, max_drop=services.max_drop_for(adapter_job))
    rows = {r["category"]: r for r in result["rows"]}
    assert rows["support_arithmetic"]["base"] == 1.0 and rows["support_arithmetic"]["adapter"] == 0.5
    assert rows["support_arithmetic"]["change"].value == pytest.approx(-0.5)
    assert rows["support_arithmetic"]["flagged"] and rows["support_arithmetic"]["change"].high < 0
    assert result["flagged"] == ["support_arithmetic"] and result["same_decoding"]
    assert not rows["code_output"]["flagged"] and rows["code_output"]["change"].value == 0

    client.force_login(admin_user)
    page = client.get(f"/judging/models/{adapter_job.pk}/").content.decode()
    assert (
        "Capability regression:" in page and "dropped by more than 10 points" in page and "support_arithmetic" in page
    )
    markdown = client.get(f"/judging/models/{adapter_job.pk}/README.md")
    assert markdown["Content-Disposition"] == 'attachment; filename="README.md"'
    text = markdown.content.decode()
    assert text.startswith("---\nbase_model: ") and "library_name: peft" in text
    assert "| support_arithmetic | 20 | 100.0% | 50.0% | -50.0 [" in text and "| DROP |" in text


def test_the_threshold_and_project_checks_page(client, admin_user, project, alice):
    client.force_login(admin_user)
    url = f"/judging/projects/{project.slug}/checks/"
    assert b"5 points" in client.get(url).content  # the default threshold
    assert client.post(url, {"max_drop": "0.2"}).status_code == 302
    response = client.post(
        url, {"category": "policy", "prompt": "Days to return?", "kind": "numeric", "expected": "30", "tolerance": "0"}
    )
    assert response.status_code == 302
    page = client.get(url).content.decode()
    assert "20 points" in page and "Days to return?" in page
    bad = client.post(url, {"category": "x", "prompt": "p", "kind": "regex", "expected": "(", "tolerance": "0"})
    assert bad.status_code == 400 and b"does not compile" in bad.content
    client.force_login(alice)
    assert client.get(url).status_code == 403


@pytest.mark.training
def test_a_regression_pair_runs_the_same_suite_and_decoding_for_base_and_adapter(
    client, adapter_job, admin_user, settings, tmp_path
):
    settings.ARTIFACTS_DIR = tmp_path
    settings.TRAINING_CANCEL_POLL_S = 0
    client.force_login(admin_user)
    response = client.post(
        f"/judging/models/{adapter_job.pk}/regression/",
        {
            "temperature": "0",
            "top_p": "1",
            "max_new_tokens": "6",
            "seed": "0",
            "batch_size": "8",
            "per_category": "2",
            "suite_seed": "4",
        },
    )
    assert response.status_code == 302
    base, adapter = GenerationRun.objects.filter(source="regression").order_by("pk")
    assert base.job_id is None and adapter.job_id == adapter_job.pk and base.decoding == adapter.decoding
    assert base.suite["sha256"] == adapter.suite["sha256"] and base.prompt_count == 12
    for run in (base, adapter):
        run.worker_secret = None
    from evalsets.judging.models import GenerationSecret

    # The web side never keeps a secret: run the pair as the worker would, with secrets of the test's own.
    for run in (base, adapter):
        secret = f"test-secret-{run.pk}"
        GenerationSecret.objects.filter(run=run).update(secret_sha256=runs.secret_hash(secret))
        run.worker_secret = secret
        assert run_here(run) == "succeeded", run.message
        assert run.outputs.count() == 12
    page = client.get(f"/judging/models/{adapter_job.pk}/").content.decode()
    assert "The same 12 checks" in page and "instruction_following" in page
