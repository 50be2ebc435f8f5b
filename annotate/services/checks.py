"""Known-answer check items: seeded into the queue like any other item, scored against their answer."""

from __future__ import annotations

import hashlib

from django.core.exceptions import ValidationError
from django.db import transaction

from annotate.consensus import normalize_text
from annotate.models import Item, ItemResult, Project, Split, TaskKind
from annotate.services.adjudication import payload_validate


def _content_hash(prompt: str, responses: list[dict]) -> str:
    canonical = normalize_text(prompt) + "\x1f" + "\x1e".join(normalize_text(r.get("text")) for r in responses)
    return hashlib.sha256(canonical.encode()).hexdigest()


@transaction.atomic
def check_item_seed_from_item(*, item: Item, answer: dict | None = None) -> Item:
    """Make an existing item a check item; its answer defaults to the item's consensus or adjudicated result."""
    item = Item.objects.select_for_update().get(pk=item.pk)
    if item.is_calibration:
        raise ValidationError(f"Item {item.pk} is a calibration item; choose a regular item.")
    if answer is None:
        result = ItemResult.objects.filter(
            item=item, status__in=[ItemResult.Status.CONSENSUS, ItemResult.Status.ADJUDICATED]
        ).first()
        if result is None:
            raise ValidationError(
                f"Item {item.pk} has no consensus or adjudicated result to use as its answer: give the answer."
            )
        answer = result.payload
    item.check_answer = payload_validate(item=item, payload=answer)
    item.is_check = True
    item.full_clean()
    item.save(update_fields=["is_check", "check_answer"])
    return item


@transaction.atomic
def check_item_create(
    *, project: Project, kind: str, prompt: str, responses: list[dict], answer: dict, split: str = Split.TRAIN
) -> Item:
    """Add a new known-answer item to a project's queue."""
    if kind not in project.task_kinds:
        raise ValidationError(f"kind: {project} takes {', '.join(project.task_kinds)}; got {kind!r}.")
    if not prompt.strip():
        raise ValidationError("prompt: give the prompt the reviewers will see.")
    if kind in (TaskKind.PREFERENCE, TaskKind.RUBRIC) and not responses:
        raise ValidationError(f"responses: a {kind} item needs at least one response.")
    # The same shape as imported responses, so nothing marks the item as a check.
    responses = [{"text": str(r.get("text", "")), "model": str(r.get("model", ""))} for r in responses]
    content_hash = _content_hash(prompt, responses)
    if Item.objects.filter(project=project, content_hash=content_hash).exists():
        raise ValidationError("This prompt and responses are already an item of the project: seed that item instead.")
    item = Item(
        project=project,
        kind=kind,
        prompt=prompt,
        responses=responses,
        content_hash=content_hash,
        split=split,
        is_check=True,
    )
    item.check_answer = payload_validate(item=item, payload=answer)
    item.full_clean()
    item.save()
    return item
