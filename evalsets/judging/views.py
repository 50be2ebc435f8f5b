"""Judging pages (admins): generation runs, comparison queues and their results, capability regression, model cards."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from annotate import charts
from config.background import poll_response
from evalsets.judging import modelcard, results, selectors
from evalsets.judging.forms import (
    ComparisonForm,
    GenerationRunForm,
    RegressionCheckForm,
    RegressionPairForm,
    ThresholdForm,
)
from evalsets.judging.models import Comparison
from evalsets.judging.services import comparisons as comparison_services
from evalsets.judging.services import regression as regression_services
from evalsets.judging.services import runs as run_services


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


@require_http_methods(["GET", "POST"])
def run_list(request: HttpRequest) -> HttpResponse:
    run_rows = selectors.run_list_for_admin(user=request.user)[:200]
    form = GenerationRunForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            run = run_services.generation_run_start(
                label=data["label"],
                decoding=form.decoding(),
                created_by=request.user,
                version=None if data["regression"] else data["version"],
                job=data["job"],
                base_model=data["base_model"] or "",
                regression={} if data["regression"] else None,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return redirect(run)
    context = {"runs": run_rows, "form": form}
    return render(request, "judging/run_list.html", context, status=400 if form.errors else 200)


@require_GET
def run_detail(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    run = selectors.run_get_for_admin(user=request.user, run_id=run_id)
    context = {"run": run, "work": run}
    if request.htmx:
        return poll_response(request, "judging/run_detail.html#run-progress", context, work=run)
    context["outputs"] = selectors.run_outputs_page(run)
    return render(request, "judging/run_detail.html", context)


def _act(request: HttpRequest, run_id: int, action) -> HttpResponse:
    run = selectors.run_get_for_admin(user=request.user, run_id=run_id)
    try:
        result = action(run)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(run)
    return redirect(result)


@require_POST
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    return _act(request, run_id, lambda run: run_services.generation_run_cancel(run=run))


@require_POST
def run_retry(request: HttpRequest, run_id: int) -> HttpResponse:
    return _act(request, run_id, lambda run: run_services.generation_run_retry(run=run, created_by=request.user))


# --- comparisons ---------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def comparison_list(request: HttpRequest) -> HttpResponse:
    comparisons = selectors.comparison_list_for_admin(user=request.user)
    form = ComparisonForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            comparison = comparison_services.comparison_create(
                name=data["name"],
                run_a=data["run_a"],
                run_b=data["run_b"],
                mode=data["mode"],
                reviewers=data["reviewers"],
                overlap_k=data["overlap_k"],
                seed=data["seed"],
                created_by=request.user,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return redirect(comparison)
    context = {"comparisons": comparisons, "form": form}
    return render(request, "judging/comparison_list.html", context, status=400 if form.errors else 200)


@require_GET
def comparison_detail(request: HttpRequest, comparison_id: int) -> HttpResponse:
    comparison = selectors.comparison_get_for_admin(user=request.user, comparison_id=comparison_id)
    found = results.comparison_results(comparison)
    context = {"comparison": comparison, "results": found, "win_rate_chart": _win_rate_chart(comparison, found)}
    return render(request, "judging/comparison_detail.html", context)


def _win_rate_chart(comparison, found: dict):
    """B's win rate overall and by reviewer as bars with their 95% intervals (the tables below hold the numbers);
    None for a comparison with no B (the reference and rubric modes judge one run)."""
    if comparison.mode != Comparison.Mode.PAIRWISE:
        return None
    groups = [("All judgements", found["overall"])] + [(f"by {r['group']}", r) for r in found["by_reviewer"]]
    rows = [
        {"label": label, "value": s.value, "low": s.low, "high": s.high}
        for label, result in groups
        if (s := result.get("win_rate")) is not None
    ]
    if not rows:
        return None
    return charts.bars_with_ci(
        rows,
        title=f"Win rate of {comparison.run_b.label} (B) against {comparison.run_a.label} (A)",
        axis="Win rate of B (0 to 1; ties count half; 0.5 = even)",
        thresholds=[(0.5, "even")],
    )


# --- model cards and capability regression -----------------------------------------------------------


@require_GET
def model_card(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    context = {"card": modelcard.model_card(job), "form": RegressionPairForm(), "job": job}
    return render(request, "judging/model_card.html", context)


@require_GET
def model_card_markdown(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    response = HttpResponse(
        modelcard.to_markdown(modelcard.model_card(job)), content_type="text/markdown; charset=utf-8"
    )
    response["Content-Disposition"] = 'attachment; filename="README.md"'
    return response


@require_POST
def regression_start(request: HttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    form = RegressionPairForm(request.POST)
    if form.is_valid():
        try:
            regression_services.regression_pair_start(
                job=job,
                decoding=form.decoding(),
                created_by=request.user,
                seed=form.cleaned_data["suite_seed"],
                per_category=form.cleaned_data["per_category"],
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, "The regression suite is queued for the base model and the adapter.")
            return redirect("judging:model-card", job_id=job.pk)
    context = {"card": modelcard.model_card(job), "form": form, "job": job}
    return render(request, "judging/model_card.html", context, status=400)


@require_http_methods(["GET", "POST"])
def project_checks(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    check_form = RegressionCheckForm(request.POST if "prompt" in request.POST else None)
    threshold_form = ThresholdForm(request.POST if "max_drop" in request.POST else None)
    for form, action in (
        (check_form, lambda d: regression_services.regression_check_add(project=project, **d)),
        (threshold_form, lambda d: regression_services.regression_threshold_set(project=project, **d)),
    ):
        if form.is_bound and form.is_valid():
            try:
                action(form.cleaned_data)
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                return redirect("judging:project-checks", slug=project.slug)
    threshold = getattr(project, "regression_threshold", None)
    context = {
        "project": project,
        "checks": project.regression_checks.all(),
        "check_form": check_form,
        "threshold_form": threshold_form,
        "max_drop": threshold.max_drop if threshold else regression_services.DEFAULT_MAX_DROP,
    }
    bound = check_form.is_bound or threshold_form.is_bound
    return render(request, "judging/project_checks.html", context, status=400 if bound else 200)
