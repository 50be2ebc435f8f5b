import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate import roles, selectors
from annotate.models import Annotation, Item, ItemResult, Rubric, RubricSignoff, RubricVersion
from annotate.services import checks as check_services
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
    try:
        return RubricVersion.objects.select_related("rubric").get(pk=version_id, rubric__project=project)
    except RubricVersion.DoesNotExist:
        raise Http404("No such rubric version in this project.") from None


def _version_url(project, version) -> str:
    return reverse("annotate:rubric-version", kwargs={"slug": project.slug, "version_id": version.pk})


@require_GET
def rubric_list(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    rubrics = Rubric.objects.filter(project=project).prefetch_related("versions__signoffs")
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
    try:
        rubric = Rubric.objects.get(pk=rubric_id, project=project)
    except Rubric.DoesNotExist:
        raise Http404("No such rubric in this project.") from None
    last = rubric.versions.order_by("-number").first()
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
    signoffs = RubricSignoff.objects.filter(version=version).select_related("reviewer").order_by("created_at")
    context = {
        "project": project,
        "version": version,
        "signoffs": signoffs,
        "signed": any(s.reviewer_id == request.user.pk for s in signoffs),
        "is_member": project.members.filter(pk=request.user.pk).exists(),
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
    mine = Annotation.objects.filter(item=item, reviewer=request.user, rubric_version=version).first()
    return {
        "project": project,
        "version": version,
        "item": item,
        "mine": (mine.payload.get("scores") or {}) if mine else {},
        "saved": saved,
        "errors": errors or [],
    }


@require_GET
def calibration(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    version = _version(project, version_id)
    items = services.calibration_items(project)
    cards = [_calibration_card(request, project, version, item) for item in items]
    context = {
        "project": project,
        "version": version,
        "cards": cards,
        "status": services.calibration_evaluate(version=version),
        "can_score": services.calibration_reviewers(project).filter(pk=request.user.pk).exists(),
    }
    return render(request, "annotate/rubric_calibration.html", context)


@require_POST
def calibration_item_add(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    version = _version(project, version_id)
    try:
        item = Item.objects.get(pk=int(request.POST.get("item_id", "")), project=project)
        services.calibration_item_add(item=item)
    except (ValueError, Item.DoesNotExist):
        messages.error(request, f"Item {request.POST.get('item_id')!r} is not an item of this project.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Item {item.pk} is now a calibration item.")
    return redirect(reverse("annotate:calibration", kwargs={"slug": slug, "version_id": version.pk}))


@require_POST
def calibration_score(request: HttpRequest, slug: str, version_id: int, item_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    version = _version(project, version_id)
    try:
        item = services.calibration_items(project).get(pk=item_id)
    except Item.DoesNotExist:
        raise Http404("No such calibration item.") from None
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


def _split_responses(text: str) -> list[dict]:
    parts = [p.strip() for p in text.replace("\r\n", "\n").split("\n---\n")]
    return [{"text": p, "model": ""} for p in parts if p]


@require_http_methods(["GET", "POST"])
def checks(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    errors: list[str] = []
    form = request.POST if request.method == "POST" else {}
    if request.method == "POST":
        try:
            answer = None
            if form.get("answer", "").strip():
                try:
                    answer = json.loads(form["answer"])
                except json.JSONDecodeError as exc:
                    raise _json_error(exc, "The answer") from None
            if form.get("action") == "seed":
                try:
                    item = Item.objects.get(pk=int(form.get("item_id", "")), project=project)
                except (ValueError, Item.DoesNotExist):
                    raise ValidationError(f"Item {form.get('item_id')!r} is not an item of this project.") from None
                check_services.check_item_seed_from_item(item=item, answer=answer)
            else:
                if answer is None:
                    raise ValidationError("answer: give the known answer as JSON in the shape of the item's kind.")
                check_services.check_item_create(
                    project=project,
                    kind=form.get("kind", ""),
                    prompt=form.get("prompt", ""),
                    responses=_split_responses(form.get("responses", "")),
                    answer=answer,
                )
        except ValidationError as exc:
            errors = exc.messages
        else:
            messages.success(request, "Check item added to the queue.")
            return redirect(reverse("annotate:checks", kwargs={"slug": slug}))
    items = Item.objects.filter(project=project, is_check=True).order_by("-id")
    candidates = ItemResult.objects.filter(
        item__project=project,
        item__is_check=False,
        item__is_calibration=False,
        status__in=[ItemResult.Status.CONSENSUS, ItemResult.Status.ADJUDICATED],
    ).select_related("item")[:50]
    context = {"project": project, "items": items, "candidates": candidates, "errors": errors, "form": form}
    return render(request, "annotate/rubric_checks.html", context, status=400 if errors else 200)
