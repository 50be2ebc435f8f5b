"""An admin freezes an eval set in Chromium, pages through its records with htmx and finds the exports."""

import hashlib

import pytest
from playwright.sync_api import expect

from annotate.models import Annotation, Item, ItemResult

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def eval_item(project, reviewers, n: int, provenance: str = "human") -> Item:
    payload = {"action": "write", "answer": f"Answer {n}", "source_index": None, "reason": ""}
    item = Item.objects.create(
        project=project,
        kind="gold",
        prompt=f"Question {n:02d} <em>as typed</em>",
        provenance=provenance,
        content_hash=hashlib.sha256(str(n).encode()).hexdigest(),
        split="eval",
    )
    for reviewer in reviewers:
        Annotation.objects.create(item=item, reviewer=reviewer, kind="gold", payload=payload)
    ItemResult.objects.create(
        item=item, kind="gold", status="consensus", payload=payload, agreement=1.0,
        reviewer_ids=[r.pk for r in reviewers],
    )  # fmt: skip
    return item


def test_an_admin_freezes_a_version_and_loads_more_records(
    live_server, login_page, project, admin_user, alice, bob, screenshot_dir
):
    for n in range(55):
        eval_item(project, [alice, bob], n)
    judged = eval_item(project, [alice, bob], 99, provenance="llm_judged")
    page = login_page(admin_user)

    page.click("text=Eval sets")
    page.click("text=Freeze Support assistant")
    assert page.locator("#refusals").inner_text().count(f"#{judged.pk}") == 1
    page.fill("#changelog", "First eval set for the support assistant.")
    page.screenshot(path=str(screenshot_dir / "evalset-freeze.png"), full_page=True)
    page.click("button:has-text('Freeze version')")

    page.wait_for_selector("#version-sha256")
    assert page.locator("h1").inner_text() == "support-eval-v1"
    assert page.locator("#record-rows tr").count() == 51  # 50 records and the "More records" row
    assert "<em>as typed</em>" in page.locator("#record-rows tr").first.inner_text()
    page.click("text=More records")
    # A locator wait, not wait_for_function: the page's Content-Security-Policy refuses eval'd strings.
    expect(page.locator("#records tbody tr")).to_have_count(55)
    assert page.locator("text=More records").count() == 0
    # Gold answers only: four layouts (data and manifest each), none of the preference ones.
    assert page.locator("#exports a").count() == 8
    assert page.locator("#exports a:has-text('openai-dpo')").count() == 0
    page.screenshot(path=str(screenshot_dir / "evalset-version.png"), full_page=True)
