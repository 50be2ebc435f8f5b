"""Known-answer check items: seeded into the queue to measure each reviewer's accuracy (admins)."""

import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from annotate import selectors
from annotate.services import checks as check_services


def json_error(exc: json.JSONDecodeError, what: str) -> ValidationError:
    return ValidationError(f"{what} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}.")


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
                    raise json_error(exc, "The answer") from None
            if form.get("action") == "seed":
                try:
                    item = selectors.item_get_in_project(project=project, item_id=form.get("item_id", ""))
                except Http404 as exc:
                    raise ValidationError(str(exc)) from None
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
    items = selectors.check_items(project=project)
    candidates = selectors.check_item_candidates(project=project)
    context = {"project": project, "items": items, "candidates": candidates, "errors": errors, "form": form}
    return render(request, "annotate/rubric_checks.html", context, status=400 if errors else 200)
