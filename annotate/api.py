"""The annotate app's API endpoints (mounted at /api/v1/ by ``config/api.py``).

Each endpoint parses its input into a schema (``annotate/schemas.py``), fetches through a selector that
checks permission the way the pages do, calls one service, and shapes the answer. Reviewer submissions go
through the same task form as the queue page (responses named by display position), so the API accepts
exactly what the page accepts.
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from ninja import File, Form, Query, Router, Status
from ninja.files import UploadedFile

from annotate import exports, roles, selectors
from annotate.forms import task_form
from annotate.models import AgreementReport, ImportBatch, Lease, Project, RubricVersion, TaskKind
from annotate.schemas import (
    Answer,
    ImportFormatName,
    ImportModeName,
    ImportOptions,
    ImportOut,
    ImportPage,
    ItemPage,
    ItemStateName,
    Me,
    MemberOut,
    MemberRemoved,
    MemberSet,
    ProjectCreate,
    ProjectOut,
    ProjectPage,
    ProjectUpdate,
    ProvenanceName,
    QueueOut,
    ReportOut,
    RubricOut,
    RubricVersionOut,
    Skipped,
    SplitName,
    Submitted,
    TaskKindName,
)
from annotate.services import annotations as annotation_services
from annotate.services import imports as import_services
from annotate.services import projects as project_services
from annotate.services import queue as queue_services
from annotate.services.reports import agreement_report_request
from config import uploads
from config.api import ADMIN, MAX_PAGE, READ, WRITE, ApiError, accepted, django_errors, keyset_page

router = Router()

NDJSON = "application/x-ndjson"
Limit = Query(100, ge=1, le=MAX_PAGE, description=f"Rows per page (at most {MAX_PAGE}).")


@router.get("/me", response=Me, auth=READ, url_name="me", tags=["me"])
def me(request: HttpRequest):
    """Who the credential acts as: the user, their roles and the credential's scope."""
    token = getattr(request, "api_token", None)
    return {
        "username": request.user.get_username(),
        "roles": selectors.user_roles(user=request.user),
        "scope": token.scope if token is not None else "admin",
    }


# --- projects --------------------------------------------------------------------------------------------


@router.get("/projects", response=ProjectPage, auth=READ, url_name="project-list", tags=["projects"])
def project_list(request: HttpRequest, cursor: str | None = None, limit: int = Limit):
    """The projects you may see: all for admins, the ones you are a member of otherwise."""
    rows, next_cursor = keyset_page(selectors.project_list_for_user(user=request.user), cursor=cursor, limit=limit)
    return {"items": rows, "next_cursor": next_cursor}


@router.post("/projects", response={201: ProjectOut}, auth=ADMIN, url_name="project-create", tags=["projects"])
def project_create(request: HttpRequest, payload: ProjectCreate):
    """Make a project (admins). You become its first member."""
    if not roles.is_admin(request.user):
        raise ApiError(403, "Only admins can make projects.")
    fields = payload.model_dump(exclude_none=True)
    project = project_services.project_create(created_by=request.user, **fields)
    return Status(201, project)


@router.get("/projects/{slug}", response=ProjectOut, auth=READ, url_name="project-detail", tags=["projects"])
def project_detail(request: HttpRequest, slug: str):
    """One project you may see."""
    return selectors.project_get_for_user(user=request.user, slug=slug)


@router.patch("/projects/{slug}", response=ProjectOut, auth=ADMIN, url_name="project-update", tags=["projects"])
def project_update(request: HttpRequest, slug: str, payload: ProjectUpdate):
    """Change a project's settings (admins). The split's seed and eval share never change once set."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    return project_services.project_update(project=project, **payload.model_dump(exclude_unset=True, exclude_none=True))


@router.get("/projects/{slug}/members", response=list[MemberOut], auth=READ, url_name="member-list", tags=["projects"])
def member_list(request: HttpRequest, slug: str):
    """A project's members and their roles (admins)."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    return [
        {"username": m.get_username(), "roles": r} for m, r in selectors.project_members_with_roles(project=project)
    ]


@router.put(
    "/projects/{slug}/members/{username}", response=MemberOut, auth=ADMIN, url_name="member-set", tags=["projects"]
)
def member_set(request: HttpRequest, slug: str, username: str, payload: MemberSet):
    """Add someone to a project, optionally setting their reviewing role (site-wide) (admins)."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    user = selectors.user_by_username(username=username)
    project_services.project_member_set(project=project, user=user, role=payload.role, by=request.user)
    return {"username": user.get_username(), "roles": selectors.user_roles(user=user)}


@router.delete(
    "/projects/{slug}/members/{username}",
    response=MemberRemoved,
    auth=ADMIN,
    url_name="member-remove",
    tags=["projects"],
)
def member_remove(request: HttpRequest, slug: str, username: str):
    """Take someone off a project; their unfinished items go back to the queue, their annotations stay (admins)."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    user = selectors.user_by_username(username=username)
    ended = project_services.project_member_remove(project=project, user=user, by=request.user)
    return {"username": user.get_username(), "leases_ended": ended}


# --- items and imports ---------------------------------------------------------------------------------


def _item_out(item, sees_state: bool) -> dict:
    out = {
        "id": item.pk,
        "kind": item.kind,
        "split": item.split,
        "provenance": item.provenance,
        "prompt": item.prompt,
        "response_count": len(item.responses or []),
        "created_at": item.created_at,
    }
    if sees_state:
        result = getattr(item, "result", None) if hasattr(item, "result") else None
        out.update(
            state=result.status if result is not None else "unreviewed",
            messages=item.messages,
            responses=item.responses,
            metadata=item.metadata,
            review_count=item.review_count,
            import_batch_id=item.import_batch_id,
            source_line=item.source_line,
        )
    return out


@router.get("/projects/{slug}/items", response=ItemPage, auth=READ, url_name="item-list", tags=["items"])
def item_list(
    request: HttpRequest,
    slug: str,
    split: SplitName | None = None,
    kind: TaskKindName | None = None,
    provenance: ProvenanceName | None = None,
    state: ItemStateName | None = None,
    import_batch: int | None = None,
    cursor: str | None = None,
    limit: int = Limit,
):
    """A project's items in id order, filtered. Admins and adjudicators also get each item's state, responses
    (with their model labels) and metadata; reviewers get what their items page shows."""
    _, items, sees_state = selectors.item_browse_for_user(
        user=request.user,
        slug=slug,
        split=split or "",
        kind=kind or "",
        provenance=provenance or "",
        state=state or "",
        import_batch_id=import_batch,
    )
    rows, next_cursor = keyset_page(items, cursor=cursor, limit=limit)
    return {"items": [_item_out(item, sees_state) for item in rows], "next_cursor": next_cursor}


def _import_out(batch: ImportBatch) -> dict:
    errors = [e for e in batch.errors if e.get("kind") != "duplicate"]
    duplicates = [
        {"line": e.get("line"), "message": e.get("message", "")} for e in batch.errors if e.get("kind") == "duplicate"
    ]
    args = {"slug": batch.project.slug, "batch_id": batch.pk}
    plain = ("status", "filename", "file_format", "mode", "provenance", "bytes_total", "bytes_read", "rows_seen")
    counts = ("rows_imported", "rows_rejected", "duplicates", "message", "created_at", "finished_at")
    return {
        **{name: getattr(batch, name) for name in plain + counts},
        "id": batch.pk,
        "errors": errors,
        "duplicate_rows": duplicates,
        "status_url": reverse("api:import-detail", kwargs=args),
        "errors_url": reverse("api:import-errors", kwargs=args),
    }


def _import_response(response: HttpResponse, batch: ImportBatch):
    return accepted(response, _import_out(batch), finished=batch.is_finished, retry_after=1)


def _submit_import(request, project, *, upload, filename: str, file_format: str, mode: str, provenance: str):
    try:
        return import_services.import_batch_submit(
            project=project,
            uploaded_by=request.user,
            upload=upload,
            filename=filename,
            file_format=file_format,
            mode=mode,
            provenance=provenance,
        )
    except ValueError as exc:  # the format could not be told from the file name
        raise ApiError(422, str(exc), errors=[{"in": "query", "field": "file_format", "message": str(exc)}]) from None
    except ValidationError as exc:
        if uploads.too_big_message() in exc.messages:
            raise ApiError(413, uploads.too_big_message()) from None
        detail, errors = django_errors(exc, where="query")
        raise ApiError(422, detail, errors=errors) from None


_IMPORT_RESPONSES = {201: ImportOut, 202: ImportOut}


@router.post(
    "/projects/{slug}/imports",
    response=_IMPORT_RESPONSES,
    auth=ADMIN,
    url_name="import-upload",
    tags=["items"],
)
def import_upload(
    request: HttpRequest,
    slug: str,
    response: HttpResponse,
    file: UploadedFile = File(...),
    options: ImportOptions = Form(...),
):
    """Import a JSONL or CSV file (multipart upload) through the import service the page and the command use
    (admins). 201 when it ran during the request; 202 with a status URL when the worker runs it
    (uploads over GOLDSET_IMPORT_INLINE_MAX_BYTES)."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    batch = _submit_import(
        request,
        project,
        upload=file,
        filename=file.name or "upload",
        file_format=options.file_format or "",
        mode=options.mode,
        provenance=options.provenance,
    )
    return _import_response(response, batch)


_ROWS_BODY = {
    "requestBody": {
        "required": True,
        "description": "The rows: JSONL (one JSON object per line) or CSV with a header, streamed.",
        "content": {
            NDJSON: {"schema": {"type": "string", "format": "binary"}},
            "text/csv": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/projects/{slug}/imports/rows",
    response=_IMPORT_RESPONSES,
    auth=ADMIN,
    url_name="import-rows",
    tags=["items"],
    openapi_extra=_ROWS_BODY,
)
def import_rows(
    request: HttpRequest,
    slug: str,
    response: HttpResponse,
    file_format: ImportFormatName | None = None,
    mode: ImportModeName = ImportBatch.Mode.ALL_OR_NOTHING,
    provenance: ProvenanceName = "human",
    filename: str | None = Query(None, max_length=255),
):
    """Import rows sent as the request body (JSONL or CSV), read as a stream and never held in memory, through
    the same import service (admins). The format comes from ``file_format``, else the Content-Type
    (``application/x-ndjson`` or ``text/csv``)."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > uploads.max_bytes():
        raise ApiError(413, uploads.too_big_message())
    content_type = request.content_type or ""
    fmt = file_format or ("csv" if content_type == "text/csv" else "jsonl" if "json" in content_type else "")
    if not fmt:
        raise ApiError(
            422,
            "Say what the rows are: file_format=jsonl or csv, or Content-Type application/x-ndjson or text/csv.",
            errors=[{"in": "query", "field": "file_format", "message": "is missing"}],
        )
    batch = _submit_import(
        request,
        project,
        upload=request,
        filename=filename or f"rows.{fmt}",
        file_format=fmt,
        mode=mode,
        provenance=provenance,
    )
    return _import_response(response, batch)


@router.get("/projects/{slug}/imports", response=ImportPage, auth=READ, url_name="import-list", tags=["items"])
def import_list(request: HttpRequest, slug: str, cursor: str | None = None, limit: int = Limit):
    """A project's imports, oldest first (admins)."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    rows, next_cursor = keyset_page(selectors.import_batches_of(project=project), cursor=cursor, limit=limit)
    return {"items": [_import_out(b) for b in rows], "next_cursor": next_cursor}


@router.get(
    "/projects/{slug}/imports/{batch_id}", response=ImportOut, auth=READ, url_name="import-detail", tags=["items"]
)
def import_detail(request: HttpRequest, slug: str, batch_id: int):
    """An import's state: counts, the first errors, duplicates, the split (in ``message``) (admins)."""
    return _import_out(selectors.import_batch_get_for_admin(user=request.user, slug=slug, batch_id=batch_id))


@router.get(
    "/projects/{slug}/imports/{batch_id}/errors",
    auth=READ,
    url_name="import-errors",
    tags=["items"],
    openapi_extra={
        "responses": {200: {"description": "One {line, field, message} per line.", "content": {NDJSON: {}}}}
    },
)
def import_errors(request: HttpRequest, slug: str, batch_id: int):
    """Every rejected row of an import, streamed as JSONL {line, field, message} (admins)."""
    batch = selectors.import_batch_get_for_admin(user=request.user, slug=slug, batch_id=batch_id)
    return StreamingHttpResponse(
        exports.jsonl_chunks(selectors.import_batch_errors_iter(batch=batch)), content_type=NDJSON
    )


# --- queue ---------------------------------------------------------------------------------------------


def _rubric_for(project: Project) -> RubricVersion | None:
    if TaskKind.RUBRIC not in (project.task_kinds or []):
        return None
    return selectors.rubric_version_active(project=project)


def _task(project: Project, lease: Lease, rubric: RubricVersion | None) -> dict:
    """One leased item as its reviewer sees it. Blind: the item's text and this reviewer's display order only;
    never a model label, a response index, metadata or anyone else's annotation."""
    item = lease.item
    form = task_form(
        item, display_order=lease.display_order, rubric_version=rubric if item.kind == TaskKind.RUBRIC else None
    )
    responses = item.responses or []
    shown = [
        {"position": pos, "text": str(responses[index].get("text", ""))}
        for pos, index in enumerate(form.display_order, start=1)
    ]
    scored = None
    if item.kind == TaskKind.RUBRIC and item.scored_response_index is not None:
        scored = form.display_order.index(item.scored_response_index) + 1
    messages = None
    if isinstance(item.messages, list):
        messages = [{"role": str(t.get("role", "")), "content": str(t.get("content", ""))} for t in item.messages]
    args = {"slug": project.slug, "lease_id": lease.pk}
    return {
        "lease_id": lease.pk,
        "item_id": item.pk,
        "kind": item.kind,
        "prompt": item.prompt,
        "messages": messages,
        "responses": shown,
        "scored_position": scored,
        "rubric": {"version_id": rubric.pk, "criteria": rubric.criteria}
        if item.kind == TaskKind.RUBRIC and rubric is not None
        else None,
        "expires_at": lease.expires_at,
        "submit_url": reverse("api:queue-submit", kwargs=args),
        "skip_url": reverse("api:queue-skip", kwargs=args),
    }


def _next_task(project: Project, user, active=None) -> tuple[dict | None, str]:
    """The reviewer's current item (leasing one if they hold none), and why there is none when so."""
    leases = queue_services.lease_fill_for_reviewer(project=project, reviewer=user, depth=1, active=active)
    if leases:
        return _task(project, leases[0], _rubric_for(project)), ""
    blocked = selectors.queue_blocked_reason(project=project)
    return None, " ".join(filter(None, ["Nothing is left for you to review in this project right now.", blocked]))


@router.post("/projects/{slug}/queue/next", response=QueueOut, auth=WRITE, url_name="queue-next", tags=["queue"])
def queue_next(request: HttpRequest, slug: str):
    """Your current item, leased to you (the same item until you submit or skip it, or the lease expires);
    ``task`` is null when nothing is left for you."""
    project, active = selectors.project_and_queue_for_user(user=request.user, slug=slug)
    task, detail = _next_task(project, request.user, active)
    return {"task": task, "detail": detail}


def _form_data(answer: Answer) -> dict[str, str]:
    data = {}
    for name in ("action", "answer", "reason", "choice", "strength", "rationale", "source", "worst", "duration_ms"):
        value = getattr(answer, name)
        if value is not None:
            data[name] = str(value)
    for key, value in (answer.scores or {}).items():
        data[f"score-{key}"] = str(value)
    return data


def _form_errors(form) -> list[dict]:
    errors = []
    for field, messages in form.errors.items():
        name = f"scores.{field[len('score-') :]}" if field.startswith("score-") else "" if field == "__all__" else field
        errors += [{"in": "body", "field": name, "message": str(m)} for m in messages]
    return errors


@router.post(
    "/projects/{slug}/queue/leases/{lease_id}/submit",
    response=Submitted,
    auth=WRITE,
    url_name="queue-submit",
    tags=["queue"],
)
def queue_submit(request: HttpRequest, slug: str, lease_id: int, payload: Answer, next: bool = True):
    """Submit your answer to a leased item, validated by the queue page's task form; with ``next`` (default)
    the answer carries your next item."""
    project, lease = selectors.project_and_lease_for_user(user=request.user, slug=slug, lease_id=lease_id)
    rubric = selectors.rubric_version_active(project=project) if lease.item.kind == TaskKind.RUBRIC else None
    form = task_form(lease.item, _form_data(payload), display_order=lease.display_order, rubric_version=rubric)
    if not form.is_valid():
        errors = _form_errors(form)
        raise ApiError(422, " ".join(e["message"] for e in errors) or "The answer is invalid.", errors=errors)
    try:
        annotation, _ = annotation_services.annotation_submit(
            project=project,
            lease_id=lease.pk,
            reviewer=request.user,
            payload=form.payload,
            rubric_version=rubric,
            duration_ms=form.cleaned_data["duration_ms"],
        )
    except Lease.DoesNotExist:
        raise ApiError(404, "No such item in your queue.") from None
    except ValidationError as exc:
        raise ApiError(409, " ".join(exc.messages)) from None
    task, detail = _next_task(project, request.user) if next else (None, "")
    return {"item_id": annotation.item_id, "revision": annotation.revision, "next": task, "detail": detail}


@router.post(
    "/projects/{slug}/queue/leases/{lease_id}/skip",
    response=Skipped,
    auth=WRITE,
    url_name="queue-skip",
    tags=["queue"],
)
def queue_skip(request: HttpRequest, slug: str, lease_id: int, next: bool = True):
    """Put a leased item back: it comes back to you after everything else. With ``next`` (default) the answer
    carries your next item."""
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    lease = selectors.lease_get_for_reviewer(user=request.user, project=project, lease_id=lease_id)
    try:
        queue_services.lease_skip(lease_id=lease.pk, reviewer=request.user)
    except ValidationError as exc:
        raise ApiError(409, " ".join(exc.messages)) from None
    task, detail = _next_task(project, request.user) if next else (None, "")
    return {"lease_id": lease.pk, "next": task, "detail": detail}


# --- annotations export, agreement report, rubrics ---------------------------------------------------------


@router.get(
    "/projects/{slug}/annotations/export",
    auth=READ,
    url_name="annotation-export",
    tags=["annotations"],
    openapi_extra={
        "responses": {200: {"description": "One item per line, with every annotation.", "content": {NDJSON: {}}}}
    },
)
def annotation_export(
    request: HttpRequest,
    slug: str,
    kind: list[TaskKindName] = Query(None),
    state: list[ItemStateName] = Query(None),
    split: list[SplitName] = Query(None),
    since: datetime | None = None,
    until: datetime | None = None,
):
    """Every item with every reviewer's annotation (and its revisions), the consensus result and adjudications,
    streamed as JSONL in item id order (admins). ``since``/``until`` filter on when the item's result last
    changed; ``kind``, ``state`` and ``split`` may repeat."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    filters = exports.ExportFilter(
        kinds=tuple(kind or ()), states=tuple(state or ()), splits=tuple(split or ()), since=since, until=until
    )
    response = StreamingHttpResponse(exports.export_jsonl(project=project, filters=filters), content_type=NDJSON)
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-annotations.jsonl"'
    return response


def _version_param(project: Project, version_id: int | None) -> RubricVersion | None:
    return selectors.rubric_version_get(project=project, version_id=version_id) if version_id is not None else None


def _report_out(project: Project, version: RubricVersion | None, report: AgreementReport | None) -> dict:
    url = reverse("api:report", kwargs={"slug": project.slug}) + (f"?version_id={version.pk}" if version else "")
    if report is None:
        return {
            "status": "none",
            "progress": 0.0,
            "message": "No report has been made for the data as it is now: POST to this URL to make one.",
            "rubric_version_id": version.pk if version else None,
            "created_at": None,
            "result": None,
            "status_url": url,
        }
    done = report.status == AgreementReport.Status.SUCCEEDED
    return {
        "status": report.status,
        "progress": report.progress,
        "message": report.message,
        "rubric_version_id": report.rubric_version_id,
        "created_at": report.created_at,
        "result": report.result if done else None,
        "status_url": url,
    }


@router.get("/projects/{slug}/report", response=ReportOut, auth=READ, url_name="report", tags=["reports"])
def report(request: HttpRequest, slug: str, version_id: int | None = None):
    """The agreement report of the data as it is now, as JSON (admins and adjudicators). Reading it writes
    nothing: status ``none`` means none was made for this state of the data yet; POST makes one."""
    project = selectors.project_get_for_report(user=request.user, slug=slug)
    version, current, _ = selectors.agreement_report_current(
        project=project, rubric_version=_version_param(project, version_id)
    )
    return _report_out(project, version, current)


@router.post(
    "/projects/{slug}/report",
    response={201: ReportOut, 202: ReportOut},
    auth=WRITE,
    url_name="report-make",
    tags=["reports"],
)
def report_make(
    request: HttpRequest, slug: str, response: HttpResponse, version_id: int | None = None, refresh: bool = False
):
    """Make the report of the data as it is now, unless it exists (admins and adjudicators; ``refresh`` makes it
    again, admins only). 201 when it was computed during the request, 202 while a worker computes it."""
    if refresh:
        project = selectors.project_get_for_admin(user=request.user, slug=slug)
    else:
        project = selectors.project_get_for_report(user=request.user, slug=slug)
    row = agreement_report_request(project=project, rubric_version=_version_param(project, version_id), refresh=refresh)
    return accepted(response, _report_out(project, row.rubric_version, row), finished=row.is_finished)


def _version_out(version: RubricVersion) -> dict:
    return {
        "id": version.pk,
        "number": version.number,
        "status": version.status,
        "criteria": version.criteria,
        "notes": version.notes,
        "signoffs": len(version.signoffs.all()),
        "created_at": version.created_at,
        "proposed_at": version.proposed_at,
        "activated_at": version.activated_at,
    }


@router.get("/projects/{slug}/rubrics", response=list[RubricOut], auth=READ, url_name="rubric-list", tags=["rubrics"])
def rubric_list(request: HttpRequest, slug: str):
    """A project's rubrics with every version (members)."""
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    return [
        {"id": r.pk, "name": r.name, "versions": [_version_out(v) for v in r.versions.all()]}
        for r in selectors.rubric_list_for_project(project=project)
    ]


@router.get(
    "/projects/{slug}/rubrics/versions/{version_id}",
    response=RubricVersionOut,
    auth=READ,
    url_name="rubric-version",
    tags=["rubrics"],
)
def rubric_version(request: HttpRequest, slug: str, version_id: int):
    """One rubric version with its criteria (members)."""
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    return _version_out(selectors.rubric_version_get(project=project, version_id=version_id))
