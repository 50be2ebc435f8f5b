from . import roles as role_rules


def roles(request) -> dict:
    """Role flags for the navigation: which links a page shows.

    Callables, which templates call when they use them: an htmx fragment that shows no role-dependent
    link then costs no group lookup."""
    user = request.user
    return {
        "is_goldset_admin": lambda: role_rules.is_admin(user),
        "is_adjudicator": lambda: role_rules.is_adjudicator(user),
    }
