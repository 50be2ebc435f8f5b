from . import roles as role_rules


def roles(request) -> dict:
    """Role flags for the navigation: which links a page shows."""
    user = request.user
    return {
        "is_goldset_admin": role_rules.is_admin(user),
        "is_adjudicator": role_rules.is_adjudicator(user),
    }
