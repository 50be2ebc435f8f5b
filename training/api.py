"""The training app's API endpoints (mounted at /api/v1/ by ``config/api.py``), admins only, like its pages.

Snapshots are made through the snapshot form and service the page uses, audited by the same audit
request; jobs start the page's way: a preflight on a worker (202, poll its status URL), then the job it
passed is queued (the snapshot's contamination verdict and audit clearance are checked again then).
Contamination checks read eval text, so their endpoints are in ``evalsets/api.py``.
"""

from __future__ import annotations

import mimetypes
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import FileResponse, HttpRequest, HttpResponse
from django.urls import reverse
from ninja import Query, Router, Schema, Status
from pydantic import Field

from annotate.models import Provenance
from annotate.selectors import project_list_for_user
from config.api import ADMIN, MAX_PAGE, READ, ApiError, Text, accepted, django_errors, keyset_page
from training import selectors, services
from training.audits import audit_finding_acknowledge, snapshot_audit_clearance, snapshot_audit_request
from training.config import TrainingConfig
from training.forms import JobForm, SnapshotForm
from training.models import JobProgress, SnapshotAudit, TrainingJob, TrainingPreflight, TrainingSnapshot

router = Router()

Limit = Query(100, ge=1, le=MAX_PAGE, description=f"Rows per page (at most {MAX_PAGE}).")
ProvenanceName = Literal[tuple(Provenance.values)]  # type: ignore[valid-type]
MethodName = Literal[tuple(TrainingJob.Method.values)]  # type: ignore[valid-type]
JobStatusName = Literal[tuple(TrainingJob.Status.values)]  # type: ignore[valid-type]
SlugText = Annotated[str, Field(pattern=r"^[-a-zA-Z0-9_]+$", min_length=1, max_length=100)]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _conflict(exc: ValidationError) -> ApiError:
    """A request the data's state refuses (a job that already ended, a snapshot not cleared to train)."""
    return ApiError(409, " ".join(exc.messages))


def _invalid(exc: ValidationError) -> ApiError:
    detail, errors = django_errors(exc)
    return ApiError(422, detail, errors=errors)


# --- schemas -------------------------------------------------------------------------------------------


class SnapshotCreate(Schema):
    name: Text = Field(min_length=1, max_length=200)
    projects: list[SlugText] = Field(
        min_length=1, max_length=100, description="Slugs of the projects to take data from."
    )
    include_llm_judged: bool = False
    adjudicated_only: bool = False
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    provenances: list[ProvenanceName] = Field(default_factory=list, description="Only these sources (none: all).")
    kinds: list[Literal["gold", "preference", "rubric"]] = Field(default_factory=list)
    rubric_version_id: int | None = Field(default=None, ge=1)
    rubric_min: float | None = Field(default=None, ge=0, le=1)
    decided_from: date | None = None
    decided_until: date | None = None
    exclude_items: list[int] = Field(default_factory=list, max_length=100_000)
    from_snapshot: int | None = Field(default=None, ge=1, description="The snapshot this one is curated from.")
    exclude_findings: list[Text] = Field(
        default_factory=list,
        description="Keys of findings of from_snapshot's latest audit whose examples to leave out.",
    )
    exclude_contaminated: bool = Field(
        default=False, description="Leave out what from_snapshot's latest (failed) contamination check flagged."
    )
    note: Text = Field(default="", max_length=20_000)


class AuditBrief(Schema):
    id: int
    status: str
    message: str
    status_url: str


class CheckBrief(Schema):
    id: int
    passed: bool
    checked_at: str
    evalset_versions: list[dict[str, Any]]
    report: dict[str, Any]


class SnapshotOut(Schema):
    id: int
    name: str
    sha256: str
    sources: list[dict[str, Any]]
    filters: dict[str, Any]
    sft_count: int
    dpo_count: int
    note: str
    created_by: str | None
    created_at: str
    trainable: bool = Field(description="Its latest contamination check passed.")
    untrainable_reason: str
    audit_block: str = Field(description="Why its audit stops jobs ('' when it does not).")
    latest_audit: AuditBrief | None
    latest_check: CheckBrief | None
    audits_url: str
    contamination_checks_url: str


class SnapshotPage(Schema):
    items: list[SnapshotOut]
    next_cursor: str | None = None


class AuditOut(Schema):
    id: int
    snapshot_id: int
    status: str
    progress: float
    message: str
    created_at: str
    finished_at: str | None
    findings: list[dict[str, Any]] = Field(description="Each with its gate and, when blocking, its acknowledgement.")
    gates: dict[str, Any]
    open_blocks: list[str] = Field(description="Keys of blocking findings nobody acknowledged yet.")
    status_url: str


class Acknowledge(Schema):
    finding: Text = Field(min_length=1, max_length=300)
    reason: Text = Field(min_length=1, max_length=20_000)


class AcknowledgementOut(Schema):
    audit_id: int
    finding: str
    reason: str
    by: str
    at: str


class PreflightCreate(Schema):
    snapshot_id: int = Field(ge=1)
    base_model: Text = Field(min_length=1, max_length=500, description="A local directory or a hub id.")
    method: MethodName = "sft"
    config: dict[str, Any] = Field(
        default_factory=dict, description="TrainingConfig fields to change from their defaults (see the job form)."
    )


class PreflightOut(Schema):
    id: int
    snapshot_id: int
    base_model: str
    method: str
    config: dict[str, Any]
    status: str = Field(description="queued, running, succeeded (passed) or failed.")
    progress: float
    message: str
    result: dict[str, Any] = Field(description="{ok, errors, warnings, samples, stats} once it ran.")
    job_id: int | None
    created_at: str
    finished_at: str | None
    status_url: str
    job_url: str = Field(description="POST here to queue the job once the preflight passed.")


class JobOut(Schema):
    id: int
    snapshot_id: int
    base_model: str
    method: str
    config: dict[str, Any]
    status: str
    phase: str
    step: int
    total_steps: int
    percent: int
    epoch: float | None
    loss: float | None
    eta_seconds: int | None
    queue_place: int | None = Field(description="Place in the gpu queue (1 = next) while queued.")
    cancel_requested: bool
    error: str
    log_tail: str
    has_checkpoint: bool
    preflight: dict[str, Any]
    audit: dict[str, Any]
    manifest: dict[str, Any]
    retry_of_id: int | None
    resumes: bool = Field(description="Continues from the last checkpoint of retry_of.")
    created_by: str | None
    created_at: str
    queued_at: str | None
    started_at: str | None
    heartbeat_at: str | None
    finished_at: str | None
    status_url: str
    metrics_url: str
    artifacts_url: str


class JobPage(Schema):
    items: list[JobOut]
    next_cursor: str | None = None


class MetricOut(Schema):
    id: int
    phase: str
    step: int
    total_steps: int
    epoch: float | None
    loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_second: float | None
    reward_margin: float | None
    reward_accuracy: float | None
    created_at: str


class MetricPage(Schema):
    items: list[MetricOut]
    next_cursor: str | None = None


class ArtifactOut(Schema):
    path: str
    bytes: int
    url: str


# --- snapshots -----------------------------------------------------------------------------------------


def _audit_block(snapshot: TrainingSnapshot) -> str:
    try:
        snapshot_audit_clearance(snapshot)
    except ValidationError as exc:
        return " ".join(exc.messages)
    return ""


def _audit_brief(audit: SnapshotAudit | None) -> dict | None:
    if audit is None:
        return None
    url = reverse("api:audit-detail", kwargs={"audit_id": audit.pk})
    return {"id": audit.pk, "status": audit.status, "message": audit.message, "status_url": url}


def _snapshot_out(snapshot: TrainingSnapshot) -> dict:
    check = services.snapshot_latest_check(snapshot)
    args = {"snapshot_id": snapshot.pk}
    return {
        "id": snapshot.pk,
        "name": snapshot.name,
        "sha256": snapshot.sha256,
        "sources": snapshot.sources,
        "filters": snapshot.filters,
        "sft_count": snapshot.sft_count,
        "dpo_count": snapshot.dpo_count,
        "note": snapshot.note,
        "created_by": snapshot.created_by.get_username() if snapshot.created_by_id else None,
        "created_at": snapshot.created_at.isoformat(),
        "trainable": check is not None and check.passed,
        "untrainable_reason": services.snapshot_untrainable_reason(snapshot),
        "audit_block": _audit_block(snapshot),
        "latest_audit": _audit_brief(selectors.snapshot_audit_latest(snapshot)),
        "latest_check": None
        if check is None
        else {
            "id": check.pk,
            "passed": check.passed,
            "checked_at": check.checked_at.isoformat(),
            "evalset_versions": check.evalset_versions,
            "report": check.report,
        },
        "audits_url": reverse("api:snapshot-audit", kwargs=args),
        "contamination_checks_url": reverse("api:contamination-check-request", kwargs=args),
    }


@router.get("/training/snapshots", response=SnapshotPage, auth=READ, url_name="snapshot-list", tags=["training"])
def snapshot_list(request: HttpRequest, cursor: str | None = None, limit: int = Limit):
    """Training snapshots, oldest first, with their audit and contamination state (admins)."""
    snapshots = selectors.snapshot_list_for_admin(user=request.user).select_related("created_by")
    rows, next_cursor = keyset_page(snapshots, cursor=cursor, limit=limit)
    return {"items": [_snapshot_out(s) for s in rows], "next_cursor": next_cursor}


def _snapshot_form_data(payload: SnapshotCreate, projects: list) -> dict:
    data: dict[str, Any] = {
        "name": payload.name,
        "projects": [p.pk for p in projects],
        "include_llm_judged": payload.include_llm_judged,
        "adjudicated_only": payload.adjudicated_only,
        "provenances": list(payload.provenances),
        "kinds": list(payload.kinds),
        "exclude_findings": list(payload.exclude_findings),
        "exclude_contaminated": payload.exclude_contaminated,
        "exclude_items": ",".join(str(i) for i in payload.exclude_items),
        "note": payload.note,
    }
    optional = {
        "min_agreement": payload.min_agreement,
        "rubric_version": payload.rubric_version_id,
        "rubric_min": payload.rubric_min,
        "decided_from": payload.decided_from,
        "decided_until": payload.decided_until,
        "from_snapshot": payload.from_snapshot,
    }
    data.update({k: v for k, v in optional.items() if v is not None})
    return data


@router.post(
    "/training/snapshots", response={201: SnapshotOut}, auth=ADMIN, url_name="snapshot-create", tags=["training"]
)
def snapshot_create(request: HttpRequest, payload: SnapshotCreate):
    """Freeze approved train-split data of the projects into a snapshot, with the page's filters and exclusions
    (admins); its audit runs at once when it is small, else on a worker (see latest_audit)."""
    selectors.require_admin(request.user)
    found = {p.slug: p for p in project_list_for_user(user=request.user).filter(slug__in=payload.projects)}
    missing = [slug for slug in payload.projects if slug not in found]
    if missing:
        raise ApiError(
            422,
            f"No such project: {', '.join(missing)}.",
            errors=[{"in": "body", "field": "projects", "message": f"no project {slug!r}"} for slug in missing],
        )
    base = audit = check = None
    if payload.from_snapshot is not None:
        base = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=payload.from_snapshot)
        audit, check = selectors.snapshot_audit_latest(base), services.snapshot_latest_check(base)
    form = SnapshotForm(_snapshot_form_data(payload, list(found.values())), audit=audit, check=check)
    unknown = [f for f in ("exclude_findings", "exclude_contaminated") if getattr(payload, f) and f not in form.fields]
    if not form.is_valid() or unknown:
        errors = [
            {"in": "body", "field": "" if field == "__all__" else field, "message": str(m)}
            for field, messages in form.errors.items()
            for m in messages
        ]
        errors += [
            {"in": "body", "field": f, "message": "from_snapshot has nothing of this kind to leave out"}
            for f in unknown
        ]
        raise ApiError(422, " ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    try:
        snapshot = services.snapshot_create(
            name=form.cleaned_data["name"],
            projects=list(form.cleaned_data["projects"]),
            created_by=request.user,
            filters=form.filters(),
            note=form.cleaned_data["note"],
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    return Status(201, _snapshot_out(snapshot))


@router.get(
    "/training/snapshots/{snapshot_id}", response=SnapshotOut, auth=READ, url_name="snapshot-detail", tags=["training"]
)
def snapshot_detail(request: HttpRequest, snapshot_id: int):
    """One snapshot: counts, filters, whether it may be trained on, and why not (admins)."""
    return _snapshot_out(selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id))


# --- audits --------------------------------------------------------------------------------------------


def _audit_out(audit: SnapshotAudit) -> dict:
    acks = selectors.audit_acknowledgements(audit)
    findings = []
    for finding in audit.findings:
        ack = acks.get(finding.get("key"))
        findings.append(
            {
                **finding,
                "acknowledgement": None
                if ack is None
                else {"reason": ack.reason, "by": ack.acknowledged_by.get_username(), "at": ack.acknowledged_at},
            }
        )
    return {
        "id": audit.pk,
        "snapshot_id": audit.snapshot_id,
        "status": audit.status,
        "progress": audit.progress,
        "message": audit.message,
        "created_at": audit.created_at.isoformat(),
        "finished_at": _iso(audit.finished_at),
        "findings": findings,
        "gates": audit.gates,
        "open_blocks": [f["key"] for f in audit.blocking if f["key"] not in acks],
        "status_url": reverse("api:audit-detail", kwargs={"audit_id": audit.pk}),
    }


@router.post(
    "/training/snapshots/{snapshot_id}/audits",
    response={201: AuditOut, 202: AuditOut},
    auth=ADMIN,
    url_name="snapshot-audit",
    tags=["training"],
)
def snapshot_audit(request: HttpRequest, snapshot_id: int, response: HttpResponse):
    """Audit the snapshot again (admins): 201 when it ran during the request (small snapshots), 202 with a
    status URL while a worker runs it."""
    snapshot = selectors.snapshot_get_for_admin(user=request.user, snapshot_id=snapshot_id)
    audit = snapshot_audit_request(snapshot=snapshot, created_by=request.user)
    return accepted(response, _audit_out(audit), finished=audit.is_finished)


@router.get("/training/audits/{audit_id}", response=AuditOut, auth=READ, url_name="audit-detail", tags=["training"])
def audit_detail(request: HttpRequest, audit_id: int):
    """An audit's state and, once it ran, its findings with their gates and acknowledgements (admins)."""
    return _audit_out(selectors.audit_get_for_admin(user=request.user, audit_id=audit_id))


@router.post(
    "/training/audits/{audit_id}/acknowledgements",
    response={201: AcknowledgementOut},
    auth=ADMIN,
    url_name="audit-acknowledge",
    tags=["training"],
)
def audit_acknowledge(request: HttpRequest, audit_id: int, payload: Acknowledge):
    """Acknowledge one blocking finding with a reason, kept in every job's record and manifest (admins)."""
    audit = selectors.audit_get_for_admin(user=request.user, audit_id=audit_id)
    if audit.status != SnapshotAudit.Status.SUCCEEDED:
        raise ApiError(409, f"Audit {audit.pk} is {audit.status}: acknowledge findings once it has succeeded.")
    try:
        ack = audit_finding_acknowledge(
            audit=audit, finding_key=payload.finding, reason=payload.reason, acknowledged_by=request.user
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    return Status(
        201,
        {
            "audit_id": audit.pk,
            "finding": ack.finding_key,
            "reason": ack.reason,
            "by": request.user.get_username(),
            "at": ack.acknowledged_at.isoformat(),
        },
    )


# --- preflights and jobs -------------------------------------------------------------------------------


def _preflight_out(preflight: TrainingPreflight) -> dict:
    args = {"preflight_id": preflight.pk}
    return {
        "id": preflight.pk,
        "snapshot_id": preflight.snapshot_id,
        "base_model": preflight.base_model,
        "method": preflight.method,
        "config": preflight.config,
        "status": preflight.status,
        "progress": preflight.progress,
        "message": preflight.message,
        "result": preflight.result,
        "job_id": preflight.job_id,
        "created_at": preflight.created_at.isoformat(),
        "finished_at": _iso(preflight.finished_at),
        "status_url": reverse("api:preflight-detail", kwargs=args),
        "job_url": reverse("api:preflight-job", kwargs=args),
    }


def _form_value(value: Any) -> Any:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else value


def _job_form(payload: PreflightCreate) -> JobForm:
    """The page's job form, filled from the request: the same checks, the same config the page would store."""
    known = {f.name for f in JobForm.CONFIG_FIELDS}
    unknown = sorted(set(payload.config) - known)
    if unknown:
        raise ApiError(
            422,
            f"Unknown config field(s) {', '.join(unknown)}: known fields are {', '.join(sorted(known))}.",
            errors=[{"in": "body", "field": f"config.{name}", "message": "is not a config field"} for name in unknown],
        )
    defaults = TrainingConfig().to_dict()
    data = {name: _form_value(payload.config.get(name, defaults[name])) for name in known}
    # An unticked checkbox is a missing key, as a browser sends it.
    data = {name: value for name, value in data.items() if value is not False}
    data.update(snapshot=payload.snapshot_id, base_model=payload.base_model, method=payload.method)
    return JobForm(data)


@router.post(
    "/training/preflights",
    response={202: PreflightOut},
    auth=ADMIN,
    url_name="preflight-create",
    tags=["training"],
)
def preflight_create(request: HttpRequest, payload: PreflightCreate, response: HttpResponse):
    """Check a job's config against its base model and snapshot on a worker, the page's first step (admins):
    202 with a status URL. Once it passed, POST its job_url to queue the job. Refused (409) while the snapshot
    has not passed its contamination check or its audit blocks it."""
    selectors.require_admin(request.user)
    form = _job_form(payload)
    if not form.is_valid():
        errors = [
            {
                "in": "body",
                "field": field if field in ("snapshot_id", "base_model", "method") else f"config.{field}",
                "message": str(m),
            }
            for field, messages in form.errors.items()
            for m in messages
        ]
        for error in errors:
            if error["field"] == "config.snapshot":
                error["field"] = "snapshot_id"
        if any(e["field"] == "snapshot_id" for e in errors):
            raise ApiError(404, f"No snapshot {payload.snapshot_id}.")
        raise ApiError(422, " ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
    try:
        preflight = services.training_preflight_request(
            snapshot=form.cleaned_data["snapshot"],
            base_model=form.cleaned_data["base_model"],
            method=form.cleaned_data["method"],
            config=form.config_dict(),
            created_by=request.user,
        )
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            raise _invalid(exc) from None
        raise _conflict(exc) from None
    return accepted(response, _preflight_out(preflight))


@router.get(
    "/training/preflights/{preflight_id}",
    response=PreflightOut,
    auth=READ,
    url_name="preflight-detail",
    tags=["training"],
)
def preflight_detail(request: HttpRequest, preflight_id: int):
    """A preflight's state and, once it ran, what it found (admins)."""
    return _preflight_out(selectors.preflight_get_for_admin(user=request.user, preflight_id=preflight_id))


def _job_out(job: TrainingJob) -> dict:
    args = {"job_id": job.pk}
    rows = list(job.progress.filter(phase=job.phase).order_by("id")) if job.status == TrainingJob.Status.RUNNING else []
    eta = selectors.job_eta(job, rows)
    percent = round(100 * job.step / job.total_steps) if job.total_steps else (100 if job.status == "succeeded" else 0)
    return {
        **{
            name: getattr(job, name)
            for name in ("id", "snapshot_id", "base_model", "method", "config", "status", "phase", "step")
        },
        **{
            name: getattr(job, name)
            for name in ("total_steps", "epoch", "loss", "cancel_requested", "error", "log_tail", "preflight", "audit")
        },
        "percent": min(100, percent),
        "eta_seconds": int(eta.total_seconds()) if eta is not None else None,
        "queue_place": getattr(job, "queue_place", None),
        "has_checkpoint": bool(job.last_checkpoint),
        "manifest": job.manifest,
        "retry_of_id": job.retry_of_id,
        "resumes": bool(job.resume_from),
        "created_by": job.created_by.get_username() if job.created_by_id else None,
        "created_at": job.created_at.isoformat(),
        **{name: _iso(getattr(job, name)) for name in ("queued_at", "started_at", "heartbeat_at", "finished_at")},
        "status_url": reverse("api:job-detail", kwargs=args),
        "metrics_url": reverse("api:job-metrics", kwargs=args),
        "artifacts_url": reverse("api:job-artifacts", kwargs=args),
    }


@router.post(
    "/training/preflights/{preflight_id}/job",
    response={201: JobOut},
    auth=ADMIN,
    url_name="preflight-job",
    tags=["training"],
)
def preflight_job(request: HttpRequest, preflight_id: int):
    """Queue the job a passed preflight checked, on the gpu queue (admins); 409 while the preflight has not
    passed, when its job was queued already, or when the snapshot is no longer cleared to train."""
    preflight = selectors.preflight_get_for_admin(user=request.user, preflight_id=preflight_id)
    try:
        job = services.training_job_create(preflight=preflight, created_by=request.user)
    except ValidationError as exc:
        raise _conflict(exc) from None
    return Status(201, _job_out(selectors.job_get_for_admin(user=request.user, job_id=job.pk)))


@router.get("/training/jobs", response=JobPage, auth=READ, url_name="job-list", tags=["training"])
def job_list(request: HttpRequest, status: JobStatusName | None = None, cursor: str | None = None, limit: int = Limit):
    """Training jobs, oldest first, optionally in one state (admins)."""
    selectors.require_admin(request.user)
    jobs = TrainingJob.objects.select_related("created_by")
    if status:
        jobs = jobs.filter(status=status)
    rows, next_cursor = keyset_page(jobs, cursor=cursor, limit=limit)
    places = selectors.queue_positions()
    for job in rows:
        job.queue_place = places.get(job.pk)
    return {"items": [_job_out(job) for job in rows], "next_cursor": next_cursor}


@router.get("/training/jobs/{job_id}", response=JobOut, auth=READ, url_name="job-detail", tags=["training"])
def job_detail(request: HttpRequest, job_id: int):
    """A job's state: phase, step, loss, time left, its place in the queue, the error when it failed (admins)."""
    return _job_out(selectors.job_get_for_admin(user=request.user, job_id=job_id))


@router.get(
    "/training/jobs/{job_id}/metrics", response=MetricPage, auth=READ, url_name="job-metrics", tags=["training"]
)
def job_metrics(request: HttpRequest, job_id: int, cursor: str | None = None, limit: int = Limit):
    """Every logged step of a job (loss, learning rate, DPO reward margins), oldest first (admins)."""
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    rows, next_cursor = keyset_page(JobProgress.objects.filter(job=job), cursor=cursor, limit=limit)
    fields = [f.name for f in JobProgress._meta.fields if f.name not in ("job", "created_at")]
    items = [{**{name: getattr(r, name) for name in fields}, "created_at": r.created_at.isoformat()} for r in rows]
    return {"items": items, "next_cursor": next_cursor}


def _act(request: HttpRequest, job_id: int, action, status: int):
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    try:
        result = action(job)
    except ValidationError as exc:
        raise _conflict(exc) from None
    return Status(status, _job_out(selectors.job_get_for_admin(user=request.user, job_id=result.pk)))


@router.post(
    "/training/jobs/{job_id}/cancel", response={200: JobOut}, auth=ADMIN, url_name="job-cancel", tags=["training"]
)
def job_cancel(request: HttpRequest, job_id: int):
    """Cancel a queued job now, or ask a running one to stop at its next step, keeping its checkpoint (admins)."""
    return _act(request, job_id, lambda job: services.training_job_cancel(job=job), 200)


@router.post(
    "/training/jobs/{job_id}/retry", response={201: JobOut}, auth=ADMIN, url_name="job-retry", tags=["training"]
)
def job_retry(request: HttpRequest, job_id: int):
    """Queue a fresh job with a failed or cancelled job's snapshot, base model and config (admins)."""
    return _act(request, job_id, lambda job: services.training_job_retry(job=job, created_by=request.user), 201)


@router.post(
    "/training/jobs/{job_id}/resume", response={201: JobOut}, auth=ADMIN, url_name="job-resume", tags=["training"]
)
def job_resume(request: HttpRequest, job_id: int):
    """Queue a job that continues from a failed or cancelled job's last checkpoint (admins)."""
    return _act(request, job_id, lambda job: services.training_job_resume(job=job, created_by=request.user), 201)


# --- artifacts -----------------------------------------------------------------------------------------


_FILE_RESPONSE = {
    "responses": {200: {"description": "The file, streamed.", "content": {"application/octet-stream": {}}}}
}


def _adapter_dir(job: TrainingJob) -> Path:
    """The job's adapter folder (weights, tokenizer, manifest.json), which must lie under ARTIFACTS_DIR."""
    root = Path(settings.ARTIFACTS_DIR).resolve()
    adapter = (Path(job.output_dir) / "adapter").resolve() if job.output_dir else None
    if adapter is None or not adapter.is_dir() or root not in adapter.parents:
        raise ApiError(404, f"Job {job.pk} has no adapter to download ({job.status}): only a finished job has one.")
    return adapter


@router.get(
    "/training/jobs/{job_id}/artifacts",
    response=list[ArtifactOut],
    auth=READ,
    url_name="job-artifacts",
    tags=["training"],
)
def job_artifacts(request: HttpRequest, job_id: int):
    """The files of a job's adapter (weights, tokenizer, manifest.json), each with its download URL (admins)."""
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    adapter = _adapter_dir(job)
    out = []
    for path in sorted(adapter.rglob("*")):
        if path.is_file() and not path.is_symlink():
            relative = path.relative_to(adapter).as_posix()
            url = reverse("api:job-artifact", kwargs={"job_id": job.pk, "path": relative})
            out.append({"path": relative, "bytes": path.stat().st_size, "url": url})
    return out


@router.get(
    "/training/jobs/{job_id}/artifacts/{path:path}",
    auth=READ,
    url_name="job-artifact",
    tags=["training"],
    openapi_extra=_FILE_RESPONSE,
)
def job_artifact(request: HttpRequest, job_id: int, path: str):
    """One file of a job's adapter, streamed (admins). Only files inside the adapter folder: a path that
    climbs out of it, or a link, answers 404."""
    job = selectors.job_get_for_admin(user=request.user, job_id=job_id)
    adapter = _adapter_dir(job)
    parts = Path(path).parts
    candidate = adapter.joinpath(*parts) if parts and not Path(path).is_absolute() else None
    if (
        candidate is None
        or ".." in parts
        or "\x00" in path
        or candidate.is_symlink()
        or adapter not in candidate.resolve().parents
        or not candidate.is_file()
    ):
        raise ApiError(404, f"Job {job.pk}'s adapter has no file {path!r}: list them at its artifacts URL.")
    content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
    # FileResponse streams the file in blocks: a multi-GB safetensors never sits in memory.
    response = FileResponse(candidate.open("rb"), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{candidate.name}"'
    return response
