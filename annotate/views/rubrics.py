import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate import roles, selectors
from annotate.models import RubricVersion
from annotate.services import rubrics as services

EXAMPLE_CRITERIA = [
    {
        "key": "helpful",
        "name": "Helpfulness",
        "scale": "ordinal",
        "levels": [
            {"value": 1, "label": "Unhelpful", "description": "Does not address the request.", "example": ""},
            {"value": 2, "label": "Partly", "description": "Addresses part of the request.", "example": ""},
            {"value": 3, "label": "Helpful", "description": "Fully addresses the request.", "example": ""},
        ],
    }
]


def _json_error(exc: json.JSONDecodeError, what: str) -> ValidationError:
    return ValidationError(f"{what} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}.")


def _version(project, version_id: int) -> RubricVersion:
    return selectors.rubric_version_get(project=project, version_id=version_id)


def _version_url(project, version) -> str:
    return reverse("annotate:rubric-version", kwargs={"slug": project.slug, "version_id": version.pk})


@require_GET
def rubric_list(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    rubrics = selectors.rubric_list_for_project(project=project)
    context = {"project": project, "rubrics": rubrics, "active": selectors.rubric_version_active(project=project)}
    return render(request, "annotate/rubric_list.html", context)


@require_POST
def rubric_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    try:
        rubric = services.rubric_create(project=project, name=request.POST.get("name", ""))
    except ValidationError as exc:
        messages.error(request, "Rubric not created: " + " ".join(exc.messages))
        return redirect(reverse("annotate:rubric-list", kwargs={"slug": slug}))
    return redirect(reverse("annotate:rubric-version-new", kwargs={"slug": slug, "rubric_id": rubric.pk}))


@require_http_methods(["GET", "POST"])
def version_new(request: HttpRequest, slug: str, rubric_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    rubric = selectors.rubric_get(project=project, rubric_id=rubric_id)
    last = selectors.rubric_version_latest(rubric=rubric)
    form = {
        "criteria": json.dumps(last.criteria if last else EXAMPLE_CRITERIA, indent=2, ensure_ascii=False),
        "notes": "",
    }
    errors: list[str] = []
    if request.method == "POST":
        form = {"criteria": request.POST.get("criteria", ""), "notes": request.POST.get("notes", "")}
        try:
            try:
                criteria = json.loads(form["criteria"])
            except json.JSONDecodeError as exc:
                raise _json_error(exc, "The criteria") from None
            version = services.rubric_version_create(
                rubric=rubric, criteria=criteria, notes=form["notes"], created_by=request.user
            )
        except ValidationError as exc:
            errors = exc.messages
        else:
            return redirect(_version_url(project, version))
    context = {"project": project, "rubric": rubric, "form": form, "errors": errors}
    return render(request, "annotate/rubric_version_form.html", context, status=400 if errors else 200)


@require_GET
def version_detail(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    version = _version(project, version_id)
    signoffs = selectors.rubric_signoffs(version=version)
    context = {
        "project": project,
        "version": version,
        "signoffs": signoffs,
        "signed": any(s.reviewer_id == request.user.pk for s in signoffs),
        "is_member": selectors.project_has_member(project=project, user=request.user),
        "calibration": services.calibration_evaluate(version=version)
        if version.status == RubricVersion.Status.CALIBRATING
        else None,
        "send_back": services.rubric_items_send_back_preview(version=version)
        if version.status == RubricVersion.Status.ACTIVE and roles.is_admin(request.user)
        else None,
    }
    return render(request, "annotate/rubric_version.html", context)


def _act(request: HttpRequest, project, version, action, done: str) -> HttpResponse:
    try:
        action()
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, done)
    return redirect(_version_url(project, version))


@require_POST
def version_propose(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    version = _version(project, version_id)
    return _act(
        request,
        project,
        version,
        lambda: services.rubric_version_propose(version=version),
        "Proposed: the version is frozen and collects sign-offs.",
    )


@require_POST
def version_signoff(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    version = _version(project, version_id)
    return _act(
        request,
        project,
        version,
        lambda: services.rubric_signoff(version=version, reviewer=request.user),
        "Signed off.",
    )


@require_POST
def version_activate(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    version = _version(project, version_id)
    return _act(
        request,
        project,
        version,
        lambda: services.rubric_version_activate(version=version),
        "Active: new scoring uses this version.",
    )


@require_POST
def version_send_back(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    version = _version(project, version_id)
    try:
        count = services.rubric_items_send_back(version=version)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{count} item(s) scored under older versions were sent back for re-review.")
    return redirect(_version_url(project, version))


def _calibration_card(request, project, version, item, *, saved=False, errors=None) -> dict:
    return {
        "project": project,
        "version": version,
        "item": item,
        "mine": selectors.calibration_scores_of(item=item, user=request.user, version=version),
        "saved": saved,
        "errors": errors or [],
    }


@require_GET
def calibration(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    version = _version(project, version_id)
    items = selectors.calibration_items(project=project)
    cards = [_calibration_card(request, project, version, item) for item in items]
    context = {
        "project": project,
        "version": version,
        "cards": cards,
        "status": services.calibration_evaluate(version=version),
        "can_score": selectors.calibration_reviewers(project=project).filter(pk=request.user.pk).exists(),
    }
    return render(request, "annotate/rubric_calibration.html", context)


@require_POST
def calibration_item_add(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    version = _version(project, version_id)
    try:
        item = selectors.item_get_in_project(project=project, item_id=request.POST.get("item_id", ""))
        services.calibration_item_add(item=item)
    except Http404 as exc:
        messages.error(request, str(exc))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Item {item.pk} is now a calibration item.")
    return redirect(reverse("annotate:calibration", kwargs={"slug": slug, "version_id": version.pk}))


@require_POST
def calibration_score(request: HttpRequest, slug: str, version_id: int, item_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    version = _version(project, version_id)
    item = selectors.calibration_item_get(project=project, item_id=item_id)
    payload = {"scores": {c["key"]: request.POST.get(c["key"]) for c in version.criteria if request.POST.get(c["key"])}}
    try:
        services.calibration_score_submit(version=version, item=item, reviewer=request.user, payload=payload)
    except ValidationError as exc:
        card = _calibration_card(request, project, version, item, errors=exc.messages)
        card["mine"] = payload["scores"]
        return render(request, "annotate/rubric_calibration.html#calibration-item", card, status=400)
    if request.htmx:
        card = _calibration_card(request, project, version, item, saved=True)
        return render(request, "annotate/rubric_calibration.html#calibration-item", card)
    messages.success(request, f"Scores for item {item.pk} saved.")
    return redirect(reverse("annotate:calibration", kwargs={"slug": slug, "version_id": version.pk}))
