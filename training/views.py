"""Training pages: snapshots, the job form, its preflight (run on a worker), the jobs queue and a live job page."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from annotate.audit import matcher
from annotate.services.curation import items_mark_unusable, items_send_back
from config.background import poll_response
from config.csvwriter import csv_response
from training import selectors, services
from training.audits import audit_finding_acknowledge, snapshot_audit_clearance, snapshot_audit_request
from training.demo import LABEL as DEMO_LABEL
from training.demo import demo_base_model
from training.errors import INSTALL_HINT
from training.forms import JobForm, SnapshotForm
from training.models import SnapshotAudit, TrainingJob, TrainingSnapshot


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _errors(exc: ValidationError) -> list[str]:
    return exc.messages


def _curated_from(request: HttpRequest) -> tuple[TrainingSnapshot | None, SnapshotAudit | None, object]:
    """The snapshot a new one is curated from (``?from=<id>``), its latest audit and contamination check."""
    raw = request.POST.get("from_snapshot") or request.GET.get("from")
    if not raw or not str(raw).isdigit():
        return None, None, None
    base = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=int(raw))
    return base, selectors.snapshot_audit_latest(base), services.snapshot_latest_check(base)


def _initial_from_snapshot(base: TrainingSnapshot, request: HttpRequest) -> dict:
    filters = base.filters or {}
    return {
        "name": f"{base.name} (curated)",
        "projects": [s["project_id"] for s in base.sources],
        "from_snapshot": base.pk,
        **{
            k: filters.get(k)
            for k in (
                "include_llm_judged",
                "adjudicated_only",
                "min_agreement",
                "decided_from",
                "decided_until",
                "rubric_version",
                "rubric_min",
            )
            if filters.get(k) is not None
        },
        "provenances": filters.get("provenances", []),
        "kinds": filters.get("kinds", []),
        "exclude_findings": request.GET.getlist("exclude"),
    }


@require_http_methods(["GET", "POST"])
def snapshot_list(request: HttpRequest) -> HttpResponse:
    snapshots = selectors.snapshot_list_for_admin(user=request.user)
    base, audit, check = _curated_from(request)
    initial = _initial_from_snapshot(base, request) if base else None
    form = SnapshotForm(request.POST or None, initial=initial, audit=audit, check=check)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            snapshot = services.snapshot_create(
                name=data["name"],
                projects=list(data["projects"]),
                created_by=request.user,
                filters=form.filters(),
                note=data["note"],
            )
        except ValidationError as exc:
            for message in _errors(exc):
                form.add_error(None, message)
        else:
            messages.success(
                request,
                f"Snapshot {snapshot.name} frozen: {snapshot.sft_count} SFT, {snapshot.dpo_count} DPO. "
                "Its audit is running.",
            )
            return redirect("training:snapshot-detail", snapshot_id=snapshot.pk)
    context = {"snapshots": snapshots, "form": form, "base": base, "audit": audit}
    return render(request, "training/snapshot_list.html", context, status=400 if form.errors else 200)


@require_GET
def snapshot_detail(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    audit = selectors.snapshot_audit_latest(snapshot)
    context = {
        "snapshot": snapshot,
        "checks": snapshot.checks.all(),
        "trainable": services.snapshot_is_trainable(snapshot),
        "reason": services.snapshot_untrainable_reason(snapshot),
        "audit": audit,
        "audit_block": _audit_block(snapshot),
        "records": snapshot.records.all()[:20],
        "jobs": snapshot.jobs.all(),
        "others": selectors.snapshot_list_for_admin(user=request.user).exclude(pk=snapshot.pk)[:20],
    }
    return render(request, "training/snapshot_detail.html", context)


def _audit_block(snapshot: TrainingSnapshot) -> str:
    """Why the audit stops jobs on this snapshot ("" when it does not)."""
    try:
        snapshot_audit_clearance(snapshot)
    except ValidationError as exc:
        return " ".join(exc.messages)
    return ""


@require_GET
@vary_on_headers("HX-Request")
def audit_detail(request: HtmxHttpRequest, audit_id: int) -> HttpResponse:
    audit = selectors.audit_get_for_admin(user=request.user, audit_id=audit_id)
    if request.GET.get("format") == "json":
        response = JsonResponse(audit.report, json_dumps_params={"indent": 1, "ensure_ascii": False})
        response["Content-Disposition"] = f'attachment; filename="audit-{audit.pk}.json"'
        return response
    findings = []
    if audit.status == SnapshotAudit.Status.SUCCEEDED:
        acks, examples = selectors.audit_acknowledgements(audit), selectors.audit_examples(audit)
        for f in audit.findings:
            ids = f.get("examples") or [rid for v in f.get("values", [])[1:] for rid in v.get("examples", [])]
            findings.append(
                {
                    **f,
                    "ack": acks.get(f["key"]),
                    "example_rows": [examples[rid] for rid in ids if rid in examples],
                    "excludable": matcher(f) is not None,
                }
            )
    context = {
        "audit": audit,
        "snapshot": audit.snapshot,
        "findings": findings,
        "latest": selectors.snapshot_audit_latest(audit.snapshot),
    }
    if request.htmx:
        return poll_response(request, "training/audit_detail.html#audit-body", context, work=audit)
    return render(request, "training/audit_detail.html", context)


@require_POST
def audit_rerun(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    audit = snapshot_audit_request(snapshot=snapshot, created_by=request.user)
    return redirect(audit.get_absolute_url())


@require_POST
def audit_acknowledge(request: HttpRequest, audit_id: int) -> HttpResponse:
    audit = selectors.audit_get_for_admin(user=request.user, audit_id=audit_id)
    try:
        audit_finding_acknowledge(
            audit=audit,
            finding_key=request.POST.get("finding", ""),
            reason=request.POST.get("reason", ""),
            acknowledged_by=request.user,
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, "Acknowledged: the reason goes into the record of every job on this snapshot.")
    return redirect(audit.get_absolute_url())


@require_POST
def audit_finding_action(request: HttpRequest, audit_id: int) -> HttpResponse:
    """Send every item of a finding back to review, or mark them unusable (the snapshot itself never changes)."""
    audit = selectors.audit_get_for_admin(user=request.user, audit_id=audit_id)
    key = request.POST.get("finding", "")
    finding = next((f for f in audit.findings if f.get("key") == key), None)
    if finding is None:
        raise Http404("No such finding in this audit.")
    item_ids = selectors.finding_item_ids(audit, finding)
    action = request.POST.get("action")
    try:
        if action == "send_back":
            count = items_send_back(item_ids=item_ids, note=request.POST.get("note", ""))
            messages.success(request, f"{count} item(s) sent back to review; their results wait for new reviews.")
        elif action == "mark_unusable":
            count = items_mark_unusable(item_ids=item_ids, reason=request.POST.get("note", ""))
            messages.success(request, f"{count} item(s) marked unusable: no new snapshot will take them.")
        else:
            raise ValidationError("Choose to send the items back to review or to mark them unusable.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect(audit.get_absolute_url())


@require_GET
def snapshot_diff(request: HttpRequest, snapshot_id: int, other_id: int) -> HttpResponse:
    old = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    new = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=other_id)
    diff = selectors.snapshot_diff(old, new)
    parts = [("Added", diff["added"]), ("Removed", diff["removed"]), ("Changed", diff["changed"])]
    return render(request, "training/snapshot_diff.html", {"diff": diff, "parts": parts})


@require_POST
def snapshot_rewrite_tasks(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    created = services.snapshot_rewrite_tasks_create(snapshot=snapshot)
    messages.success(request, f"{len(created)} gold-answer rewrite task(s) offered to reviewers.")
    return redirect("training:snapshot-detail", snapshot_id=snapshot.pk)


@require_GET
@vary_on_headers("HX-Request")
def job_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    status = status if status in TrainingJob.Status.values else ""
    q = request.GET.get("q", "").strip()[:200]
    page = selectors.job_page_for_admin(user=request.user, status=status, q=q, page=request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "jobs": page,
        "page": page,
        "status": status,
        "q": q,
        "statuses": TrainingJob.Status.choices,
        "query": query.urlencode(),
    }
    template = "training/job_list.html" + ("#job-table" if request.htmx else "")
    return render(request, template, context)


def _initial_from(preflight) -> dict:
    """The form's values of an earlier preflight, to change what it found wrong."""
    config = dict(preflight.config)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = ", ".join(config["target_modules"])
    return {**config, "snapshot": preflight.snapshot_id, "base_model": preflight.base_model, "method": preflight.method}


@require_http_methods(["GET", "POST"])
def job_new(request: HtmxHttpRequest) -> HttpResponse:
    selectors.require_admin(request.user)
    # The demo's local base model, when there is one: a newcomer trains without finding a model first.
    initial = {"snapshot": request.GET.get("snapshot"), "base_model": demo_base_model()}
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
    context = {
        "form": form,
        "extra_installed": selectors.training_extra_installed(),
        "install_hint": INSTALL_HINT,
        "demo_model": demo_base_model(),
        "demo_label": DEMO_LABEL,
    }
    return render(request, "training/job_form.html", context, status=400 if form.errors else 200)


@require_GET
@vary_on_headers("HX-Request")
def preflight_detail(request: HtmxHttpRequest, preflight_id: int) -> HttpResponse:
    preflight = selectors.preflight_get_for_admin(user=request.user, preflight_id=preflight_id)
    context = {"preflight": preflight, "percent": preflight.percent}
    if request.htmx:
        # The final state (errors, or the preview and the queue button) is still swapped in, then polling stops.
        return poll_response(request, "training/preflight_detail.html#preflight-progress", context, work=preflight)
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
    if request.GET.get("format") == "csv":
        return csv_response(selectors.job_metrics_rows(job), filename=f"job-{job.pk}-metrics.csv")
    metrics = selectors.job_metrics_page(job, request.GET.get("page"))
    if request.htmx and request.htmx.target == "job-metrics":
        context = {"job": job, "metrics": metrics, "finished": job.is_finished}
        return render(request, "training/job_detail.html#job-metrics", context)
    context = {**selectors.job_progress_context(job), "metrics": metrics}
    if request.htmx:  # the last state is still swapped in, then htmx stops polling
        return poll_response(request, "training/job_detail.html#job-progress", context, work=job)
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
    return _act(request, job_id, lambda job: services.training_job_cancel(job=job, by=request.user))


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
    if job.status != TrainingJob.Status.SUCCEEDED:
        # A failed or cancelled run's folder may hold a half-written adapter: only a finished one is handed out.
        raise Http404("This job has no adapter to download (it did not succeed).")
    adapter = Path(job.output_dir) / "adapter" if job.output_dir else None
    root = Path(settings.ARTIFACTS_DIR).resolve()
    if adapter is None or not adapter.is_dir() or root not in adapter.resolve().parents:
        raise Http404("This job has no adapter to download (it did not succeed).")
    # A temporary file vanishes when the response closes it: nothing is left behind on disk.
    archive = tempfile.TemporaryFile()  # noqa: SIM115
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        real = adapter.resolve()
        for f in sorted(adapter.rglob("*")):
            # Nothing from outside the adapter folder, whatever a link in it points at.
            if f.is_file() and not f.is_symlink() and real in f.resolve().parents:
                zf.write(f, f.relative_to(adapter).as_posix())
    archive.seek(0)
    return FileResponse(archive, as_attachment=True, filename=f"goldset-job-{job.pk}-adapter.zip")
