"""The whole path in a real browser, as people take it on the demo: review, freeze the eval set, snapshot,
the audit shows the planted "Thanks!" closing with its share, curate it away, the contamination check
passes, and an SFT job runs on a real worker to an adapter. Screenshots of each step in the test output."""

import re
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from annotate.management.commands.seed_demo import DEMO_USERS
from tests.factories import demo_eval_reviews

pytestmark = [pytest.mark.postgres, pytest.mark.training, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DEMO_PASSWORD = {username: password for username, _, password in DEMO_USERS}


@pytest.fixture
def demo(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VAR_DIR = tmp_path / "var"  # the demo base model is built here
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    call_command("seed_demo", verbosity=0)
    from annotate.models import Project

    return Project.objects.get(slug="support-assistant")


@pytest.fixture
def workers(demo, tmp_path):
    """A default-queue worker in this process (contamination checks, as the app role) and a gpu/preflight
    worker process logged in as the trainer role, as docker-compose runs them."""
    from celery.contrib.testing.worker import start_worker as start_thread_worker
    from django.conf import settings

    from config.celery import app
    from tests.training.worker import start_worker, stop_worker

    log = tmp_path / "gpu-worker.log"
    gpu = start_worker(Path(settings.ARTIFACTS_DIR), log)
    with start_thread_worker(app, pool="solo", perform_ping_check=False, queues=["default"], shutdown_timeout=10):
        yield log
    stop_worker(gpu)


def _login(page, live_server, username):
    page.context.clear_cookies()
    page.goto(live_server.url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", DEMO_PASSWORD[username])
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + "/")


def _review_two_items(page, live_server, project):
    """Review the first two items the queue serves, whatever their kind, with the keys and clicks people use."""
    from annotate.models import Annotation

    mine = Annotation.objects.filter(reviewer__username="reviewer1")
    before = mine.count()
    page.goto(f"{live_server.url}/projects/{project.slug}/queue/")
    current = page.locator("#queue-current")
    for done in (before, before + 1):
        expect(current.locator("form")).to_be_visible()
        if current.locator("input[name=action][value=accept]").count():
            page.keyboard.press("1")  # accept the answer shown first
        elif current.locator("input[name=choice]").count():
            page.keyboard.press("1")  # the response shown first is better
        else:  # a rubric: the first level of every criterion
            names = current.locator("input[type=radio][name^=score-]").evaluate_all(
                "inputs => [...new Set(inputs.map(i => i.name))]"
            )
            assert names, "a task with neither answer, choice nor scores"
            for name in names:
                current.locator(f"input[type=radio][name='{name}']").first.check()
        page.keyboard.press("Enter")
        deadline = time.monotonic() + 10
        while mine.count() == done:
            assert time.monotonic() < deadline, "the review was not stored"
            time.sleep(0.1)


def test_the_demo_goes_from_review_to_a_trained_adapter_in_the_browser(
    page, live_server, demo, workers, screenshot_dir
):
    from training.models import SnapshotAudit, TrainingJob, TrainingSnapshot

    shot = lambda name: page.screenshot(path=str(screenshot_dir / f"demo-path-{name}.png"), full_page=True)  # noqa: E731

    # 1. A reviewer works the queue; the demo's two reviewers agree on the rest of the eval items.
    _login(page, live_server, "reviewer1")
    _review_two_items(page, live_server, demo)
    shot("1-review")
    demo_eval_reviews(demo)

    # 2. The admin freezes the eval set.
    _login(page, live_server, "admin")
    page.goto(f"{live_server.url}/evalsets/projects/{demo.slug}/freeze/")
    page.fill("textarea[name=changelog]", "First eval set of the support assistant.")
    page.click("button:has-text('Freeze version')")
    page.wait_for_url(re.compile(r".*/evalsets/versions/\d+/$"))
    shot("2-frozen")

    # 3. A snapshot of the approved training data; its audit runs as it is frozen.
    page.goto(f"{live_server.url}/training/snapshots/")
    page.fill("#new-snapshot input[name=name]", "support v1")
    page.check(f"#new-snapshot input[name=projects][value='{demo.pk}']")
    page.click("#new-snapshot button:has-text('Freeze snapshot')")
    page.wait_for_url(re.compile(r".*/training/snapshots/\d+/$"))
    first = TrainingSnapshot.objects.get(name="support v1")
    page.click("text=Open the audit")
    page.wait_for_url(re.compile(r".*/training/audits/\d+/$"))

    # 4. The audit shows the planted "Thanks!" closing with its share, and what blocks training.
    audit = SnapshotAudit.objects.get(snapshot=first)
    thanks = next(f for f in audit.findings if f["type"] == "recurring_closing" and f["phrase"] == "thanks!")
    card = page.locator(f"section.finding[data-finding='{thanks['key']}']")
    expect(card.locator("h2")).to_contain_text("thanks!")
    expect(card.locator(".finding-figures td").first).to_have_text(f"{round(thanks['share'] * 100)}%")
    assert 0.2 < thanks["share"] < 0.5
    expect(card).to_contain_text("swiftreply-v2")  # the model that adds it
    blocking = [f for f in audit.findings if f["gate"] == "block"]
    assert blocking and page.locator("section.finding-block").count() == len(blocking)
    shot("3-audit")

    # 5. Exclude it (and the blocking findings) in a new, curated snapshot.
    card.locator("a:has-text('New snapshot without these examples')").click()
    page.wait_for_url(re.compile(r".*/training/snapshots/\?from=\d+.*"))
    expect(page.locator(f"input[name=exclude_findings][value='{thanks['key']}']")).to_be_checked()
    for finding in blocking:
        page.check(f"input[name=exclude_findings][value='{finding['key']}']")
    page.fill("#new-snapshot input[name=name]", "support v2")
    shot("4-curate")
    page.click("#new-snapshot button:has-text('Freeze snapshot')")
    page.wait_for_url(re.compile(r".*/training/snapshots/\d+/$"))
    second = TrainingSnapshot.objects.get(name="support v2")
    excluded = second.filters["excluded"]  # per finding: the records it was the first reason to leave out
    assert 0 < excluded[f"audit_finding:{thanks['key']}"] <= thanks["count"]
    assert sum(excluded.values()) == first.records.count() - second.records.count()
    clean = SnapshotAudit.objects.get(snapshot=second)
    assert not [f for f in clean.findings if f["gate"] == "block" or f.get("phrase") == "thanks!"]
    assert not any(t.endswith("Thanks!") for t in second.records.values_list("completion", flat=True))

    # 6. The contamination check runs on the worker and passes.
    page.click("text=Open the check")
    page.click("button:has-text('Check contamination')")
    # The page polls the check's progress and reloads itself with the verdict when the worker is done.
    page.locator("#check-status .badge.ok").wait_for(timeout=120_000)
    expect(page.locator("#check-status .badge.ok")).to_have_text("passed")
    shot("5-check")

    # 7. Train: the form offers the demo's local base model; the preflight and the job run on the worker.
    page.goto(f"{live_server.url}{second.get_absolute_url()}")
    page.click("text=Train on this snapshot")
    base_model = page.locator("input[name=base_model]").input_value()
    assert base_model.endswith("demo-random-llama")
    for name, value in {"max_steps": "4", "logging_steps": "2", "save_steps": "2", "max_length": "256"}.items():
        page.fill(f"input[name={name}]", value)
    page.click("button:has-text('Run the preflight')")
    page.wait_for_url(re.compile(r".*/training/preflights/\d+/$"))
    page.locator("button:has-text('Queue the job')").wait_for(timeout=180_000)
    shot("6-preflight")
    page.click("button:has-text('Queue the job')")
    page.wait_for_url(re.compile(r".*/training/jobs/\d+/$"))
    job = TrainingJob.objects.get(snapshot=second)
    page.locator(".job-status", has_text="Succeeded").wait_for(timeout=300_000)
    shot("7-trained")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert (Path(job.output_dir) / "adapter" / "manifest.json").is_file()
    assert job.manifest["snapshot"]["sha256"] == second.sha256
    expect(page.locator("a:has-text('Download adapter')")).to_be_visible()
