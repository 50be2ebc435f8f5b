import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods
from django.views.decorators.vary import vary_on_headers

from annotate import selectors
from annotate.services.adjudication import adjudication_record

DISPUTES_PER_PAGE = 50


@require_GET
@vary_on_headers("HX-Request")
def queue(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get_for_adjudicator(user=request.user, slug=slug)
    q = request.GET.get("q", "").strip()[:200]
    disputes = selectors.disputed_items(project=project, q=q)
    page = Paginator(disputes, DISPUTES_PER_PAGE).get_page(request.GET.get("page"))
    template = "annotate/adjudication_queue.html"
    context = {"project": project, "page": page, "q": q}
    return render(request, template + "#disputes" if request.htmx else template, context)


def _context(item, *, form=None, errors=None) -> dict:
    view = selectors.adjudication_view_of(item=item)
    criteria = view["criteria"]
    reviews = [
        {
            "annotation": a,
            "lines": selectors.describe_payload(item=item, payload=a.payload, criteria=criteria),
            "json": json.dumps(a.payload, indent=1, ensure_ascii=False),
        }
        for a in view["annotations"]
    ]
    result = view["result"]
    return {
        "project": item.project,
        "item": item,
        "reviews": reviews,
        "result": result,
        "result_lines": selectors.describe_payload(
            item=item, payload=result.payload if result else None, criteria=criteria
        ),
        "history": view["history"],
        "form": form or {},
        "errors": errors or [],
    }


@require_http_methods(["GET", "POST"])
def decide(request: HttpRequest, slug: str, item_id: int) -> HttpResponse:
    item = selectors.item_get_for_adjudication(user=request.user, slug=slug, item_id=item_id)
    if request.method == "GET":
        return render(request, "annotate/adjudication_item.html", _context(item))
    form = {
        "adopt": request.POST.get("adopt", ""),
        "payload": request.POST.get("payload", ""),
        "reason": request.POST.get("reason", ""),
    }
    try:
        payload = _parse_decision(item, form)
        adjudication_record(item=item, adjudicator=request.user, payload=payload, reason=form["reason"])
    except ValidationError as exc:
        return render(
            request, "annotate/adjudication_item.html", _context(item, form=form, errors=exc.messages), status=400
        )
    messages.success(request, f"Item {item.pk} decided.")
    return redirect(reverse("annotate:adjudication-queue", kwargs={"slug": slug}))


def _parse_decision(item, form: dict) -> dict:
    """The decision payload: one review adopted as is, or a payload written out as JSON."""
    if form["adopt"] and form["adopt"] != "custom":
        return selectors.annotation_of_item(item=item, annotation_id=form["adopt"]).payload
    if not form["payload"].strip():
        raise ValidationError("Choose a review to adopt, or write your own decision as JSON.")
    try:
        return json.loads(form["payload"])
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"Your decision is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            "Start from one of the reviews' JSON shown above."
        ) from None
