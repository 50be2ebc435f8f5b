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
