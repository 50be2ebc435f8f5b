"""Import pages: upload (admins), a batch's live progress, its errors and rejected rows; the item list."""

from pathlib import Path

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from annotate import roles, selectors
from annotate.forms import ImportForm, ItemFilterForm
from annotate.importers import rejected_errors_path
from annotate.models import ImportBatch
from annotate.services import imports as import_services
from annotate.services.imports import import_batch_submit
from config import csvwriter, uploads
from config.background import poll_response

ITEMS_PER_PAGE = 50


@require_http_methods(["GET", "POST"])
def import_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and uploads.refused(request):
        # The upload stopped at the limit, and the form fields after the file were not read: a fresh form.
        form = ImportForm()
        form.cleaned_data = {}
        form.add_error("file", uploads.refused(request))
        context = {"project": project, "form": form, "batches": selectors.import_batch_list(project=project)}
        return render(request, "annotate/import_new.html", context, status=413)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            batch = import_batch_submit(
                project=project,
                uploaded_by=request.user,
                upload=data["file"],
                filename=data["file"].name,
                file_format=data["file_format"],
                mode=data["mode"],
                provenance=data["provenance"],
            )
        except (ValidationError, ValueError) as exc:
            form.add_error(None, "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc))
        else:
            url = batch_url(batch)
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    context = {"project": project, "form": form, "batches": selectors.import_batch_list(project=project)}
    if request.htmx:
        return render(request, "annotate/import_new.html#import-form", context)
    return render(request, "annotate/import_new.html", context, status=400 if form.errors else 200)


def batch_url(batch: ImportBatch) -> str:
    return reverse("annotate:import-detail", kwargs={"slug": batch.project.slug, "batch_id": batch.id})


def _detail_context(batch: ImportBatch) -> dict:
    errors = [e for e in batch.errors if e.get("kind") != "duplicate"]
    duplicates = [e for e in batch.errors if e.get("kind") == "duplicate"]
    errors_file = rejected_errors_path(batch.rejected_path)
    return {
        "project": batch.project,
        "batch": batch,
        "row_errors": errors,
        "exact_duplicate_rows": [e for e in duplicates if e.get("match") != "near"],
        "near_duplicate_rows": [e for e in duplicates if e.get("match") == "near"],
        "exact_duplicates": batch.duplicates - batch.near_duplicates,
        "has_errors_file": bool(errors_file and errors_file.exists()),
        "done": batch.is_finished,
        "can_retry": batch.status == ImportBatch.Status.FAILED
        and bool(batch.stored_path)
        and Path(batch.stored_path).exists(),
    }


def _alive(batch: ImportBatch) -> ImportBatch:
    """The batch, failed with the reason first when it says RUNNING but its worker is gone."""
    if batch.status == ImportBatch.Status.RUNNING and import_services.import_batches_fail_abandoned(
        batch_ids=[batch.pk]
    ):
        batch.refresh_from_db()
    return batch


@require_GET
def import_detail(request: HttpRequest, slug: str, batch_id: int) -> HttpResponse:
    batch = _alive(selectors.import_batch_get_for_admin(user=request.user, slug=slug, batch_id=batch_id))
    return render(request, "annotate/import_detail.html", _detail_context(batch))


@require_GET
def import_progress(request: HttpRequest, slug: str, batch_id: int) -> HttpResponse:
    batch = _alive(selectors.import_batch_get_for_admin(user=request.user, slug=slug, batch_id=batch_id))
    return poll_response(request, "annotate/import_detail.html#import-progress", _detail_context(batch), work=batch)


@require_GET
def import_rejected(request: HttpRequest, slug: str, batch_id: int) -> FileResponse:
    """The rejected rows, byte for byte as uploaded, in the upload's own format (to fix and import again)."""
    batch = selectors.import_batch_get_for_admin(user=request.user, slug=slug, batch_id=batch_id)
    if not batch.rejected_path or not Path(batch.rejected_path).exists():
        raise Http404("This import has no rejected rows.")
    name = f"{Path(batch.filename).stem}-rejected.{batch.file_format}"
    return FileResponse(open(batch.rejected_path, "rb"), as_attachment=True, filename=name)  # noqa: SIM115


@require_GET
def import_rejected_errors(request: HttpRequest, slug: str, batch_id: int) -> FileResponse:
    """What is wrong with each rejected row, as CSV (written through the one CSV writer)."""
    batch = selectors.import_batch_get_for_admin(user=request.user, slug=slug, batch_id=batch_id)
    path = rejected_errors_path(batch.rejected_path)
    if path is None or not path.exists():
        raise Http404("This import has no error report.")
    name = f"{Path(batch.filename).stem}-rejected-errors.csv"
    response = FileResponse(open(path, "rb"), as_attachment=True, filename=name)  # noqa: SIM115
    response["Content-Type"] = csvwriter.CONTENT_TYPE
    return response


@require_GET
def item_list(request: HttpRequest, slug: str) -> HttpResponse:
    form = ItemFilterForm(request.GET)
    filters = form.cleaned_data if form.is_valid() else {}
    project, items = selectors.item_list_for_user(
        user=request.user,
        slug=slug,
        split=filters.get("split", ""),
        kind=filters.get("kind", ""),
        q=filters.get("q", ""),
    )
    page = Paginator(items, ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "project": project,
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "staff": roles.is_admin(request.user) or roles.is_adjudicator(request.user),
        "can_import": roles.is_admin(request.user),
    }
    if request.htmx:
        return render(request, "annotate/item_list.html#item-table", context)
    return render(request, "annotate/item_list.html", context)


@require_POST
def import_retry(request: HttpRequest, slug: str, batch_id: int) -> HttpResponse:
    """Queue a failed import again from its kept upload."""
    batch = selectors.import_batch_get_for_admin(user=request.user, slug=slug, batch_id=batch_id)
    try:
        import_services.import_batch_retry(batch=batch)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect(batch_url(batch))
