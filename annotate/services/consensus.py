"""Consensus over an item's reviews. Placeholder rule until the agreement work lands:
unanimous identical payloads reach consensus, anything else is disputed."""

from django.db import transaction
from django.utils import timezone

from annotate.models import Annotation, Item, ItemResult


@transaction.atomic
def item_result_refresh(*, item: Item) -> ItemResult:
    """Recompute an item's result from its latest annotations (call after every submission)."""
    annotations = list(Annotation.objects.filter(item=item).order_by("reviewer_id"))
    result, _ = ItemResult.objects.select_for_update().get_or_create(item=item, defaults={"kind": item.kind})
    if result.status == ItemResult.Status.ADJUDICATED:
        return result
    result.reviewer_ids = [a.reviewer_id for a in annotations]
    if len(annotations) < item.project.overlap_k:
        result.status, result.payload, result.agreement = ItemResult.Status.PENDING, None, None
    elif all(a.payload == annotations[0].payload for a in annotations):
        result.status, result.payload, result.agreement = ItemResult.Status.CONSENSUS, annotations[0].payload, 1.0
        result.decided_at = timezone.now()
    else:
        result.status, result.payload = ItemResult.Status.DISPUTED, None
    result.save()
    return result
