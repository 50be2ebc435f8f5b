"""Roles are Django groups with permissions; object access is per project membership."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

REVIEWER = "reviewer"
ADJUDICATOR = "adjudicator"
ADMIN = "admin"
ROLES = (REVIEWER, ADJUDICATOR, ADMIN)

# Permissions each role's group holds, as "app_label.codename".
ROLE_PERMISSIONS = {
    REVIEWER: ["annotate.add_annotation", "annotate.view_project", "annotate.view_item"],
    ADJUDICATOR: [
        "annotate.add_annotation",
        "annotate.view_project",
        "annotate.view_item",
        "annotate.add_adjudication",
        "annotate.view_annotation",
    ],
    ADMIN: [
        "annotate.add_project",
        "annotate.change_project",
        "annotate.view_project",
        "annotate.add_item",
        "annotate.view_item",
        "annotate.view_annotation",
        "annotate.add_adjudication",
        "annotate.add_importbatch",
        "annotate.add_rubric",
        "annotate.add_rubricversion",
        "annotate.view_rubricversion",
        "annotate.view_lease",
        "annotate.view_importbatch",
        "annotate.view_flag",
        "annotate.change_flag",
        "annotate.view_adjudication",
    ],
}


def has_role(user: AbstractBaseUser | AnonymousUser, role: str) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    cache = getattr(user, "_goldset_roles", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True))
        user._goldset_roles = cache
    if role == ADJUDICATOR and ADMIN in cache:
        return True
    return role in cache


def is_admin(user) -> bool:
    return has_role(user, ADMIN)


def is_adjudicator(user) -> bool:
    return has_role(user, ADJUDICATOR)
