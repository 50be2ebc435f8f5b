"""A reviewer works part of a blind comparison queue from the keyboard; an admin reads its results and the
adapter's model card (real Chromium; screenshots in the test output)."""

import time

import pytest
from playwright.sync_api import expect

from annotate.models import Annotation
from evalsets.judging.models import ComparisonItem
from tests.evalsets.conftest import freeze, make_item  # noqa: F401 — fixtures used here

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TUNED = "support-v2-QLR"
BASE = "base-llama-1b"


@pytest.fixture
def comparison(make_item, freeze, admin_user, alice, bob, settings, tmp_path):  # noqa: F811
    from evalsets.judging.services.comparisons import comparison_create
    from tests.judging.test_comparison import finished_run
    from training.models import SnapshotCheck, TrainingJob, TrainingSnapshot

    settings.ARTIFACTS_DIR = tmp_path
    for i, category in enumerate(["refunds", "orders", "refunds", "billing"]):
        item = make_item("gold", prompt=f"Can I return the lamp I bought {i + 2} weeks ago?")
        item.metadata = {"category": category}
        item.save(update_fields=["metadata"])
    version = freeze().version
    snapshot = TrainingSnapshot.objects.create(
        name="support train v2", sha256="7" * 64, sft_count=120, dpo_count=40, sources=[]
    )
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5, evalset_versions=[])
    job = TrainingJob.objects.create(
        snapshot=snapshot,
        base_model="/models/llama-1b",
        method="sft",
        config={"method": "sft", "lora_r": 16, "learning_rate": 0.0002},
        status=TrainingJob.Status.SUCCEEDED,
        manifest={"base_model": {"source": "local", "path": "/models/llama-1b", "sha256": "c" * 64}},
        created_by=admin_user,
    )
    base = finished_run(
        version,
        admin_user,
        label=BASE,
        base_model="/models/llama-1b",
        text=lambda r: "You can return it within 30 days.",
    )
    tuned = finished_run(
        version,
        admin_user,
        label=TUNED,
        base_model="/models/llama-1b",
        text=lambda r: "Yes: returns are free within 30 days of delivery. Start one from your orders page.",
    )
    tuned.job = job
    tuned.save(update_fields=["job"])
    return comparison_create(
        name="support v2 against the base",
        run_a=base,
        run_b=tuned,
        reviewers=[alice, bob],
        overlap_k=2,
        seed=5,
        created_by=admin_user,
    )


def test_a_reviewer_works_the_blind_queue_and_an_admin_reads_results_and_the_model_card(
    live_server, login_page, comparison, alice, admin_user, screenshot_dir, browser
):
    page = login_page(alice)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}{comparison.project.get_absolute_url()}")
    expect(page.locator("body")).not_to_contain_text(TUNED)
    page.click("text=Start reviewing")
    current = page.locator("#queue-current")
    expect(current.locator(".task-prompt")).to_contain_text("Can I return the lamp")
    expect(current).to_contain_text("returns are free within 30 days")
    page.screenshot(path=str(screenshot_dir / "comparison-queue.png"), full_page=True)
    for keys in (["1", "c"], ["2"], ["t"]):
        prompt = current.locator(".task-prompt").inner_text()
        for key in keys:
            page.keyboard.press(key)
        page.keyboard.press("Enter")
        expect(current.locator(".task-prompt")).not_to_have_text(prompt)
    for text in (TUNED, BASE, "llama", "support v2", "adapter"):
        assert text not in page.content(), text
    deadline = time.monotonic() + 10  # the last submission is sent in the background
    while Annotation.objects.filter(reviewer=alice, item__project=comparison.project).count() < 3:
        assert time.monotonic() < deadline, "the third judgement never arrived"
        time.sleep(0.2)
    assert not errors, errors
    # Stored in the runs' terms: each decisive pick names a response index, whatever side it was shown on.
    for annotation in Annotation.objects.filter(
        reviewer=alice, item__project=comparison.project, payload__choice="response"
    ):
        link = ComparisonItem.objects.get(item_id=annotation.item_id)
        assert annotation.payload["chosen"] in (link.a_index, link.b_index)

    admin = browser.new_page()
    admin.goto(live_server.url + "/login/")
    admin.fill("input[name=username]", admin_user.username)
    admin.fill("input[name=password]", "pw-" + admin_user.username)
    admin.click("button[type=submit]")
    admin.goto(f"{live_server.url}/judging/comparisons/")
    admin.click("text=support v2 against the base")
    expect(admin.locator(".verdict")).to_contain_text("on support-eval v1, n=3, 1 reviewer per item")
    expect(admin.locator("table.results")).to_contain_text("%")
    expect(admin.locator("body")).to_contain_text("By category")
    expect(admin.locator("body")).to_contain_text("Position bias")
    admin.screenshot(path=str(screenshot_dir / "comparison-results.png"), full_page=True)

    admin.click(f"text=#{comparison.run_b_id} {TUNED}")
    expect(admin.locator("h1")).to_contain_text(TUNED)
    admin.click(f"text=job #{comparison.run_b.job_id}")
    expect(admin.locator("h1")).to_contain_text("Model card")
    expect(admin.locator("body")).to_contain_text("support v2 against the base")
    expect(admin.locator("body")).to_contain_text("support train v2")
    admin.screenshot(path=str(screenshot_dir / "model-card.png"), full_page=True)
    readme = admin.request.get(f"{live_server.url}/judging/models/{comparison.run_b.job_id}/README.md")
    assert readme.ok and readme.text().startswith("---\nbase_model:")


@pytest.fixture
def reference_queue(make_item, freeze, admin_user, alice, settings, tmp_path):  # noqa: F811
    from evalsets.judging.services.comparisons import comparison_create
    from tests.judging.test_comparison import finished_run

    settings.ARTIFACTS_DIR = tmp_path
    for i, category in enumerate(["refunds", "orders", "refunds"]):
        item = make_item("gold", prompt=f"Can I return the kettle I bought {i + 2} weeks ago?")
        item.metadata = {"category": category}
        item.save(update_fields=["metadata"])
    version = freeze().version
    tuned = finished_run(
        version,
        admin_user,
        label=TUNED,
        base_model="/models/llama-1b",
        text=lambda r: "Yes: kettles can be returned within 30 days of delivery, free of charge.",
    )
    return comparison_create(
        name="support v2 against the reference",
        mode="reference",
        run_a=tuned,
        reviewers=[alice],
        overlap_k=1,
        seed=2,
        created_by=admin_user,
    )


def test_a_reviewer_judges_responses_against_the_reference_and_an_admin_reads_the_shares(
    live_server, login_page, reference_queue, alice, admin_user, screenshot_dir, browser
):
    page = login_page(alice)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_server.url}{reference_queue.project.get_absolute_url()}")
    page.click("text=Start reviewing")
    current = page.locator("#queue-current")
    expect(current.locator(".task-prompt")).to_contain_text("Can I return the kettle")
    expect(current.locator(".response.reference .response-head")).to_have_text("Reference answer")
    expect(current.locator(".response.scored")).to_contain_text("kettles can be returned within 30 days")
    expect(current).to_contain_text("Compared with the reference answer, the response is")
    page.screenshot(path=str(screenshot_dir / "reference-queue.png"), full_page=True)
    for key in ("2", "3"):  # as good, then worse: the level's number, wherever the reference sits
        prompt = current.locator(".task-prompt").inner_text()
        page.keyboard.press(key)
        page.keyboard.press("Enter")
        expect(current.locator(".task-prompt")).not_to_have_text(prompt)
    for text in (TUNED, "llama", "support v2", "adapter"):
        assert text not in page.content(), text
    deadline = time.monotonic() + 10  # the last submission is sent in the background
    while Annotation.objects.filter(reviewer=alice, item__project=reference_queue.project).count() < 2:
        assert time.monotonic() < deadline, "the second verdict never arrived"
        time.sleep(0.2)
    assert not errors, errors
    # Stored as what was judged: the run's response (its index) and the verdict, never a side of the screen.
    stored = []
    for annotation in Annotation.objects.filter(reviewer=alice, item__project=reference_queue.project):
        link = ComparisonItem.objects.get(item_id=annotation.item_id)
        assert annotation.payload["response_index"] == link.a_index
        stored.append(annotation.payload["scores"]["verdict"])
    assert sorted(stored) == ["as_good", "worse"]

    admin = browser.new_page()
    admin.goto(live_server.url + "/login/")
    admin.fill("input[name=username]", admin_user.username)
    admin.fill("input[name=password]", "pw-" + admin_user.username)
    admin.click("button[type=submit]")
    admin.goto(f"{live_server.url}/judging/comparisons/")
    admin.click("text=support v2 against the reference")
    expect(admin.locator(".verdict")).to_contain_text(f"{TUNED} is as good as the reference or better on 50%")
    expect(admin.locator("table.results")).to_contain_text("As good or better")
    expect(admin.locator("body")).to_contain_text("By category")
    admin.screenshot(path=str(screenshot_dir / "reference-results.png"), full_page=True)
