from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction

from annotate import roles
from annotate.models import Project

User = get_user_model()


@transaction.atomic
def roles_ensure() -> dict[str, Group]:
    """Create or update the reviewer, adjudicator and admin groups with their permissions."""
    groups = {}
    for role, perms in roles.ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        wanted = []
        for dotted in perms:
            app_label, codename = dotted.split(".")
            wanted.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(wanted)
        groups[role] = group
    return groups


@transaction.atomic
def user_grant_role(*, user, role: str) -> None:
    """Put a user in a role's group."""
    if role not in roles.ROLES:
        raise ValueError(f"Unknown role {role!r}: choose one of {', '.join(roles.ROLES)}.")
    group = roles_ensure()[role]
    user.groups.add(group)
    if role == roles.ADMIN and not user.is_staff:
        # Goldset admins manage projects and members through the Django admin site.
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    if hasattr(user, "_goldset_roles"):
        del user._goldset_roles


@transaction.atomic
def project_create(*, name: str, slug: str, task_kinds: list[str], created_by=None, **fields) -> Project:
    """Create a project after validating its settings."""
    project = Project(name=name, slug=slug, task_kinds=task_kinds, created_by=created_by, **fields)
    project.full_clean()
    project.save()
    if created_by is not None:
        project.members.add(created_by)
    return project


def project_add_members(*, project: Project, users) -> None:
    """Let users see and work on a project."""
    project.members.add(*users)
