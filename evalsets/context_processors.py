from annotate import roles as role_rules
from evalsets import selectors


def evalsets(request) -> dict:
    """Whether the navigation links to eval sets: admins always; others when a project they work on lets
    reviewers see its eval sets (otherwise the page could only say there is nothing to see).

    A callable, evaluated only by pages that render the navigation."""
    user = request.user

    def sees_evalsets() -> bool:
        if not user.is_authenticated:
            return False
        return role_rules.is_admin(user) or selectors.evalset_projects_for_user(user=user).exists()

    return {"sees_evalsets": sees_evalsets}
