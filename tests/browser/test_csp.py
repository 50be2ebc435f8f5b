"""The Content-Security-Policy in real Chromium: the pages work under it and it blocks nothing of theirs.

Chromium reports every blocked script, style or eval as a ``securitypolicyviolation`` event and a console
error; both are collected on every page visited, and the pages' computed styles (set through the CSSOM by
static/js/goldset.js) are checked to have arrived.
"""

import pytest
from playwright.sync_api import expect

from training.models import TrainingJob, TrainingSnapshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

COLLECT = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + (e.sample || ""));
});
"""


def _watch(page) -> list[str]:
    console = []
    page.add_init_script(COLLECT)  # injected by the driver, not by the page: the policy does not apply to it
    page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)
    return console


def _violations(page, console) -> list[str]:
    return page.evaluate("window.__csp || []") + console


def test_the_pages_run_under_the_policy_without_a_violation(login_page, live_server, admin_user, alice, project):
    from tests.factories import make_item

    project.task_kinds = ["preference"]
    project.save()
    for _ in range(3):
        make_item(project, "preference")
    snapshot = TrainingSnapshot.objects.create(name="s", sha256="c" * 64)
    job = TrainingJob.objects.create(
        snapshot=snapshot, base_model="tiny", method="sft", config={}, status="running", step=3, total_steps=6
    )

    page = login_page(alice)
    console = _watch(page)
    page.goto(f"{live_server.url}/projects/{project.slug}/queue/")
    pair = page.locator("#queue-current .pair")
    expect(pair).to_be_visible()
    assert pair.evaluate("el => getComputedStyle(el).getPropertyValue('--responses').trim()") == "2"
    page.keyboard.press("1")  # choose, then submit: htmx posts and swaps the next card in
    page.keyboard.press("Enter")
    expect(page.locator(".queue-stats, #queue-progress").first).to_be_visible()
    page.wait_for_timeout(500)
    assert _violations(page, console) == []

    page.context.clear_cookies()
    page = login_page(admin_user)
    console = _watch(page)
    for path in [
        "/",
        f"/projects/{project.slug}/",
        f"/projects/{project.slug}/imports/",
        f"/training/jobs/{job.pk}/",
        "/evalsets/",
        "/api/v1/docs",
        "/admin/",
    ]:
        page.goto(live_server.url + path)
        page.wait_for_load_state("networkidle")
        assert _violations(page, console) == [], path
    page.goto(f"{live_server.url}/training/jobs/{job.pk}/")
    bar = page.locator(".progress > span").first
    expect(bar).to_have_attribute("data-width", "50")
    width = bar.evaluate("el => el.getBoundingClientRect().width / el.parentElement.getBoundingClientRect().width")
    assert 0.45 < width < 0.55


def test_an_inline_script_is_blocked(login_page, live_server, alice):
    """The control: the same watch does see a violation when a page tries inline code."""
    page = login_page(alice)
    console = _watch(page)
    page.goto(live_server.url + "/")
    page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';
                            document.body.appendChild(s); }""")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__ran") is None
    assert any("script-src" in v for v in _violations(page, console))
