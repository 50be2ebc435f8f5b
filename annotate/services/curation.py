"""Curating training data from what an audit found: items sent back for review, or marked unusable."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotate.models import Item, ItemResult, Lease
from annotate.services.queue import LIVE, lease_bulk_write_turn

MAX_NOTE_CHARS = 2_000


def _note(text: str, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ValidationError({"note": f"Say {what}: reviewers and the next admin read it."})
    if len(text) > MAX_NOTE_CHARS:
        raise ValidationError({"note": f"Keep it under {MAX_NOTE_CHARS} characters."})
    return text


@transaction.atomic
def items_send_back(*, item_ids: list[int], note: str) -> int:
    """Send items back to review: every review of them is opened again (a new revision each), their results
    go back to pending until reviewers agree again, and the note is shown with the item. Returns the count."""
    note = _note(note, "what reviewers should look at again")
    lease_bulk_write_turn(wait=True)
    items = list(Item.objects.select_for_update().filter(pk__in=item_ids, is_calibration=False))
    if not items:
        return 0
    now = timezone.now()
    for item in items:
        item.metadata = {**(item.metadata or {}), "review_note": note}
    Item.objects.bulk_update(items, ["metadata"])
    ids = [item.pk for item in items]
    Lease.objects.filter(item_id__in=ids, status__in=LIVE).update(status=Lease.Status.RELEASED, updated_at=now)
    ItemResult.objects.filter(item_id__in=ids).update(
        status=ItemResult.Status.PENDING, payload=None, agreement=None, decided_at=None, updated_at=now
    )
    return len(ids)


@transaction.atomic
def items_mark_unusable(*, item_ids: list[int], reason: str) -> int:
    """Keep items out of every snapshot from now on, with the reason; returns how many were marked."""
    reason = _note(reason, "why these items must not be trained on")
    return Item.objects.filter(pk__in=item_ids).update(unusable_reason=reason)
