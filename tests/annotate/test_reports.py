import csv
import io
import json
import re
from datetime import timedelta

import krippendorff
import numpy as np
import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotate.models import AgreementReport, Annotation, RubricVersion
from annotate.reports import report_build
from annotate.services import rubrics
from annotate.services.reports import agreement_report_request
from tests.conftest import login
from tests.factories import CRITERIA, annotate, gold, make_item, pref, scores


@pytest.fixture
def version(project):
    rubric = rubrics.rubric_create(project=project, name="Quality")
    v = rubrics.rubric_version_create(rubric=rubric, criteria=CRITERIA, created_by=project.created_by)
    RubricVersion.objects.filter(pk=v.pk).update(status="active")
    v.refresh_from_db()
    return v


@pytest.fixture
def data(project, version, alice, bob, carol):
    """Rubric scores with a reviewer who gives 5 to everything, left-biased preferences, gold edits."""
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 6, size=30)
    for i, t in enumerate(truth):
        item = make_item(project, "rubric")
        annotate(item, alice, scores(helpful=int(t), safe="yes" if t > 2 else "no"), version=version)
        annotate(
            item,
            bob,
            scores(helpful=int(min(5, t + rng.integers(0, 2))), safe="yes" if t > 2 else "no"),
            version=version,
        )
        if i % 3:  # carol misses a third of the items
            annotate(item, carol, scores(helpful=5, safe="yes"), version=version)
    for i in range(24):
        item = make_item(project, "preference")
        order = [0, 1] if i % 2 else [1, 0]
        annotate(item, alice, pref(chosen=order[0], rejected=order[1]), display_order=order)  # always left
        annotate(item, bob, pref(chosen=0, rejected=1), display_order=order)
    for i in range(4):
        item = make_item(project, "gold")
        annotate(item, alice, gold("edit", f"Answer number {i}."))
        annotate(item, bob, gold("edit", f"Answer number {i}!"))
    return truth


def test_report_alpha_matches_the_krippendorff_package_on_real_annotations(project, data, version, alice, bob, carol):
    report = report_build(project=project, n_boot=100)
    rubric = next(s for s in report["sections"] if s["kind"] == "rubric")
    helpful = next(v for v in rubric["variables"] if v["key"] == "helpful")
    rows = {}
    from annotate.models import Annotation

    for a in Annotation.objects.filter(kind="rubric").order_by("item_id"):
        rows.setdefault(a.item_id, {})[a.reviewer_id] = a.payload["scores"]["helpful"]
    reliability = np.array([[r.get(u.pk, np.nan) for r in rows.values()] for u in (alice, bob, carol)], dtype=float)
    expected = krippendorff.alpha(
        reliability_data=reliability, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5]
    )
    assert helpful["alpha"]["value"] == pytest.approx(expected, abs=1e-6)
    assert helpful["alpha"]["low"] <= helpful["alpha"]["value"] <= helpful["alpha"]["high"]
    assert rubric["n_items"] == 30


def test_report_flags_a_reviewer_who_scores_everything_five(project, data):
    report = report_build(project=project, n_boot=0)
    rubric = next(s for s in report["sections"] if s["kind"] == "rubric")
    helpful = next(v for v in rubric["variables"] if v["key"] == "helpful")
    carol = next(r for r in helpful["reviewers"] if r["reviewer"] == "carol")
    assert carol["top_value"] == "5" and carol["top_share"] == 1.0
    assert any("gives 5 to 100%" in f for f in carol["flags"])


def test_report_detects_a_left_picking_reviewer_from_the_stored_display_order(project, data):
    report = report_build(project=project, n_boot=0)
    preference = next(s for s in report["sections"] if s["kind"] == "preference")
    by_name = {r["reviewer"]: r for r in preference["left_pick"]}
    assert by_name["alice"]["rate"] == 1.0 and by_name["alice"]["flag"]
    assert by_name["alice"]["p_value"] == pytest.approx(2 * 0.5**24)
    assert by_name["bob"]["rate"] == 0.5 and not by_name["bob"]["flag"]


def test_report_shows_text_similarity_of_gold_edits(project, data):
    report = report_build(project=project, n_boot=0)
    gold_section = next(s for s in report["sections"] if s["kind"] == "gold")
    sim = gold_section["edit_similarity"]
    assert sim["pairs"] == 4
    assert 0.9 < sim["mean"] < 1.0


def test_report_reads_the_database_in_a_few_queries_whatever_the_size(project, data, version, alice, bob):
    with CaptureQueriesContext(connection) as small:
        report_build(project=project, n_boot=0)
    for i in range(60):
        item = make_item(project, "rubric" if i % 2 else "gold")
        annotate(item, alice, scores(helpful=2, safe="no") if i % 2 else gold("edit", f"Text {i}"), version=version)
        annotate(item, bob, scores(helpful=3, safe="no") if i % 2 else gold("edit", f"Text {i}."), version=version)
    with CaptureQueriesContext(connection) as large:
        report_build(project=project, n_boot=0)
    # Two of them find the run of the project's item ids, which spares joining the results to the items.
    assert len(large) == len(small) <= 10, [q["sql"][:80] for q in large]


def compute(client, project) -> None:
    """What the report page does when it loads without a report of the current data: POST for one."""
    assert client.post(f"/projects/{project.slug}/report/compute/").status_code == 302


def test_opening_the_report_page_writes_nothing_and_asks_for_a_report(client, project, data, judge):
    response = login(client, judge).get(f"/projects/{project.slug}/report/")
    html = response.content.decode()
    assert response.status_code == 200 and not AgreementReport.objects.exists()
    assert 'hx-post="/projects/support/report/compute/"' in html and 'hx-trigger="load"' in html
    assert "Make the report" in html  # without JavaScript, a button does the same
    assert client.get(f"/projects/{project.slug}/report.json").status_code == 503
    assert not AgreementReport.objects.exists()


def test_an_adjudicator_can_make_the_report_but_a_reviewer_cannot(client, project, data, judge, alice):
    assert login(client, alice).post(f"/projects/{project.slug}/report/compute/").status_code == 403
    assert not AgreementReport.objects.exists()
    compute(login(client, judge), project)
    row = AgreementReport.objects.get()
    compute(client, project)  # the same state of the data: the same report, not a new one
    assert list(AgreementReport.objects.values_list("pk", flat=True)) == [row.pk]


def test_report_page_renders_charts_for_an_adjudicator(client, project, data, judge):
    compute(login(client, judge), project)
    response = client.get(f"/projects/{project.slug}/report/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("<svg") >= 6
    assert "Krippendorff" in html and "picks left more than chance" in html
    assert 'id="report-body"' in html and "<html" in html


def chart_figures(html: str) -> list[str]:
    return [f.split("</figure>")[0] for f in html.split("<figure")[1:] if "<svg" in f.split("</figure>")[0]]


def test_every_report_chart_names_its_axes_and_has_its_numbers_beside_it(client, project, data, judge):
    # Reviews spread over three days, so the report draws agreement over time as well.
    for n, pk in enumerate(Annotation.objects.order_by("pk").values_list("pk", flat=True)):
        Annotation.objects.filter(pk=pk).update(updated_at=timezone.now() - timedelta(days=n % 3))
    compute(login(client, judge), project)
    html = client.get(f"/projects/{project.slug}/report/").content.decode()
    figures = chart_figures(html)
    assert len(figures) >= 9
    for figure in figures:
        assert 'class="axis-title"' in figure, figure[:300]
        anchor = re.search(r'href="#([\w-]+)"', figure)
        assert "<table" in figure or (anchor and re.search(rf'<table[^>]*id="{anchor[1]}"', html)), figure[:300]
    result = AgreementReport.objects.get().result
    helpful = next(v for s in result["sections"] for v in s["variables"] if v["key"] == "helpful")
    names = result["reviewers"]
    a, b = names.index("alice"), names.index("bob")
    kappa = next(f for f in figures if "kappa between reviewers: Helpfulness" in f)
    assert f"<td>{helpful['pairwise_kappa'][a][b]:.2f} ({helpful['pairwise_n'][a][b]})</td>" in kappa
    assert ">Reviewer</text>" in kappa
    over_time = next(f for f in figures if "Alpha over time: Helpfulness" in f)
    assert len(helpful["over_time"]) >= 2
    for point in helpful["over_time"]:
        assert f'<th scope="row">{point["start"]}</th><td>1</td><td>{point["n_units"]}</td>' in over_time
    assert ">Date items were last reviewed (per day)</text>" in over_time


def test_report_fragment_is_returned_to_htmx(client, project, data, judge):
    compute(login(client, judge), project)
    response = client.get(f"/projects/{project.slug}/report/", HTTP_HX_REQUEST="true")
    assert response.status_code == 286  # finished: swapped in, and any poll stops
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="report-body"')
    assert "<html" not in html
    assert "HX-Request" in response["Vary"]


def test_reviewers_may_not_see_the_report_and_outsiders_get_404(client, project, data, alice, mallory):
    assert login(client, alice).get(f"/projects/{project.slug}/report/").status_code == 403
    assert login(client, mallory).get(f"/projects/{project.slug}/report/").status_code == 404


def test_reviewer_names_are_escaped_in_the_report(client, project, version, judge, django_user_model):
    sneaky = django_user_model.objects.create_user(username="<b>x</b>", password="pw")
    project.members.add(sneaky)
    item = make_item(project, "rubric")
    annotate(item, sneaky, scores(helpful=3, safe="yes"), version=version)
    compute(login(client, judge), project)
    response = client.get(f"/projects/{project.slug}/report/")
    html = response.content.decode()
    assert "<b>x</b>" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html


def test_report_downloads_as_csv_and_json(client, project, data, judge):
    compute(login(client, judge), project)
    response = client.get(f"/projects/{project.slug}/report.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    alpha = [r for r in rows if r["section"] == "rubric" and r["variable"] == "helpful" and r["metric"] == "alpha"]
    assert len(alpha) == 1 and float(alpha[0]["low"]) <= float(alpha[0]["value"]) <= float(alpha[0]["high"])
    assert any(r["metric"] == "cohen_kappa" and {r["reviewer"], r["other_reviewer"]} == {"alice", "bob"} for r in rows)
    response = client.get(f"/projects/{project.slug}/report.json")
    body = json.loads(response.content)
    assert body["project"]["slug"] == "support"
    assert {s["kind"] for s in body["sections"]} == {"rubric", "preference", "gold"}


def test_a_report_is_cached_until_the_data_changes(project, data, version, alice):
    first = agreement_report_request(project=project)
    assert agreement_report_request(project=project).pk == first.pk
    annotate(make_item(project, "rubric"), alice, scores(helpful=2, safe="no"), version=version)
    assert agreement_report_request(project=project).pk != first.pk


@override_settings(GOLDSET_REPORT_INLINE_MAX=10)
def test_a_large_report_is_queued_shows_progress_and_completes_in_the_worker(
    client, project, data, judge, django_capture_on_commit_callbacks
):
    login(client, judge)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(f"/projects/{project.slug}/report/compute/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert 'role="progressbar"' in html and 'hx-trigger="every 1s"' in html
    row = AgreementReport.objects.get()
    assert row.status == "queued" and len(callbacks) == 1
    assert client.get(f"/projects/{project.slug}/report.json").status_code == 503

    from annotate.tasks import agreement_report_compute

    agreement_report_compute(row.pk)
    agreement_report_compute(row.pk)  # a redelivered message finds it claimed and does nothing
    row.refresh_from_db()
    assert row.status == "succeeded" and row.progress == 1.0 and row.started_at and row.finished_at
    response = client.get(f"/projects/{project.slug}/report/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 286  # htmx swaps the finished report in and stops polling
    assert "hx-trigger" not in html and "<svg" in html


def test_check_accuracy_is_reported_per_reviewer(project, version, alice, bob):
    item = make_item(project, "preference", is_check=True, check_answer=pref(chosen=1, rejected=0))
    annotate(item, alice, pref(chosen=1, rejected=0))
    annotate(item, bob, pref(chosen=0, rejected=1))
    report = report_build(project=project, n_boot=0)
    assert {c["reviewer"]: c["accuracy"] for c in report["checks"]} == {"alice": 1.0, "bob": 0.0}


def test_agreement_over_time_dates_each_item_by_its_latest_review():
    from annotate.reports import Variable, variable_report

    # Items 0-1 reviewed on day 0 in full agreement; items 2-3 finished on day 3 in full disagreement.
    units = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    raters = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    codes = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    days = np.array([0, 0, 0, 0, 0, 3, 3, 3]) + 20000
    var = Variable("v", "V", "nominal", ["a", "b"], np.arange(2.0), units, raters, codes, days)
    out = variable_report(var, n_units=4, rater_names=["x", "y"], n_boot=0, seed=0)
    assert [(p["start"], p["n_units"], p["percent"]) for p in out["over_time"]] == [
        ("2024-10-04", 2, 1.0),
        ("2024-10-07", 2, 0.0),
    ]
    assert out["pairwise_n"] == [[0, 4], [4, 0]]


def test_recomputing_replaces_the_old_report(project, data, admin_user, client):
    first = agreement_report_request(project=project)
    response = login(client, admin_user).post(f"/projects/{project.slug}/report/refresh/")
    assert response.status_code == 302
    assert list(AgreementReport.objects.values_list("status", flat=True)) == ["succeeded"]
    assert not AgreementReport.objects.filter(pk=first.pk).exists()


def test_reviewers_cannot_force_a_recompute(project, data, alice, client):
    assert login(client, alice).post(f"/projects/{project.slug}/report/refresh/").status_code == 403


def test_rankings_over_three_responses_report_an_intransitive_cycle(project, alice, bob, carol):
    item = make_item(project, "preference", responses=3)
    annotate(item, alice, pref(chosen=0, rejected=1), display_order=[0, 1, 2])
    annotate(item, bob, pref(chosen=1, rejected=2), display_order=[2, 1, 0])
    annotate(item, carol, pref(chosen=2, rejected=0), display_order=[1, 0, 2])
    consistent = make_item(project, "preference", responses=3)
    annotate(consistent, alice, pref(chosen=2, rejected=0), display_order=[0, 1, 2])
    annotate(consistent, bob, pref(chosen=2, rejected=1), display_order=[0, 1, 2])
    report = report_build(project=project, n_boot=0)
    rankings = next(s for s in report["sections"] if s["kind"] == "preference")["rankings"]
    assert rankings["items_ranked"] == 2 and rankings["items_with_cycles"] == 1
    assert rankings["examples"][0]["item_id"] == item.pk and rankings["examples"][0]["cycles"] == [[0, 1, 2]]


@override_settings(GOLDSET_REPORT_INLINE_MAX=10)
def test_the_page_polls_the_report_it_waits_for_without_reading_the_annotations(
    client, project, data, judge, django_capture_on_commit_callbacks
):
    login(client, judge)
    with django_capture_on_commit_callbacks(execute=False):
        html = client.post(f"/projects/{project.slug}/report/compute/", HTTP_HX_REQUEST="true").content.decode()
    row = AgreementReport.objects.get()
    assert f"report/?report={row.pk}" in html
    assert AgreementReport.claim(row.pk)  # as the worker does
    AgreementReport.report_progress(row.pk, 0.4, "Reading annotations (1,000 read)")
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/projects/{project.slug}/report/?report={row.pk}", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "Reading annotations (1,000 read)" in response.content.decode()
    assert not [q["sql"] for q in queries if "annotate_annotation" in q["sql"]]

    AgreementReport.finish(row.pk, AgreementReport.Status.SUCCEEDED, "Done", result=report_build(project=project))
    response = client.get(f"/projects/{project.slug}/report/?report={row.pk}", HTTP_HX_REQUEST="true")
    assert response.status_code == 286 and "<svg" in response.content.decode()


def test_a_polled_id_of_another_project_or_no_number_shows_this_projects_report(client, project, data, judge):
    login(client, judge)
    compute(client, project)  # small: made at once
    for polled in ("999999", "x"):
        response = client.get(f"/projects/{project.slug}/report/?report={polled}", HTTP_HX_REQUEST="true")
        assert response.status_code == 286 and "<svg" in response.content.decode()


@pytest.mark.parametrize(("level", "levels"), [("nominal", np.arange(3.0)), ("interval", np.array([0, 2.5, 5, 7.5]))])
def test_a_variable_fed_a_block_of_units_at_a_time_reports_what_all_its_ratings_give_at_once(level, levels):
    """Blocks of units in unit order, raters numbered as they appear: the figures of the whole, bit for bit."""
    from annotate.reports import Variable, VariableSums, variable_report

    rng = np.random.default_rng(4)
    seen = rng.random((600, 7)) < 0.45  # 0 to 7 ratings per unit: weights such as 1/3 and 1/5
    seen[:5] = True
    units, raters = np.nonzero(seen)
    codes = rng.integers(0, len(levels), size=len(units))
    codes[raters == 2] = 0  # one reviewer leans
    days = 20000 + units // 9 + rng.integers(0, 3, size=len(units))
    names = [f"r{r}" for r in range(9)]  # two reviewers with no rating of this variable
    var = Variable("v", "V", level, [str(x) for x in levels], levels, units, raters, codes, days, meta={"scale": level})
    expected = variable_report(var, n_units=610, rater_names=names, n_boot=100, seed=1)

    appear = np.array([5, 0, 3, 6, 1, 2, 4])  # dense index of each rater, as if met in another order
    sums = VariableSums(key="v", name="V", level=level, labels=var.labels, levels=levels, meta={"scale": level})
    edges = [0, 1, 57, 58, 300, 610]
    for lo, hi in zip(edges, edges[1:], strict=False):
        rows = (units >= lo) & (units < hi)
        sums.add(
            units=units[rows] - lo, raters=appear[raters[rows]], codes=codes[rows], days=days[rows], n_units=hi - lo
        )
    positions = np.argsort(appear)  # where each dense index goes among the names
    assert sums.report(positions=positions, rater_names=names, n_boot=100, seed=1) == expected
    assert expected["over_time"] and any(r["flags"] for r in expected["reviewers"])
