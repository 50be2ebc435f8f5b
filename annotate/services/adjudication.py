"""Adjudication: an adjudicator's final decision on a disputed item, with the reason."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from annotate import roles
from annotate.consensus import agreement_with, criteria_by_key, latest_version_annotations
from annotate.models import Adjudication, Annotation, Item, ItemResult, TaskKind
from annotate.payloads import ANSWER_ACTIONS, GoldAction, PreferenceChoice, payload_from_json


def payload_validate(*, item: Item, payload) -> dict:
    """Check a decision payload against the item's kind; errors say which field to fix."""
    if not isinstance(payload, dict):
        raise ValidationError("The decision must be an object in the payload shape of the item's kind.")
    n = len(item.responses or [])
    if item.kind == TaskKind.GOLD:
        action = payload.get("action")
        if action not in GoldAction.values:
            raise ValidationError(f"action: choose one of {', '.join(GoldAction.values)}; got {action!r}.")
        if action in ANSWER_ACTIONS and not str(payload.get("answer") or "").strip():
            raise ValidationError(f"answer: an {action} decision needs the answer text.")
        if action == GoldAction.ACCEPT and not (
            isinstance(payload.get("source_index"), int) and 0 <= payload["source_index"] < n
        ):
            raise ValidationError(f"source_index: accept needs the index of one of the {n} responses.")
    elif item.kind == TaskKind.PREFERENCE:
        choice = payload.get("choice")
        if choice not in PreferenceChoice.values:
            raise ValidationError(f"choice: choose one of {', '.join(PreferenceChoice.values)}; got {choice!r}.")
        if choice == PreferenceChoice.RESPONSE:
            chosen, rejected = payload.get("chosen"), payload.get("rejected")
            if not (isinstance(chosen, int) and 0 <= chosen < n):
                raise ValidationError(f"chosen: give the index of one of the {n} responses.")
            if rejected is not None and (not isinstance(rejected, int) or not 0 <= rejected < n or rejected == chosen):
                raise ValidationError("rejected: give the index of a different response, or leave it empty.")
    elif item.kind == TaskKind.RUBRIC and (not isinstance(payload.get("scores"), dict) or not payload["scores"]):
        raise ValidationError("scores: give {criterion_key: value} for every criterion.")
    return payload_from_json(item.kind, payload).to_json()


@transaction.atomic
def adjudication_record(*, item: Item, adjudicator, payload: dict, reason: str) -> Adjudication:
    """Record an adjudicator's decision and make it the item's final (adjudicated) result."""
    if not roles.is_adjudicator(adjudicator):
        raise PermissionDenied("Only adjudicators can decide disputed items.")
    if not (roles.is_admin(adjudicator) or item.project.members.filter(pk=adjudicator.pk).exists()):
        raise PermissionDenied("Only adjudicators on this project can decide its items.")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("reason: say why this is the right decision; it is kept with the result.")
    payload = payload_validate(item=item, payload=payload)
    adjudication = Adjudication(item=item, adjudicator=adjudicator, payload=payload, reason=reason)
    adjudication.full_clean()
    adjudication.save()

    result, _ = ItemResult.objects.select_for_update().get_or_create(item=item, defaults={"kind": item.kind})
    annotations = list(Annotation.objects.filter(item=item).select_related("rubric_version").order_by("reviewer_id"))
    version = None
    if item.kind == TaskKind.RUBRIC:
        annotations, version = latest_version_annotations(annotations)
    result.kind = item.kind
    result.status = ItemResult.Status.ADJUDICATED
    result.payload = payload
    result.reviewer_ids = [a.reviewer_id for a in annotations]
    result.rubric_version = version
    result.agreement = agreement_with(
        item.kind,
        payload,
        [a.payload for a in annotations],
        tolerance=item.project.score_tolerance,
        criteria=criteria_by_key(version),
    )
    result.decided_at = timezone.now()
    result.full_clean(exclude=["reviewer_ids"])
    result.save()
    return adjudication
