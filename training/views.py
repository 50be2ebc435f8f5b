"""Training pages: snapshots, the job form, its preflight (run on a worker), the jobs queue and a live job page."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling
from django_htmx.middleware import HtmxDetails

from training import selectors, services
from training.errors import INSTALL_HINT
from training.forms import JobForm, SnapshotForm


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _errors(exc: ValidationError) -> list[str]:
    return exc.messages


@require_http_methods(["GET", "POST"])
def snapshot_list(request: HttpRequest) -> HttpResponse:
    snapshots = selectors.snapshot_list_for_admin(user=request.user)
    form = SnapshotForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            snapshot = services.snapshot_create(created_by=request.user, **form.cleaned_data)
        except ValidationError as exc:
            for message in _errors(exc):
                form.add_error(None, message)
        else:
            messages.success(
                request, f"Snapshot {snapshot.name} frozen: {snapshot.sft_count} SFT, {snapshot.dpo_count} DPO."
            )
            return redirect("training:snapshot-detail", snapshot_id=snapshot.pk)
    return render(request, "training/snapshot_list.html", {"snapshots": snapshots, "form": form})


@require_GET
def snapshot_detail(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    context = {
        "snapshot": snapshot,
        "checks": snapshot.checks.all(),
        "trainable": services.snapshot_is_trainable(snapshot),
        "reason": services.snapshot_untrainable_reason(snapshot),
        "records": snapshot.records.all()[:20],
        "jobs": snapshot.jobs.all(),
    }
    return render(request, "training/snapshot_detail.html", context)


@require_POST
def snapshot_rewrite_tasks(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    created = services.snapshot_rewrite_tasks_create(snapshot=snapshot)
    messages.success(request, f"{len(created)} gold-answer rewrite task(s) offered to reviewers.")
    return redirect("training:snapshot-detail", snapshot_id=snapshot.pk)


@require_GET
@vary_on_headers("HX-Request")
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = selectors.job_list_for_admin(user=request.user)
    template = "training/job_list.html" + ("#job-table" if request.htmx else "")
    return render(request, template, {"jobs": jobs})


def _initial_from(preflight) -> dict:
    """The form's values of an earlier preflight, to change what it found wrong."""
    config = dict(preflight.config)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = ", ".join(config["target_modules"])
    return {**config, "snapshot": preflight.snapshot_id, "base_model": preflight.base_model, "method": preflight.method}


@require_http_methods(["GET", "POST"])
def job_new(request: HtmxHttpRequest) -> HttpResponse:
    selectors.require_admin(request.user)
    initial = {"snapshot": request.GET.get("snapshot")}
    if request.GET.get("preflight", "").isdigit():
        earlier = selectors.preflight_get_for_admin(user=request.user, preflight_id=int(request.GET["preflight"]))
        initial = _initial_from(earlier)
    form = JobForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            preflight = services.training_preflight_request(
                snapshot=form.cleaned_data["snapshot"],
                base_model=form.cleaned_data["base_model"],
                method=form.cleaned_data["method"],
                config=form.config_dict(),
                created_by=request.user,
            )
        except ValidationError as exc:
            for message in _errors(exc):
                form.add_error(None, message)
        else:
            url = preflight.get_absolute_url()
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    context = {"form": form, "extra_installed": selectors.training_extra_installed(), "install_hint": INSTALL_HINT}
    return render(request, "training/job_form.html", context, status=400 if form.errors else 200)


@require_GET
@vary_on_headers("HX-Request")
def preflight_detail(request: HtmxHttpRequest, preflight_id: int) -> HttpResponse:
    preflight = selectors.preflight_get_for_admin(user=request.user, preflight_id=preflight_id)
    context = {"preflight": preflight, "percent": round(100 * preflight.progress)}
    if request.htmx:
        response = render(request, "training/preflight_detail.html#preflight-progress", context)
        # The final state (errors, or the preview and the queue button) is still swapped in, then polling stops.
        return HttpResponseStopPolling(response.content) if preflight.is_finished else response
    return render(request, "training/preflight_detail.html", context)


@require_POST
def preflight_queue(request: HtmxHttpRequest, preflight_id: int) -> HttpResponse:
    preflight = selectors.preflight_get_for_admin(user=request.user, preflight_id=preflight_id)
    try:
        job = services.training_job_create(preflight=preflight, created_by=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(_errors(exc)))
        return redirect(preflight)
    messages.success(request, f"Job {job.pk} passed its preflight and is queued.")
    return redirect(job)


@require_GET
@vary_on_headers("HX-Request", "HX-Target")
def job_detail(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    metrics = selectors.job_metrics_page(job, request.GET.get("page"))
    if request.htmx and request.htmx.target == "job-metrics":
        context = {"job": job, "metrics": metrics, "finished": job.is_finished}
        return render(request, "training/job_detail.html#job-metrics", context)
    context = {**selectors.job_progress_context(job), "metrics": metrics}
    if request.htmx:
        response = render(request, "training/job_detail.html#job-progress", context)
        # The last state is still swapped in, then htmx stops polling.
        return HttpResponseStopPolling(response.content) if job.is_finished else response
    context["config_rows"] = selectors.job_config_rows(job)
    context["manifest_rows"] = selectors.manifest_summary(job.manifest)
    return render(request, "training/job_detail.html", context)


def _act(request: HttpRequest, job_id: int, action) -> HttpResponse:
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    try:
        result = action(job)
    except ValidationError as exc:
        messages.error(request, " ".join(_errors(exc)))
        return redirect(job)
    return redirect(result)


@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    return _act(request, job_id, lambda job: services.training_job_cancel(job=job))


@require_POST
def job_retry(request: HttpRequest, job_id: int) -> HttpResponse:
    return _act(request, job_id, lambda job: services.training_job_retry(job=job, created_by=request.user))


@require_POST
def job_resume(request: HttpRequest, job_id: int) -> HttpResponse:
    return _act(request, job_id, lambda job: services.training_job_resume(job=job, created_by=request.user))


@require_GET
def job_download(request: HttpRequest, job_id: int) -> FileResponse:
    """The adapter folder (weights, tokenizer, manifest.json) as a zip."""
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    adapter = Path(job.output_dir) / "adapter" if job.output_dir else None
    root = Path(settings.ARTIFACTS_DIR).resolve()
    if adapter is None or not adapter.is_dir() or root not in adapter.resolve().parents:
        raise Http404("This job has no adapter to download (it did not succeed).")
    # A temporary file vanishes when the response closes it: nothing is left behind on disk.
    archive = tempfile.TemporaryFile()  # noqa: SIM115
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(adapter.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(adapter).as_posix())
    archive.seek(0)
    return FileResponse(archive, as_attachment=True, filename=f"goldset-job-{job.pk}-adapter.zip")
