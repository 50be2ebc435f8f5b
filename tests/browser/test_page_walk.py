"""Every page, opened in Chromium as each kind of caller, with a screenshot of each in the test output.

The pages come from the URL resolver and the access table of tests/test_page_access.py, so a new page is walked as
soon as it has a row there; the URL arguments come from the same seeded world. For each page a caller may open,
the walk fails when:

- the page answers with an error, or logs one to the browser console (a script error, a resource refused by the
  Content-Security-Policy, an htmx request that failed);
- its ``<title>`` does not name the page (and, inside a project, the project);
- it links to a page the same caller cannot open (403, 404, 405, a 5xx, or the login page);
- it draws a chart without named axes or without the numbers behind it (a table, or a CSV download).

Answers that are not pages (CSV, JSON, downloads, htmx fragments) are only checked for their status. Screenshots
land in ``$GOLDSET_TEST_OUTPUT/screenshots/walk/<role>/``.
"""

import contextlib
from urllib.parse import urljoin, urlsplit

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.test_page_access import RULES, WHO, page_patterns, url_for, world  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROLES = ["anonymous", "outsider", "reviewer", "adjudicator", "admin"]
BARE_TITLE = " · Goldset"


# Every chart (an svg drawn as an image) sits in a figure with named axes and its numbers: a table in the figure,
# a link to a table on the page, or a CSV download.
CHART_PROBLEMS = """() => Array.from(document.querySelectorAll('main svg[role=img]')).flatMap(svg => {
  const name = svg.getAttribute('aria-label') || 'a chart';
  const figure = svg.closest('figure');
  if (!figure) return [`${name}: not in a figure with a caption`];
  const problems = [];
  if (!svg.querySelector('.axis-title')) problems.push(`${name}: its axes are not named`);
  const linked = Array.from(figure.querySelectorAll('a[href]')).some(a => {
    const href = a.getAttribute('href');
    if (href.includes('format=csv') || href.split('?')[0].endsWith('.csv')) return true;
    const target = href.startsWith('#') && document.getElementById(href.slice(1));
    return !!target && (target.matches('table') || !!target.querySelector('table'));
  });
  if (!figure.querySelector('table') && !linked) problems.push(`${name}: no table or CSV of its numbers`);
  return problems;
})"""


def may_open(name: str, role: str) -> bool:
    who = RULES[name].get("GET")
    return who is not None and role in WHO[who]


def is_page(response) -> bool:
    """A whole HTML page (not a download, a JSON answer or an htmx fragment)."""
    if response.streaming or not response.get("Content-Type", "").startswith("text/html"):
        return False
    return response.content.lstrip()[:15].lower() == b"<!doctype html>"


def signed_in_browser(browser, live_server, user):
    """A browser context holding the user's session (made by Django's test client, as a login would)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    if user is not None:
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME]
        context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": live_server.url}])
    return context


def title_problem(title: str, name: str, url: str, project_name: str) -> str | None:
    page_name = title.removesuffix(BARE_TITLE).strip()
    if not title.endswith(BARE_TITLE) or not page_name or page_name == "Goldset":
        return f"title {title!r} does not name the page"
    if "/projects/" in url and not url.rstrip("/").endswith("/projects/new") and project_name not in title:
        return f"title {title!r} does not name the project {project_name!r}"
    return None


@pytest.mark.parametrize("role", ROLES)
def test_every_page_opens_cleanly_for_each_role(role, live_server, browser, world, screenshot_dir):  # noqa: F811 (the fixture imported above)
    user = world["users"][role]
    project_name = world["project"].name
    client = Client()
    if user is not None:
        client.force_login(user)
    login_url = reverse("login")
    out = screenshot_dir / "walk" / role
    out.mkdir(parents=True, exist_ok=True)

    context = signed_in_browser(browser, live_server, user)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"script error: {e}"))

    link_status: dict[str, int | str] = {}

    def link_problem(href: str) -> str | None:
        path = urlsplit(href)
        target = path.path + (f"?{path.query}" if path.query else "")
        if target not in link_status:
            response = client.get(target)
            status = response.status_code
            if status == 302 and response.url.startswith((login_url, reverse("admin:login"))):
                status = "the login page"
            link_status[target] = status
        status = link_status[target]
        if status == "the login page" and user is None:
            return None
        if status == "the login page" or status in {403, 404, 405} or status >= 500:
            return f"links to {target}, which answers {status}"
        return None

    failures: list[str] = []
    visited = charts = 0
    patterns = page_patterns()
    for name in sorted(patterns):
        if not may_open(name, role):
            continue
        url = url_for(name, patterns[name], world, role)
        response = client.get(url)
        if response.status_code >= 400 or (response.status_code == 302 and response.url.startswith(login_url)):
            failures.append(f"{name} {url}: {response.status_code}")
            continue
        if not is_page(response):
            continue
        console.clear()
        answer = page.goto(live_server.url + url, wait_until="load")
        # A page that polls every second may never go quiet; what it loaded by then is enough.
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_load_state("networkidle", timeout=5000)
        visited += 1
        where = f"{name} {url}"
        if answer is None or answer.status >= 400:
            failures.append(f"{where}: {answer.status if answer else 'no answer'} in the browser")
        failures += [f"{where}: console: {text}" for text in console]
        problem = title_problem(page.title(), name, url, project_name)
        if problem:
            failures.append(f"{where}: {problem}")
        failures += [f"{where}: {problem}" for problem in page.evaluate(CHART_PROBLEMS)]
        charts += page.locator("main svg[role=img]").count()
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        for href in dict.fromkeys(hrefs):
            if urlsplit(href).netloc != urlsplit(live_server.url).netloc:
                failures.append(f"{where}: links off the site to {href}")
                continue
            problem = link_problem(urljoin(live_server.url, href))
            if problem:
                failures.append(f"{where}: {problem}")
        page.screenshot(path=str(out / f"{name.replace(':', '--')}.png"), full_page=True)
    context.close()
    assert visited, f"no page was walked as {role}"
    assert link_status or role == "anonymous", f"no link was followed as {role}"
    if role == "admin":
        assert charts >= 4, "the agreement report and the job's loss curve were not drawn: the walk saw no chart"
    assert failures == [], "\n".join(failures)
