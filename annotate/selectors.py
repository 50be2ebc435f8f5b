"""Reads for the annotate app, with permission built in."""

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from annotate import roles
from annotate.models import Item, Project


def project_list_for_user(*, user) -> QuerySet[Project]:
    """Projects a user may see: all for admins, their own for everyone else."""
    if roles.is_admin(user):
        return Project.objects.all()
    return Project.objects.filter(members=user)


def project_get_for_user(*, user, slug: str) -> Project:
    """The project, or 404 when it does not exist or the user is not a member (no existence leak)."""
    try:
        return project_list_for_user(user=user).get(slug=slug)
    except Project.DoesNotExist:
        raise Http404("No such project.") from None


def project_get_for_admin(*, user, slug: str) -> Project:
    """The project for an admin-only page; reviewers get 403 on projects they belong to."""
    project = project_get_for_user(user=user, slug=slug)
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins can do this.")
    return project


def item_counts(*, project: Project) -> dict[str, int]:
    """Item counts by split, for the project page."""
    qs = Item.objects.filter(project=project)
    return {
        "total": qs.count(),
        "train": qs.filter(split="train").count(),
        "eval": qs.filter(split="eval").count(),
    }


def rubric_version_active(*, project: Project):
    """The rubric version scoring uses now: the project's active one (None before any is active)."""
    from annotate.models import RubricVersion

    return (
        RubricVersion.objects.filter(rubric__project=project, status=RubricVersion.Status.ACTIVE)
        .order_by("-activated_at", "-pk")
        .first()
    )


def project_get_for_adjudicator(*, user, slug: str) -> Project:
    """The project for adjudication pages: members who adjudicate (and admins); others get 403."""
    project = project_get_for_user(user=user, slug=slug)
    if not roles.is_adjudicator(user):
        raise PermissionDenied("Only adjudicators can open the adjudication queue.")
    return project


def project_get_for_report(*, user, slug: str) -> Project:
    """The project for its agreement report: admins and adjudicators (it names reviewers and their accuracy)."""
    project = project_get_for_user(user=user, slug=slug)
    if not (roles.is_admin(user) or roles.is_adjudicator(user)):
        raise PermissionDenied("The agreement report is for admins and adjudicators.")
    return project


def item_get_for_adjudication(*, user, slug: str, item_id: int) -> Item:
    """A non-calibration item of a project the adjudicator works on, or 404."""
    project = project_get_for_adjudicator(user=user, slug=slug)
    try:
        return Item.objects.select_related("project").get(pk=item_id, project=project, is_calibration=False)
    except Item.DoesNotExist:
        raise Http404("No such item in this project.") from None


def disputed_items(*, project: Project):
    """Disputed results waiting for an adjudicator, oldest first."""
    from annotate.models import ItemResult

    return (
        ItemResult.objects.filter(item__project=project, status=ItemResult.Status.DISPUTED)
        .select_related("item")
        .order_by("decided_at", "item_id")
    )


def describe_payload(*, item: Item, payload: dict | None, criteria: list[dict] | None = None) -> list[tuple[str, str]]:
    """A judgement as (label, text) lines a person can read; response indices become their text."""
    if not payload:
        return []
    responses = item.responses or []

    def response(i) -> str:
        if isinstance(i, int) and 0 <= i < len(responses):
            return f"#{i + 1}: {str(responses[i].get('text', ''))[:300]}"
        return "–"

    if item.kind == "gold":
        lines = [("Action", str(payload.get("action")))]
        if payload.get("action") == "accept":
            lines.append(("Accepted", response(payload.get("source_index"))))
        if payload.get("answer"):
            lines.append(("Answer", str(payload["answer"])))
    elif item.kind == "preference":
        lines = [("Choice", str(payload.get("choice")))]
        if payload.get("choice") == "response":
            lines += [("Chosen", response(payload.get("chosen"))), ("Rejected", response(payload.get("rejected")))]
            if payload.get("strength"):
                lines.append(("Strength", str(payload["strength"])))
    else:
        names = {c["key"]: c["name"] for c in criteria or []}
        lines = [("Response", response(payload.get("response_index")))]
        lines += [(names.get(k, k), str(v)) for k, v in (payload.get("scores") or {}).items()]
    for note in ("reason", "rationale"):
        if payload.get(note):
            lines.append((note.capitalize(), str(payload[note])))
    return lines
