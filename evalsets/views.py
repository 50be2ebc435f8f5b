from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotFound, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from config.background import send_on_commit
from evalsets import selectors, services
from evalsets.export import FORMATS, Tally, iter_export, layout_unavailable, layouts_for, manifest_bytes


@require_GET
def evalset_list(request: HttpRequest) -> HttpResponse:
    versions = selectors.evalset_version_list_for_user(user=request.user)
    projects = selectors.evalset_projects_for_user(user=request.user)
    return render(request, "evalsets/evalset_list.html", {"versions": versions, "projects": projects})


@require_http_methods(["GET", "POST"])
def evalset_freeze(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.evalset_project_get_for_admin(user=request.user, slug=slug)
    errors: list[str] = []
    if request.method == "POST":
        try:
            result = services.evalset_freeze(
                project=project, user=request.user, changelog=request.POST.get("changelog", "")
            )
        except ValidationError as exc:
            errors = exc.messages
        else:
            messages.success(
                request,
                f"Froze {result.version.name}: {result.version.record_count} records, "
                f"{len(result.refusals)} eval items refused.",
            )
            return redirect(result.version)
    plan = selectors.evalset_freeze_plan(project=project)
    context = {
        "project": project,
        "plan": plan,
        "summary": selectors.summarize_records(plan.records),
        "errors": errors,
        "changelog": request.POST.get("changelog", ""),
    }
    return render(request, "evalsets/freeze.html", context, status=400 if errors else 200)


@require_GET
def version_detail(request: HttpRequest, version_id: int) -> HttpResponse:
    version = selectors.evalset_version_get_for_user(user=request.user, version_id=version_id)
    try:
        page = int(request.GET.get("page", "1"))
    except ValueError:
        page = 1
    context = {
        "version": version,
        "records": selectors.evalset_version_records_page(version=version, page=page),
        "formats": [(key, FORMATS[key][0]) for key in layouts_for(version.counts)],
        "verification": selectors.evalset_version_latest_verification(version=version),
    }
    if request.htmx and "page" in request.GET:
        return render(request, "evalsets/version_detail.html#record-rows", context)
    context["diff"] = selectors.evalset_version_diff(version=version)
    return render(request, "evalsets/version_detail.html", context)


def _unavailable(request: HttpRequest, version, fmt: str) -> HttpResponse | None:
    """A 404 page that says why, when the version has nothing to export in this layout (None when it has)."""
    if fmt not in FORMATS:
        raise Http404(f"Unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    reason = layout_unavailable(fmt, name=version.name, counts=version.counts)
    if not reason:
        return None
    context = {"version": version, "reason": reason, "formats": layouts_for(version.counts)}
    return HttpResponseNotFound(render(request, "evalsets/export_unavailable.html", context).content)


@require_GET
def version_export(request: HttpRequest, version_id: int, fmt: str) -> HttpResponse:
    version = selectors.evalset_version_get_for_user(user=request.user, version_id=version_id)
    if unavailable := _unavailable(request, version, fmt):
        return unavailable
    response = StreamingHttpResponse(
        iter_export(selectors.evalset_records_iter(version=version), fmt), content_type="application/jsonl"
    )
    response["Content-Disposition"] = f'attachment; filename="{version.name}.{fmt}.jsonl"'
    return response


@require_GET
def version_export_manifest(request: HttpRequest, version_id: int, fmt: str) -> HttpResponse:
    version = selectors.evalset_version_get_for_user(user=request.user, version_id=version_id)
    if unavailable := _unavailable(request, version, fmt):
        return unavailable
    tally = Tally()
    # One streamed pass hashes the file exactly as the download writes it; memory stays flat.
    for _ in iter_export(selectors.evalset_records_iter(version=version), fmt, tally):
        pass
    body = manifest_bytes(
        version_info=selectors.evalset_version_info(version=version),
        fmt=fmt,
        filename=f"{version.name}.{fmt}.jsonl",
        tally=tally,
    )
    response = HttpResponse(body, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{version.name}.{fmt}.manifest.json"'
    return response


@require_GET
def snapshot_list(request: HttpRequest) -> HttpResponse:
    snapshots = selectors.snapshot_list_for_admin(user=request.user)
    return render(request, "evalsets/snapshot_list.html", {"snapshots": snapshots})


@require_GET
def snapshot_contamination(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    check = selectors.snapshot_latest_check(snapshot=snapshot)
    context = {"snapshot": snapshot, "check": check, "pairs": selectors.snapshot_check_pairs(check=check)}
    return render(request, "evalsets/snapshot_contamination.html", context)


@require_POST
def snapshot_contamination_check(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    from evalsets.tasks import snapshot_contamination_check_run

    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    send_on_commit(snapshot_contamination_check_run, snapshot.pk)
    context = {"snapshot": snapshot, "check": selectors.snapshot_latest_check(snapshot=snapshot), "queued": True}
    if request.htmx:
        response = render(request, "evalsets/snapshot_contamination.html#check-status", context)
        return trigger_client_event(response, "contamination-check-queued", {"snapshot_id": snapshot.pk})
    messages.info(request, "Contamination check queued: the verdict appears here when the worker is done.")
    return redirect("evalsets:snapshot-contamination", snapshot_id=snapshot.pk)
