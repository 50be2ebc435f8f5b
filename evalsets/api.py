"""The eval sets app's API endpoints (mounted at /api/v1/ by ``config/api.py``): frozen versions, their
manifests and exports in each layout (admins only), and contamination checks of training snapshots.

The contamination endpoints live here, not in ``training/api.py``: the check reads eval text, and training
never imports evalsets (the eval wall). Every read goes through the selectors the pages use.
"""

from __future__ import annotations

from typing import Any, Literal

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from ninja import Query, Router, Schema
from pydantic import Field

from config.api import ADMIN, MAX_PAGE, READ, ApiError, accepted, keyset_page
from evalsets import selectors, services
from evalsets.export import FORMATS, Tally, iter_export, layout_unavailable, layouts_for, manifest_bytes
from evalsets.models import ContaminationCheckRun, EvalSetVersion

router = Router()

NDJSON = "application/x-ndjson"
LayoutName = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
Limit = Query(100, ge=1, le=MAX_PAGE, description=f"Rows per page (at most {MAX_PAGE}).")


class ExportOut(Schema):
    layout: str
    description: str
    url: str
    manifest_url: str


class EvalSetVersionOut(Schema):
    id: int
    name: str
    project: str
    number: int
    previous_id: int | None
    sha256: str = Field(description="sha256 of the canonical (goldset layout) JSONL.")
    record_count: int
    counts: dict[str, int]
    provenance_mix: dict[str, int]
    agreement: dict[str, Any]
    rubric_versions: list[dict[str, Any]]
    refusals: list[dict[str, Any]] = Field(description="[{item_id, reason}]: eval items left out, and why.")
    changelog: str
    frozen_by: str
    frozen_at: str
    exports: list[ExportOut] = Field(description="The layouts this version's records can fill.")


class EvalSetVersionPage(Schema):
    items: list[EvalSetVersionOut]
    next_cursor: str | None = None


class VerdictOut(Schema):
    id: int
    passed: bool
    checked_at: str
    threshold: float
    evalset_versions: list[dict[str, Any]]
    report: dict[str, Any] = Field(description="Counts and the offending training record ids (no eval text).")


class ContaminationRunOut(Schema):
    id: int
    snapshot_id: int
    status: str = Field(description="queued, running, succeeded (the check ran: see verdict.passed) or failed.")
    progress: float
    message: str
    created_at: str
    finished_at: str | None
    verdict: VerdictOut | None
    status_url: str


def _version_out(version: EvalSetVersion) -> dict:
    exports = [
        {
            "layout": layout,
            "description": FORMATS[layout][0],
            "url": reverse("api:evalset-export", kwargs={"evalset_version_id": version.pk, "layout": layout}),
            "manifest_url": reverse(
                "api:evalset-manifest", kwargs={"evalset_version_id": version.pk, "layout": layout}
            ),
        }
        for layout in layouts_for(version.counts)
    ]
    return {
        "id": version.pk,
        "name": version.name,
        "project": version.project.slug,
        "number": version.number,
        "previous_id": version.previous_id,
        "sha256": version.sha256,
        "record_count": version.record_count,
        "counts": version.counts,
        "provenance_mix": version.provenance_mix,
        "agreement": version.agreement,
        "rubric_versions": version.rubric_versions,
        "refusals": version.refusals,
        "changelog": version.changelog,
        "frozen_by": version.frozen_by.get_username(),
        "frozen_at": version.frozen_at.isoformat(),
        "exports": exports,
    }


@router.get("/evalsets/versions", response=EvalSetVersionPage, auth=READ, url_name="evalset-list", tags=["evalsets"])
def evalset_list(
    request: HttpRequest,
    project: str | None = Query(None, pattern=r"^[-a-zA-Z0-9_]+$", max_length=100),
    cursor: str | None = None,
    limit: int = Limit,
):
    """Frozen eval set versions, oldest first, optionally of one project (admins)."""
    versions = selectors.evalset_version_list_for_admin(user=request.user, project=project)
    rows, next_cursor = keyset_page(versions, cursor=cursor, limit=limit)
    return {"items": [_version_out(v) for v in rows], "next_cursor": next_cursor}


@router.get(
    "/evalsets/versions/{evalset_version_id}",
    response=EvalSetVersionOut,
    auth=READ,
    url_name="evalset-version",
    tags=["evalsets"],
)
def evalset_version(request: HttpRequest, evalset_version_id: int):
    """One frozen version: its hash, counts, provenance mix, agreement, refusals and export layouts (admins)."""
    return _version_out(selectors.evalset_version_get_for_admin(user=request.user, version_id=evalset_version_id))


def _exportable(request: HttpRequest, evalset_version_id: int, layout: str) -> EvalSetVersion:
    version = selectors.evalset_version_get_for_admin(user=request.user, version_id=evalset_version_id)
    reason = layout_unavailable(layout, name=version.name, counts=version.counts)
    if reason:
        raise ApiError(404, reason)
    return version


_MANIFEST_RESPONSE = {
    "responses": {200: {"description": "manifest.json of the export.", "content": {"application/json": {}}}}
}
_JSONL_RESPONSE = {
    "responses": {200: {"description": "One record per line, in the version's order.", "content": {NDJSON: {}}}}
}


@router.get(
    "/evalsets/versions/{evalset_version_id}/export/{layout}",
    auth=READ,
    url_name="evalset-export",
    tags=["evalsets"],
    openapi_extra=_JSONL_RESPONSE,
)
def evalset_export(request: HttpRequest, evalset_version_id: int, layout: LayoutName):
    """A version's records in one layout, streamed as JSONL; byte-identical to the page's and the command's
    download, so its sha256 matches the manifest (admins). A layout the records cannot fill answers 404."""
    version = _exportable(request, evalset_version_id, layout)
    response = StreamingHttpResponse(
        iter_export(selectors.evalset_records_iter(version=version), layout), content_type=NDJSON
    )
    response["Content-Disposition"] = f'attachment; filename="{version.name}.{layout}.jsonl"'
    return response


@router.get(
    "/evalsets/versions/{evalset_version_id}/export/{layout}/manifest",
    auth=READ,
    url_name="evalset-manifest",
    tags=["evalsets"],
    openapi_extra=_MANIFEST_RESPONSE,
)
def evalset_manifest(request: HttpRequest, evalset_version_id: int, layout: LayoutName):
    """manifest.json of one layout's export: the file's sha256, bytes, records and skipped records, the
    version's hash and counts (admins). Computed by streaming the export once, so memory stays flat."""
    version = _exportable(request, evalset_version_id, layout)
    tally = Tally()
    for _ in iter_export(selectors.evalset_records_iter(version=version), layout, tally):
        pass
    body = manifest_bytes(
        version_info=selectors.evalset_version_info(version=version),
        fmt=layout,
        filename=f"{version.name}.{layout}.jsonl",
        tally=tally,
    )
    return HttpResponse(body, content_type="application/json")


# --- contamination checks of training snapshots ---------------------------------------------------------


def _run_out(run: ContaminationCheckRun) -> dict:
    verdict = run.verdict
    return {
        "id": run.pk,
        "snapshot_id": run.snapshot_id,
        "status": run.status,
        "progress": run.progress,
        "message": run.message,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "verdict": None
        if verdict is None
        else {
            "id": verdict.pk,
            "passed": verdict.passed,
            "checked_at": verdict.checked_at.isoformat(),
            "threshold": verdict.threshold,
            "evalset_versions": verdict.evalset_versions,
            "report": verdict.report,
        },
        "status_url": reverse("api:contamination-check", kwargs={"run_id": run.pk}),
    }


@router.post(
    "/training/snapshots/{snapshot_id}/contamination-checks",
    response={202: ContaminationRunOut},
    auth=ADMIN,
    url_name="contamination-check-request",
    tags=["training"],
)
def contamination_check_request(request: HttpRequest, snapshot_id: int, response: HttpResponse):
    """Check a snapshot against every frozen eval set version, on a worker (admins): 202 with a status URL to
    poll. A snapshot trains only once its latest check passed."""
    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    run = services.snapshot_contamination_check_request(snapshot=snapshot, created_by=request.user)
    return accepted(response, _run_out(run))


@router.get(
    "/training/contamination-checks/{run_id}",
    response=ContaminationRunOut,
    auth=READ,
    url_name="contamination-check",
    tags=["training"],
)
def contamination_check(request: HttpRequest, run_id: int):
    """A requested contamination check: its state, and its verdict once it ran (admins)."""
    return _run_out(selectors.contamination_run_get_for_admin(user=request.user, run_id=run_id))
