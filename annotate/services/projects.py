from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import transaction

from annotate import roles
from annotate.audit import gates_validate
from annotate.models import AdminAction, Lease, Project
from annotate.services.adminlog import admin_action_record
from annotate.services.queue import lease_bulk_write_turn
from config.sqlite_turns import write_turn

User = get_user_model()
# Slugs that name pages under /projects/ (annotate/urls.py).
RESERVED_SLUGS = {"new"}


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
    if slug in RESERVED_SLUGS:
        raise ValidationError({"slug": f"{slug!r} is taken by a page of the app: choose another slug."})
    project = Project(name=name, slug=slug, task_kinds=task_kinds, created_by=created_by, **fields)
    project.full_clean()
    project.save()
    if created_by is not None:
        project.members.add(created_by)
    return project


@transaction.atomic
def project_add_members(*, project: Project, users, by=None) -> None:
    """Let users see and work on a project."""
    new = [u for u in users if not project.members.filter(pk=u.pk).exists()]
    project.members.add(*users)
    for user in new:
        _member_logged(
            by, AdminAction.Action.MEMBER_ADD, project, user, f"Added {user.get_username()} to {project.name}"
        )


def _member_logged(by, action: str, project: Project, user, summary: str, **details) -> None:
    admin_action_record(
        actor=by,
        action=action,
        target=user,
        project=project,
        summary=summary,
        details={"username": user.get_username(), **details},
    )


# Settings an admin may change after creation. The split's seed and eval share are not among them: the
# split of every item already imported was drawn with them, and a later import must draw the same way.
PROJECT_SETTINGS = (
    "name",
    "description",
    "guidelines",
    "task_kinds",
    "overlap_k",
    "lease_minutes",
    "consensus_rule",
    "score_tolerance",
    "rubric_signoffs_required",
    "calibration_required",
    "calibration_threshold",
    "reviewers_see_evalsets",
    "audit_gates",
)
# Roles a project admin hands out on the members page; making admins stays with the Django admin site.
MEMBER_ROLES = (roles.REVIEWER, roles.ADJUDICATOR)


@transaction.atomic
def project_update(*, project: Project, **fields) -> Project:
    """Change a project's settings (any of ``PROJECT_SETTINGS``), validated as a whole."""
    unknown = sorted(set(fields) - set(PROJECT_SETTINGS))
    if unknown:
        raise ValidationError({name: "This setting cannot be changed after the project is made." for name in unknown})
    project = Project.objects.select_for_update().get(pk=project.pk)
    if "overlap_k" in fields and fields["overlap_k"] < project.overlap_k:
        # Items may already hold more live leases than a smaller k allows; the lease trigger would refuse them.
        busiest = project.items.order_by("-review_count").values_list("review_count", flat=True).first() or 0
        if fields["overlap_k"] < busiest:
            raise ValidationError(
                {"overlap_k": f"Some items already have {busiest} reviews: overlap k cannot go below {busiest}."}
            )
    if "audit_gates" in fields:
        fields["audit_gates"] = gates_validate(fields["audit_gates"] or {})
    for name, value in fields.items():
        setattr(project, name, value)
    project.full_clean()
    project.save(update_fields=list(fields) or None)
    return project


@transaction.atomic
def project_member_set(*, project: Project, user, role: str | None = None, by=None) -> None:
    """Make the user a member of the project; with ``role``, their reviewing role becomes exactly that one.

    Roles are site-wide (groups): setting one here changes it in every project. An admin keeps the admin role."""
    if role is not None and role not in MEMBER_ROLES:
        raise ValidationError({"role": f"Choose one of {', '.join(MEMBER_ROLES)} (admins are made in the admin site)."})
    if not project.members.filter(pk=user.pk).exists():
        project.members.add(user)
        _member_logged(
            by, AdminAction.Action.MEMBER_ADD, project, user, f"Added {user.get_username()} to {project.name}"
        )
    if role is None:
        return
    groups = roles_ensure()
    user.groups.remove(*(groups[r] for r in MEMBER_ROLES if r != role))
    user.groups.add(groups[role])
    if hasattr(user, "_goldset_roles"):
        del user._goldset_roles
    _member_logged(
        by, AdminAction.Action.MEMBER_ROLE, project, user, f"Made {user.get_username()} {role} (site-wide)", role=role
    )


def project_member_remove(*, project: Project, user, by=None) -> int:
    """Take the user off the project; their unfinished leases there end, so the items go back to the queue.

    Their annotations stay: what they judged still counts. Returns the number of leases ended."""
    if not project.members.filter(pk=user.pk).exists():
        raise ValidationError(f"{user.get_username()} is not a member of {project.name}.")
    with write_turn(), transaction.atomic():
        lease_bulk_write_turn(wait=True)
        project.members.remove(user)
        ended = Lease.objects.filter(project=project, reviewer=user, status=Lease.Status.ACTIVE).update(
            status=Lease.Status.EXPIRED
        )
        _member_logged(
            by,
            AdminAction.Action.MEMBER_REMOVE,
            project,
            user,
            f"Removed {user.get_username()} from {project.name}; {ended} open lease(s) ended",
            leases_ended=ended,
        )
        return ended
