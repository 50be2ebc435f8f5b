import numpy as np
import pytest

from annotate.models import RubricVersion
from annotate.services import rubrics
from tests.factories import CRITERIA, annotate, make_item, pref, scores

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def seed(project, alice, bob, carol):
    rubric = rubrics.rubric_create(project=project, name="Quality")
    version = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=project.created_by)
    RubricVersion.objects.filter(pk=version.pk).update(status="active")
    rng = np.random.default_rng(1)
    for t in rng.integers(1, 6, size=40):
        item = make_item(project, "rubric")
        annotate(item, alice, scores(helpful=int(t), safe="yes" if t > 2 else "no"), version=version)
        annotate(item, bob, scores(helpful=int(min(5, t + rng.integers(0, 2))), safe="yes"), version=version)
        annotate(item, carol, scores(helpful=5, safe="yes"), version=version)
    for i in range(30):
        item = make_item(project, "preference")
        order = [0, 1] if i % 2 else [1, 0]
        annotate(item, alice, pref(chosen=order[0], rejected=order[1]), display_order=order)
        annotate(item, bob, pref(chosen=int(rng.integers(0, 2)), rejected=None), display_order=order)


def test_the_report_page_draws_its_charts_in_a_real_browser(
    live_server, login_page, project, alice, bob, carol, judge, screenshot_dir
):
    seed(project, alice, bob, carol)
    page = login_page(judge)
    page.goto(f"{live_server.url}/projects/{project.slug}/report/")
    page.wait_for_selector("#section-rubric svg.chart")
    charts = page.locator("svg.chart")
    assert charts.count() >= 6
    box = page.locator("#section-rubric svg.chart").first.bounding_box()
    assert box["width"] > 200 and box["height"] > 50
    assert page.locator("text=picks left more than chance").is_visible()
    assert page.locator("text=gives 5 to 100% of items").first.is_visible()
    page.screenshot(path=str(screenshot_dir / "agreement-report.png"), full_page=True)
