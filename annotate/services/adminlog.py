"""The admin action log: one append-only row per admin action that changed data."""

from django.db import models

from annotate.models import AdminAction


def admin_action_record(
    *, actor, action: str, target: models.Model, summary: str, project=None, details: dict | None = None
) -> AdminAction:
    """Log an admin action; call it inside the transaction of the change, so both or neither are stored."""
    entry = AdminAction(
        actor=actor if getattr(actor, "pk", None) else None,
        actor_name=actor.get_username() if getattr(actor, "pk", None) else "",
        action=action,
        project=project,
        target=f"{target._meta.label}:{target.pk}",
        summary=summary,
        details=details or {},
    )
    entry.full_clean()
    entry.save()
    return entry
