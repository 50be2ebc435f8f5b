"""Project pages: the list, a project's page, and for admins: a new project, its settings, its members and
the annotation export."""

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate import exports, roles, selectors
from annotate.forms import AnnotationExportForm, MemberForm, ProjectCreateForm, ProjectSettingsForm
from annotate.services import projects as project_services


@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    projects = selectors.project_list_for_user(user=request.user)
    return render(request, "annotate/project_list.html", {"projects": projects})


@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    counts = selectors.item_counts(project=project)
    context = {"project": project, "counts": counts, "export_form": AnnotationExportForm()}
    return render(request, "annotate/project_detail.html", context)


def _form_errors(form, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for field, messages in exc.message_dict.items():
            for message in messages:
                form.add_error(field if field in form.fields else None, message)
    else:
        form.add_error(None, " ".join(exc.messages))


@require_http_methods(["GET", "POST"])
def project_new(request: HttpRequest) -> HttpResponse:
    if not roles.is_admin(request.user):
        raise PermissionDenied("Only admins can make projects.")
    form = ProjectCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        try:
            project = project_services.project_create(created_by=request.user, **data)
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            return redirect(project.get_absolute_url())
    status = 400 if form.errors else 200
    return render(request, "annotate/project_form.html", {"form": form, "project": None}, status=status)


@require_http_methods(["GET", "POST"])
def project_settings(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    form = ProjectSettingsForm(request.POST or None, instance=project)
    saved = False
    if request.method == "POST" and form.is_valid():
        fields = {name: form.cleaned_data[name] for name in form.changed_data}
        try:
            project = project_services.project_update(project=project, **fields)
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            saved = True
            form = ProjectSettingsForm(instance=project)
    context = {"form": form, "project": project, "saved": saved}
    return render(request, "annotate/project_form.html", context, status=400 if form.errors else 200)


def _members_page(request, project, form, *, notice: str = "", status: int = 200) -> HttpResponse:
    context = {
        "project": project,
        "form": form,
        "members": selectors.project_members_with_roles(project=project),
        "notice": notice,
    }
    template = "annotate/project_members.html#members" if request.htmx else "annotate/project_members.html"
    return render(request, template, context, status=status)


@require_http_methods(["GET", "POST"])
def project_members(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    form = MemberForm(request.POST or None)
    if request.method != "POST":
        return _members_page(request, project, form)
    if form.is_valid():
        user = selectors.user_or_none_by_username(username=form.cleaned_data["username"])
        if user is None:
            form.add_error("username", "No active user has this username: check the spelling.")
        else:
            try:
                project_services.project_member_set(
                    project=project, user=user, role=form.cleaned_data["role"] or None, by=request.user
                )
            except ValidationError as exc:
                _form_errors(form, exc)
            else:
                return _members_page(
                    request, project, MemberForm(), notice=f"{user.get_username()} is a member of {project.name}."
                )
    return _members_page(request, project, form, status=400)


@require_POST
def project_member_remove(request: HttpRequest, slug: str, username: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    user = selectors.user_by_username(username=username)
    try:
        ended = project_services.project_member_remove(project=project, user=user, by=request.user)
    except ValidationError as exc:
        return _members_page(request, project, MemberForm(), notice=" ".join(exc.messages), status=400)
    notice = f"{user.get_username()} left {project.name}; {ended} unfinished item(s) went back to the queue."
    return _members_page(request, project, MemberForm(), notice=notice)


@require_GET
def annotation_export(request: HttpRequest, slug: str, fmt: str) -> HttpResponse:
    """Every annotation of the project (filtered), streamed as JSONL or CSV (admins)."""
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    if fmt not in ("jsonl", "csv"):
        raise Http404("Annotations export as .jsonl or .csv.")
    form = AnnotationExportForm(request.GET)
    if not form.is_valid():
        return HttpResponse(
            "Invalid filters: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()),
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    data = form.cleaned_data
    filters = exports.ExportFilter(
        kinds=tuple(data["kind"]),
        states=tuple(data["state"]),
        splits=tuple(data["split"]),
        since=data["since"],
        until=data["until"],
    )
    if fmt == "csv":
        records = exports.export_records(project=project, filters=filters)
        response = StreamingHttpResponse(exports.csv_chunks(records), content_type="text/csv; charset=utf-8")
    else:
        chunks = exports.export_jsonl(project=project, filters=filters)
        response = StreamingHttpResponse(chunks, content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-annotations.{fmt}"'
    return response


@login_not_required
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
