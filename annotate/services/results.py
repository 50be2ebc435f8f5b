"""An item's result: what its reviews add up to, recomputed after every submission.

The rules are ``annotate.consensus`` (pure functions of payloads); this module loads the item's reviews,
calls them and writes ``ItemResult`` under a lock on that row.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import prefetch_related_objects
from django.utils import timezone

from annotate import queue_sql
from annotate.consensus import criteria_by_key, decide, latest_version_annotations
from annotate.models import Annotation, Item, ItemResult, TaskKind
from config import rawsql


def item_result_load(item: Item, row, start: int = 0) -> ItemResult:
    """The result row from ``row[start:]`` (as ``queue_sql.item_result_lock`` returns it)."""
    result = rawsql.load(ItemResult, row, start)
    result.item = item
    return result


def _item_result_locked(item: Item) -> ItemResult:
    """The item's result row, created if missing, locked until the end of the transaction.

    The lock serializes concurrent refreshes of one item, so the later one reads both annotations
    (in a statement of its own, after the lock: a new snapshot)."""
    (row,) = rawsql.fetch(*queue_sql.item_result_lock(item=item, now=timezone.now()))
    return item_result_load(item, row)


def _annotations_of(item: Item) -> list[Annotation]:
    annotations = [
        rawsql.load(Annotation, row) for row in rawsql.fetch(*queue_sql.annotations_of_item(item_id=item.pk))
    ]
    if item.kind == TaskKind.RUBRIC:  # the rubric versions decide which reviews count
        prefetch_related_objects(annotations, "rubric_version")
    return annotations


@transaction.atomic
def item_result_refresh(*, item: Item) -> ItemResult:
    """Recompute an item's result from its latest annotations (call after every submission)."""
    return item_result_refresh_in_transaction(item=item)


def item_result_refresh_in_transaction(*, item: Item, locked: ItemResult | None = None) -> ItemResult:
    """``item_result_refresh`` for a caller already in a transaction: no savepoint of its own.

    ``locked``: the result row when the caller has already locked it (``queue_sql.item_result_lock``)."""
    result = locked if locked is not None else _item_result_locked(item)
    if result.status == ItemResult.Status.ADJUDICATED:
        return result
    project = item.project
    annotations = _annotations_of(item)
    version = None
    if item.kind == TaskKind.RUBRIC:
        annotations, version = latest_version_annotations(annotations)
    result.kind = item.kind
    result.reviewer_ids = [a.reviewer_id for a in annotations]
    result.rubric_version = version
    if item.is_calibration or len(annotations) < project.overlap_k:
        result.status, result.payload, result.agreement, result.decided_at = ItemResult.Status.PENDING, None, None, None
    else:
        payload, share = decide(
            item.kind,
            [a.payload for a in annotations],
            rule=project.consensus_rule,
            tolerance=project.score_tolerance,
            criteria=criteria_by_key(version),
        )
        result.agreement = share
        result.decided_at = timezone.now()
        if payload is None:
            result.status, result.payload = ItemResult.Status.DISPUTED, None
        else:
            result.status, result.payload = ItemResult.Status.CONSENSUS, payload
    # An empty reviewer list is valid here (JSONField treats [] as blank). The item and rubric version
    # are foreign keys and the one result per item is a unique column: the database checks those, and
    # validating them here would cost two queries on every submission.
    result.full_clean(exclude=["reviewer_ids", "item", "rubric_version"], validate_unique=False)
    result.save()
    return result
