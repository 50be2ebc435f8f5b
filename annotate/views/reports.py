import json

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from annotate import charts, selectors
from annotate.models import AgreementReport, RubricVersion
from annotate.reports import report_csv as to_csv
from annotate.services.reports import agreement_report_request
from config.background import poll_response

CALIBRATION_LINES = [(0.667, "0.667"), (0.8, "0.8")]


def _version(request: HttpRequest, project) -> RubricVersion | None:
    raw = request.GET.get("version") or request.POST.get("version")
    return selectors.rubric_version_get(project=project, version_id=raw) if raw else None


def _number(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _count(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def _period(points: list[dict]) -> str:
    return "day" if points[0]["days"] == 1 else "week"


def _kappa_table(v: dict, names: list[str], seen: list[int]) -> dict:
    return {
        "caption": f"Cohen's κ between reviewers on {v['name']} (items both reviewed in brackets)",
        "head": ["Reviewer", *(names[j] for j in seen)],
        "rows": [
            [
                names[i],
                *(
                    "–" if i == j else f"{_number(v['pairwise_kappa'][i][j], 2)} ({v['pairwise_n'][i][j]})"
                    for j in seen
                ),
            ]
            for i in seen
        ],
    }


def _paired_table(v: dict) -> dict:
    return {
        "caption": f"Paired values on {v['name']}: how often one reviewer's value (row) met another's (column)",
        "head": ["Value", *v["labels"]],
        "rows": [[label, *(_count(x) for x in row)] for label, row in zip(v["labels"], v["confusion"], strict=True)],
    }


def _over_time_table(v: dict) -> dict:
    return {
        "caption": f"Agreement on {v['name']} by the date items were last reviewed",
        "head": ["From", "Days", "Items", "Krippendorff's α", "Percent agreement"],
        "rows": [
            [p["start"], str(p["days"]), str(p["n_units"]), _number(p["alpha"]), _number(p["percent"])]
            for p in v["over_time"]
        ],
    }


def _charts(result: dict) -> list[dict]:
    """Chart markup for each section and variable, with the numbers behind each chart as a table; the chart
    code escapes every label."""
    names = result["reviewers"]
    sections = []
    for s in result["sections"]:
        variables = []
        for v in s["variables"]:
            # Only reviewers who judged this variable get a row in its heatmap.
            seen = [i for i, row in enumerate(v["pairwise_n"]) if any(row)]
            over_time = len(v["over_time"]) > 1
            variables.append(
                {
                    "data": v,
                    "heatmap": charts.heatmap(
                        [[v["pairwise_kappa"][i][j] for j in seen] for i in seen],
                        [names[i] for i in seen],
                        title=f"Cohen's kappa between reviewers: {v['name']}",
                        counts=[[v["pairwise_n"][i][j] for j in seen] for i in seen],
                    ),
                    "heatmap_table": _kappa_table(v, names, seen),
                    "confusion": charts.confusion(
                        v["confusion"],
                        v["labels"],
                        title=f"Paired values: {v['name']}",
                        rows_axis="One reviewer's value",
                        columns_axis="Another reviewer's value",
                    ),
                    "confusion_table": _paired_table(v),
                    "over_time": charts.line(
                        v["over_time"],
                        title=f"Alpha over time: {v['name']}",
                        x_axis=f"Date items were last reviewed (per {_period(v['over_time'])})",
                        y_axis="Krippendorff's α",
                        thresholds=CALIBRATION_LINES,
                    )
                    if over_time
                    else None,
                    "over_time_table": _over_time_table(v) if over_time else None,
                }
            )
        alpha_bars = charts.bars_with_ci(
            [{"label": v["name"], **v["alpha"]} for v in s["variables"]],
            title=f"Krippendorff's alpha with 95% CI: {s['title']}",
            axis="Krippendorff's α (1 = full agreement, 0 = chance)",
            lo=0.0,
            thresholds=CALIBRATION_LINES,
        )
        left = None
        if s.get("left_pick"):
            left = charts.bars_with_ci(
                [{"label": r["reviewer"], "value": r["rate"], "low": None, "high": None} for r in s["left_pick"]],
                title="Share of picks of the left-hand response",
                axis="Share of picks of the left-hand response (0 to 1)",
                thresholds=[(0.5, "chance")],
            )
        sections.append({"data": s, "variables": variables, "alpha_bars": alpha_bars, "left_pick_chart": left})
    return sections


def _body(request: HttpRequest, project, version, report: AgreementReport | None, latest=None) -> dict:
    return {
        "project": project,
        "report": report,
        "latest": latest,
        "selected_version": version,
        "sections": _charts(report.result) if report and report.status == AgreementReport.Status.SUCCEEDED else [],
    }


@require_GET
@vary_on_headers("HX-Request")
def report(request: HttpRequest, slug: str) -> HttpResponse:
    """The report of the data as it is now. Reading it writes nothing: when none was made for this state of
    the data, the page asks for one with a POST to ``report-compute`` (htmx does so as soon as it loads)."""
    project = selectors.project_get_for_report(user=request.user, slug=slug)
    if request.htmx and request.GET.get("report"):
        # The page polls the report it is waiting for by id: while that one is being made, its progress
        # is all the poll needs, not a look at every annotation to see whether the data changed.
        polled = selectors.agreement_report_get(project=project, report_id=request.GET["report"])
        if polled is not None and not polled.is_finished:
            context = _body(request, project, polled.rubric_version, polled)
            return poll_response(request, "annotate/report.html#report-body", context, work=polled)
    version, current, latest = selectors.agreement_report_current(
        project=project, rubric_version=_version(request, project)
    )
    context = _body(request, project, version, current, latest)
    if request.htmx:
        if current is not None:
            return poll_response(request, "annotate/report.html#report-body", context, work=current)
        return render(request, "annotate/report.html#report-body", context)
    context["versions"] = selectors.rubric_versions_of(project=project)
    return render(request, "annotate/report.html", context)


def _after_request(request: HttpRequest, project, version, row: AgreementReport) -> HttpResponse:
    if request.htmx:
        return render(request, "annotate/report.html#report-body", _body(request, project, version, row))
    url = project.get_absolute_url() + "report/" + (f"?version={version.pk}" if version else "")
    return redirect(url)


@require_POST
def report_compute(request: HttpRequest, slug: str) -> HttpResponse:
    """Make the report of the data as it is now, unless it exists already (anyone who may read the report)."""
    project = selectors.project_get_for_report(user=request.user, slug=slug)
    version = _version(request, project)
    row = agreement_report_request(project=project, rubric_version=version)
    return _after_request(request, project, row.rubric_version, row)


@require_POST
def report_refresh(request: HttpRequest, slug: str) -> HttpResponse:
    """Make the report again, even if one exists for this state of the data (admins)."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    version = _version(request, project)
    row = agreement_report_request(project=project, rubric_version=version, refresh=True)
    return _after_request(request, project, row.rubric_version, row)


def _done(request: HttpRequest, slug: str) -> tuple[dict | None, AgreementReport | None]:
    project = selectors.project_get_for_report(user=request.user, slug=slug)
    _, row, _ = selectors.agreement_report_current(project=project, rubric_version=_version(request, project))
    return (row.result if row and row.status == AgreementReport.Status.SUCCEEDED else None), row


def _not_ready(row: AgreementReport | None) -> HttpResponse:
    if row is None:
        text = "No report has been made for the data as it is now: open the report page to make one.\n"
    else:
        text = f"The report is still being computed ({row.percent}%, {row.message or row.status}). Try again shortly.\n"
    response = HttpResponse(text, status=503, content_type="text/plain")
    response["Retry-After"] = "5"
    return response


@require_GET
def report_csv(request: HttpRequest, slug: str) -> HttpResponse:
    result, row = _done(request, slug)
    if result is None:
        return _not_ready(row)
    response = HttpResponse(to_csv(result), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{slug}-agreement.csv"'
    return response


@require_GET
def report_json(request: HttpRequest, slug: str) -> HttpResponse:
    result, row = _done(request, slug)
    if result is None:
        return _not_ready(row)
    response = HttpResponse(json.dumps(result, indent=1), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{slug}-agreement.json"'
    return response
