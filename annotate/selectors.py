"""Reads for the annotate app, with permission built in."""

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from annotate import roles
from annotate.models import ImportBatch, Item, Project


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


def import_batch_get_for_admin(*, user, slug: str, batch_id: int) -> ImportBatch:
    """An import of the project, for admins; 404 when it belongs to another project."""
    project = project_get_for_admin(user=user, slug=slug)
    try:
        return ImportBatch.objects.select_related("project", "uploaded_by").get(project=project, id=batch_id)
    except ImportBatch.DoesNotExist:
        raise Http404("No such import.") from None


def import_batch_list(*, project: Project, limit: int = 20) -> QuerySet[ImportBatch]:
    """The project's latest imports, newest first."""
    return project.imports.select_related("uploaded_by").order_by("-created_at", "-id")[:limit]


def item_list_for_user(*, user, slug: str, split: str = "", kind: str = "") -> tuple[Project, QuerySet[Item]]:
    """The project's items a member may browse, optionally filtered by split and kind."""
    project = project_get_for_user(user=user, slug=slug)
    items = Item.objects.filter(project=project).order_by("id")
    if split:
        items = items.filter(split=split)
    if kind:
        items = items.filter(kind=kind)
    return project, items
