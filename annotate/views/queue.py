"""The review queue: task screens, submit-and-next, skip, undo, flag, history, and queue health for admins.

The page holds two cards: the item on screen and the prefetched one behind it (both leased). A
submission answers with the card that should be prefetched next, so the browser swaps the
prefetched card in at once and never waits on the server between items.
"""

from functools import lru_cache
from typing import NamedTuple

from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import reswap, retarget, trigger_client_event

from annotate import selectors
from annotate.forms import TaskForm, task_form
from annotate.models import Item, Lease, Project, RubricVersion, TaskKind
from annotate.payloads import GoldAction
from annotate.services import annotations as annotation_services
from annotate.services import queue as queue_services

QUEUE = "annotate/queue.html"
HEALTH = "annotate/queue_health.html"
HISTORY = "annotate/queue_history.html"
FLAGS = "annotate/flag_list.html"
GOLD_KEYS = {GoldAction.ACCEPT: "1–9", GoldAction.EDIT: "e", GoldAction.WRITE: "w", GoldAction.UNUSABLE: "x"}
GOLD_ACTIONS = [(action.value, action.label, GOLD_KEYS[action]) for action in GoldAction]


def _errors(exc: ValidationError) -> tuple[dict[str, str], list[str]]:
    if hasattr(exc, "error_dict"):
        return {field: " ".join(msgs) for field, msgs in exc.message_dict.items()}, []
    return {}, list(exc.messages)


def _card(*, project: Project, form: TaskForm, lease: Lease | None = None, action_url: str = "") -> dict:
    """Everything a task screen shows, from its form. Only the item and this reviewer's own values: never
    anyone else's."""
    item = form.item
    values, errors = form.values, form.field_errors
    responses = item.responses or []
    selected = values.get("source" if item.kind == TaskKind.GOLD else "choice")
    shown = [
        {"pos": pos, "text": responses[index].get("text", ""), "checked": selected == str(pos)}
        for pos, index in enumerate(form.display_order, start=1)
    ]
    criteria, scored, panels = [], None, []
    if item.kind == TaskKind.RUBRIC:
        index = item.scored_response_index
        scored = {"text": responses[index].get("text", "")} if index is not None else None
        # A reference answer shown beside the scored response (a judging queue's reference mode), in this
        # reviewer's display order; its role is all the screen says of where a text came from.
        panels = [
            {"text": responses[i].get("text", ""), "reference": i != index}
            for i in form.display_order
            if i == index or responses[i].get("role") == "reference"
        ]
        for criterion in getattr(form, "criteria", []):
            field = f"score-{criterion['key']}"
            levels = [
                {**level, "checked": values.get(field) == str(level.get("value"))}
                for level in criterion.get("levels", [])
            ]
            criteria.append(
                {
                    "key": criterion["key"],
                    "name": criterion.get("name", criterion["key"]),
                    "field": field,
                    "levels": levels,
                    "error": errors.get(field, ""),
                }
            )
    card = {
        "item": item,
        "kind": item.kind,
        "template": f"annotate/partials/task_{item.kind}.html",
        "messages": item.messages if isinstance(item.messages, list) else None,
        # An admin's word on an item sent back for review (curation); the rest of the metadata stays hidden.
        "note": (item.metadata or {}).get("review_note", "") if isinstance(item.metadata, dict) else "",
        "responses": shown,
        "scored": scored,
        "panels": panels if len(panels) > 1 else [],
        "rubric": form.rubric_version,
        "criteria": criteria,
        "values": values,
        "errors": errors,
        "gold_actions": GOLD_ACTIONS,
        "lease": lease,
        "action_url": action_url,
    }
    if lease is not None:
        urls = _lease_urls(project.slug)
        card.update(
            action_url=urls.submit.format(lease.pk),
            skip_url=urls.skip.format(lease.pk),
            flag_url=urls.flag.format(lease.pk),
            undo_url=urls.undo,
        )
    return card


class _LeaseUrls(NamedTuple):
    submit: str
    skip: str
    flag: str
    undo: str


@lru_cache(maxsize=1024)
def _lease_urls(slug: str) -> _LeaseUrls:
    """A project's per-lease URLs as format strings: reversed once per project, not four times per card."""
    marker = 918273645  # any lease id: its last occurrence becomes the placeholder

    def pattern(name: str) -> str:
        head, _, tail = reverse(name, args=[slug, marker]).rpartition(str(marker))
        return head + "{}" + tail  # slugs and the URL conf hold no braces

    return _LeaseUrls(
        submit=pattern("annotate:queue-submit"),
        skip=pattern("annotate:queue-skip"),
        flag=pattern("annotate:queue-flag"),
        undo=reverse("annotate:queue-undo", args=[slug]),
    )


def _lease_card(project, lease, rubric, *, data=None, payload: dict | None = None, form=None) -> dict:
    if form is None:
        form = _form(lease.item, lease.display_order, rubric, data=data, payload=payload)
    return _card(project=project, form=form, lease=lease)


def _form(item: Item, display_order, rubric: RubricVersion | None, *, data=None, payload=None) -> TaskForm:
    return task_form(
        item,
        data,
        display_order=display_order,
        rubric_version=rubric if item.kind == TaskKind.RUBRIC else None,
        payload=payload,
    )


def _rubric(project: Project) -> RubricVersion | None:
    if TaskKind.RUBRIC not in (project.task_kinds or []):
        return None
    return selectors.rubric_version_active(project=project)


def _queue_context(request, project: Project, leases: list[Lease], **current) -> dict:
    """The page's two cards; ``current`` (``form`` or ``payload``) fills the card on screen."""
    rubric = _rubric(project)
    return {
        "project": project,
        "current": _lease_card(project, leases[0], rubric, **current) if leases else None,
        "prefetch": _lease_card(project, leases[1], rubric) if len(leases) > 1 else None,
        # The rubric version fetched above: looking it up again would cost a query per request.
        "blocked_reason": selectors.queue_blocked_reason(project=project, active_version=rubric)
        if TaskKind.RUBRIC in (project.task_kinds or [])
        else "",
    }


def _page(request, project: Project, leases: list[Lease], *, status: int = 200, alert: str = "", **kw) -> HttpResponse:
    context = _queue_context(request, project, leases, **kw)
    context.update(
        alert=alert,
        progress=selectors.queue_progress(project=project, user=request.user),
        recent=selectors.annotation_recent_for_reviewer(user=request.user, project=project),
    )
    return render(request, QUEUE, context, status=status)


def _held(request) -> set[int]:
    return {int(x) for x in request.POST.get("have", "").split(",") if x.strip().isdigit()}


def _prefetch_response(request, project: Project, leases: list[Lease], event: str, detail: dict) -> HttpResponse:
    """The next card the browser does not hold yet (it has already moved its prefetched card on screen)."""
    held = _held(request)
    upcoming = [lease for lease in leases if lease.pk not in held]
    rubric = _rubric(project)
    context = {"project": project, "prefetch": _lease_card(project, upcoming[0], rubric) if upcoming else None}
    response = render(request, QUEUE + "#prefetch", context)
    return trigger_client_event(response, event, detail)


def _alert(request, message: str, *, event: str = "", detail: dict | None = None) -> HttpResponse:
    response = render(request, QUEUE + "#alert", {"alert": message})
    response = reswap(retarget(response, "#queue-alert"), "innerHTML")
    if event:
        response = trigger_client_event(response, event, detail or {})
    return response


def _project_and_filled_queue(request, slug: str) -> tuple[Project, list[Lease]]:
    project, active = selectors.project_and_queue_for_user(user=request.user, slug=slug)
    return project, queue_services.lease_fill_for_reviewer(project=project, reviewer=request.user, active=active)


@require_GET
def queue_page(request, slug: str) -> HttpResponse:
    project, leases = _project_and_filled_queue(request, slug)
    if request.htmx:
        return render(request, QUEUE + "#cards", _queue_context(request, project, leases))
    return _page(request, project, leases)


@require_GET
def queue_next(request, slug: str) -> HttpResponse:
    project, leases = _project_and_filled_queue(request, slug)
    return render(request, QUEUE + "#cards", _queue_context(request, project, leases))


@require_GET
def queue_progress(request, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    progress = selectors.queue_progress(project=project, user=request.user)
    return render(request, QUEUE + "#progress", {"project": project, "progress": progress})


@require_POST
def queue_submit(request, slug: str, lease_id: int) -> HttpResponse:
    project, lease = selectors.project_and_lease_for_user(user=request.user, slug=slug, lease_id=lease_id)
    rubric = selectors.rubric_version_active(project=project) if lease.item.kind == TaskKind.RUBRIC else None
    form = _form(lease.item, lease.display_order, rubric, data=request.POST)
    try:
        if not form.is_valid():
            raise ValidationError(form.general_errors)
        _, leases = annotation_services.annotation_submit(
            project=project,
            lease_id=lease.pk,
            reviewer=request.user,
            payload=form.payload,
            rubric_version=rubric,
            duration_ms=form.cleaned_data["duration_ms"],
            refill=True,
        )
    except Lease.DoesNotExist:
        raise Http404("No such item in your queue.") from None
    except ValidationError as exc:
        general = list(exc.messages) if form.is_valid() else form.general_errors
        if request.htmx:
            message = " ".join(general + [e for e in form.field_errors.values() if e])
            return _alert(request, message, event="goldset:submit-failed", detail={"lease": lease_id})
        leases = selectors.leases_active_for_reviewer(project=project, reviewer=request.user)
        if lease.status == Lease.Status.ACTIVE:
            leases = [lease] + [other for other in leases if other.pk != lease.pk]
        return _page(request, project, leases, status=400, alert=" ".join(general), form=form)
    if not request.htmx:
        return redirect("annotate:queue", slug=project.slug)
    return _prefetch_response(request, project, leases, "goldset:submitted", {"lease": lease_id})


@require_POST
def queue_skip(request, slug: str, lease_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    lease = selectors.lease_get_for_reviewer(user=request.user, project=project, lease_id=lease_id)
    try:
        queue_services.lease_skip(lease_id=lease.pk, reviewer=request.user)
    except ValidationError as exc:
        if request.htmx:
            return _alert(request, " ".join(exc.messages))
        return redirect("annotate:queue", slug=project.slug)
    if not request.htmx:
        return redirect("annotate:queue", slug=project.slug)
    leases = queue_services.lease_fill_for_reviewer(project=project, reviewer=request.user)
    return _prefetch_response(request, project, leases, "goldset:skipped", {"lease": lease.pk})


@require_POST
def queue_undo(request, slug: str) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    try:
        lease, undone = annotation_services.annotation_undo_last(project=project, reviewer=request.user)
    except ValidationError as exc:
        if request.htmx:
            return _alert(request, " ".join(exc.messages))
        leases = selectors.leases_active_for_reviewer(project=project, reviewer=request.user)
        return _page(request, project, leases, status=400, alert=" ".join(exc.messages))
    leases = selectors.leases_active_for_reviewer(project=project, reviewer=request.user)
    leases = [lease] + [other for other in leases if other.pk != lease.pk]
    if not request.htmx:
        return _page(request, project, leases, payload=undone)
    response = render(request, QUEUE + "#cards", _queue_context(request, project, leases, payload=undone))
    return trigger_client_event(response, "goldset:undone", {"lease": lease.pk})


@require_POST
def queue_flag(request, slug: str, lease_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    lease = selectors.lease_get_for_reviewer(user=request.user, project=project, lease_id=lease_id)
    try:
        annotation_services.item_flag(
            lease_id=lease.pk, reviewer=request.user, reason=request.POST.get("reason_flag", "")
        )
    except ValidationError as exc:
        message, ok = " ".join(exc.messages), False
    else:
        message, ok = "Flagged for an admin. You can still answer or skip the item.", True
    if not request.htmx:
        return redirect("annotate:queue", slug=project.slug)
    return render(request, QUEUE + "#flag-status", {"flag_message": message, "flag_ok": ok})


@require_http_methods(["GET", "POST"])
def annotation_history(request, slug: str, item_id: int) -> HttpResponse:
    project = selectors.project_get_for_user(user=request.user, slug=slug)
    annotation = selectors.annotation_get_for_reviewer(user=request.user, project=project, item_id=item_id)
    rubric = selectors.rubric_version_active(project=project) if annotation.kind == TaskKind.RUBRIC else None
    form = _form(
        annotation.item, annotation.display_order, rubric, data=request.POST or None, payload=annotation.payload
    )
    alert, notice, status = "", "", 200
    if request.method == "POST":
        try:
            if not form.is_valid():
                raise ValidationError(form.general_errors)
            annotation_services.annotation_revise(
                annotation_id=annotation.pk, reviewer=request.user, payload=form.payload, rubric_version=rubric
            )
        except annotation_services.AnswerUnchanged as exc:
            notice = " ".join(exc.messages)
        except ValidationError as exc:
            alert, status = " ".join(exc.messages), 400
        else:
            return redirect("annotate:annotation-history", slug=project.slug, item_id=annotation.item_id)
    context = {
        "project": project,
        "annotation": annotation,
        "revisions": [
            {
                "number": r.number,
                "created_at": r.created_at,
                "lines": selectors.describe_payload(
                    item=annotation.item,
                    payload=r.payload,
                    criteria=r.rubric_version.criteria if r.rubric_version else None,
                    display_order=annotation.display_order,
                ),
            }
            for r in annotation.revisions.select_related("rubric_version").order_by("-number")
        ],
        "card": _card(project=project, form=form, action_url=request.path),
        "alert": alert,
        "notice": notice,
    }
    return render(request, HISTORY, context, status=status)


# --- Admin: flags -----------------------------------------------------------------------------------

FLAGS_PER_PAGE = 50


def _flags(request, project: Project, *, alert: str = "", status: int = 200) -> HttpResponse:
    state = request.GET.get("state", "open")
    state = state if state in ("open", "resolved", "all") else "open"
    q = request.GET.get("q", "").strip()[:200]
    flags = selectors.flag_list_for_admin(project=project, state=state, q=q)
    context = {
        "project": project,
        "page": Paginator(flags, FLAGS_PER_PAGE).get_page(request.GET.get("page")),
        "state": state,
        "q": q,
        "alert": alert,
    }
    template = FLAGS + "#flags" if request.htmx else FLAGS
    return render(request, template, context, status=status)


@require_GET
def flag_list(request, slug: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    return _flags(request, project)


@require_POST
def flag_resolve(request, slug: str, flag_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    try:
        annotation_services.flag_resolve(
            project=project, flag_id=flag_id, resolved_by=request.user, resolution=request.POST.get("resolution", "")
        )
    except ValidationError as exc:
        return _flags(request, project, alert=" ".join(exc.messages), status=400)
    if not request.htmx:
        return redirect("annotate:flag-list", slug=project.slug)
    return _flags(request, project, alert=f"Flag {flag_id} resolved.")


# --- Admin: queue health ---------------------------------------------------------------------------


def _health(request, project: Project, *, alert: str = "", status: int = 200) -> HttpResponse:
    context = {"project": project, "health": selectors.queue_health(project=project), "alert": alert}
    template = HEALTH + "#health" if request.htmx else HEALTH
    return render(request, template, context, status=status)


@require_GET
def queue_health(request, slug: str) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    return _health(request, project)


@require_POST
def queue_lease_expire(request, slug: str, lease_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    try:
        queue_services.lease_expire(lease_id=lease_id, project=project)
    except (ValidationError, Lease.DoesNotExist) as exc:
        return _health(request, project, alert=_message(exc, lease_id), status=400)
    return _health(request, project, alert=f"Lease {lease_id} expired: its item is back in the queue.")


@require_POST
def queue_lease_reassign(request, slug: str, lease_id: int) -> HttpResponse:
    project = selectors.project_get_for_admin(user=request.user, slug=slug)
    username = request.POST.get("to", "").strip()
    to_reviewer = selectors.member_by_username(project=project, username=username)
    if to_reviewer is None:
        alert = f"{username!r} is not a member of this project: pick a member from the list."
        return _health(request, project, alert=alert, status=400)
    try:
        queue_services.lease_reassign(lease_id=lease_id, project=project, to_reviewer=to_reviewer)
    except (ValidationError, Lease.DoesNotExist) as exc:
        return _health(request, project, alert=_message(exc, lease_id), status=400)
    return _health(request, project, alert=f"Lease {lease_id} moved to {username}.")


def _message(exc: Exception, lease_id: int) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return f"No lease {lease_id} in this project: reload the page."
