"""The review queue (every task kind) and the pages around it pass axe-core's accessibility rules in Chromium.

axe-core comes with the axe-playwright-python package (its bundled axe.min.js); nothing is downloaded. Rules the
pages are not held to are listed in ``WAIVED`` with the reason; every other violation fails the test.
"""

import json

import pytest
from axe_playwright_python.base import AXE_SCRIPT
from playwright.sync_api import expect

from tests.browser.test_queue_browser import seed

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Rules the pages are not held to, rule id -> why. None today: a rule added here needs its reason.
WAIVED: dict[str, str] = {}


def axe_violations(page) -> list[dict]:
    page.evaluate(AXE_SCRIPT)
    result = page.evaluate(
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', "
        "'best-practice']}, resultTypes: ['violations']})"
    )
    return [
        {
            "rule": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result["violations"]
        if v["id"] not in WAIVED
    ]


def test_the_queue_and_the_pages_around_it_pass_axe_core(
    live_server, login_page, project, alice, admin_user, screenshot_dir
):
    project.overlap_k = 1
    project.save()
    seed(project)
    page = login_page(alice)
    found = {}
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    found["project page"] = axe_violations(page)
    page.click("text=Start reviewing")
    current = page.locator("#queue-current")
    for kind, marker in (("gold", "Gold one"), ("preference", "Pref one"), ("rubric", "Rubric one")):
        expect(current.locator(".task-prompt")).to_contain_text(marker)
        found[f"queue, {kind} item"] = axe_violations(page)
        page.keyboard.press("?")
        expect(page.locator("#queue-help")).to_be_visible()
        found[f"queue, {kind} item, keyboard help open"] = axe_violations(page)
        page.keyboard.press("Escape")
        page.keyboard.press("s")  # skip to the next kind
        expect(current.locator(".task-prompt")).not_to_contain_text(marker)
    page.screenshot(path=str(screenshot_dir / "accessibility-queue.png"), full_page=True)

    page.context.clear_cookies()
    page = login_page(admin_user)
    for name, path in (
        ("project list", "/"),
        ("queue health", f"/projects/{project.slug}/queue/health/"),
        ("items", f"/projects/{project.slug}/items/"),
        ("flags", f"/projects/{project.slug}/flags/"),
        ("import", f"/projects/{project.slug}/imports/"),
        ("rubrics", f"/projects/{project.slug}/rubrics/"),
        ("agreement report", f"/projects/{project.slug}/report/"),
        ("adjudication queue", f"/projects/{project.slug}/adjudication/"),
        ("eval sets", "/evalsets/"),
        ("training jobs", "/training/"),
        ("training snapshots", "/training/snapshots/"),
        ("new training job", "/training/jobs/new/"),
        ("API tokens", "/settings/tokens/"),
    ):
        page.goto(live_server.url + path)
        found[name] = axe_violations(page)
    failing = {name: v for name, v in found.items() if v}
    (screenshot_dir.parent / "accessibility.json").write_text(json.dumps(found, indent=1))
    assert not failing, json.dumps(failing, indent=1)
