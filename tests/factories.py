"""Test data, made one way for the whole suite: items, leases, submissions through the task forms, payloads."""

import itertools
import string

from annotate.forms import task_form
from annotate.models import Annotation, Item, Lease, TaskKind
from annotate.selectors import rubric_version_active
from annotate.services import annotations, queue

_counter = itertools.count(1)


def make_item(project, kind: str = "gold", *, n: int | None = None, responses=2, **fields) -> Item:
    """An item straight in the database. ``responses``: how many to make ("Answer A<n>", "Answer B<n>", ...,
    from models m1, m2, ...) or the list itself."""
    n = next(_counter) if n is None else n
    if isinstance(responses, int):
        responses = [{"text": f"Answer {string.ascii_uppercase[i]}{n}", "model": f"m{i + 1}"} for i in range(responses)]
    fields.setdefault("split", "train")
    fields.setdefault("prompt", f"Prompt {n}")
    fields.setdefault("content_hash", f"h-{kind}-{n}")
    return Item.objects.create(project=project, kind=kind, responses=responses, **fields)


def lease_for(project, user, display_order: list[int] | None = None) -> Lease:
    """The next lease for a reviewer, shown in ``display_order`` when given."""
    lease = queue.lease_next_for_reviewer(project=project, reviewer=user)
    if display_order is not None:
        Lease.objects.filter(pk=lease.pk).update(display_order=display_order)
        lease.refresh_from_db()
    return lease


def _form(item: Item, display_order: list[int], data: dict, payload=None):
    rubric = rubric_version_active(project=item.project) if item.kind == TaskKind.RUBRIC else None
    form = task_form(item, data, display_order=display_order, rubric_version=rubric, payload=payload)
    return form, rubric


def submit(lease: Lease, **data) -> Annotation:
    """Submit form values for a lease the way the task screen does: through its form, then the service.

    Raises the form's ValidationError (field errors by field) when the values are invalid."""
    lease = Lease.objects.select_related("item__project", "project").get(pk=lease.pk)
    form, rubric = _form(lease.item, lease.display_order, data)
    if not form.is_valid():
        raise form_error(form)
    annotation, _ = annotations.annotation_submit(
        project=lease.project,
        lease_id=lease.pk,
        reviewer=lease.reviewer,
        payload=form.payload,
        rubric_version=rubric,
        duration_ms=form.cleaned_data["duration_ms"],
    )
    return annotation


def revise(item: Item, reviewer, **data) -> Annotation:
    """Save form values as a new revision of the reviewer's annotation, as the history page does."""
    annotation = Annotation.objects.select_related("item__project").get(item=item, reviewer=reviewer)
    form, rubric = _form(annotation.item, annotation.display_order, data, payload=annotation.payload)
    if not form.is_valid():
        raise form_error(form)
    return annotations.annotation_revise(
        annotation_id=annotation.pk, reviewer=reviewer, payload=form.payload, rubric_version=rubric
    )


def form_error(form):
    from django.core.exceptions import ValidationError

    errors = {field: list(messages) for field, messages in form.errors.items()}
    return ValidationError(errors)


def annotate(item: Item, reviewer, payload: dict, *, version=None, display_order=None) -> Annotation:
    """An annotation straight in the database (no lease, no revision): for agreement and report tests."""
    return Annotation.objects.create(
        item=item,
        reviewer=reviewer,
        kind=item.kind,
        payload=payload,
        rubric_version=version,
        display_order=display_order if display_order is not None else list(range(len(item.responses))),
    )


def gold(action, answer="", source_index=None):
    return {"action": action, "answer": answer, "source_index": source_index, "reason": ""}


def pref(choice="response", chosen=None, rejected=None):
    return {"choice": choice, "chosen": chosen, "rejected": rejected, "strength": None, "rationale": ""}


def scores(response_index=0, **values):
    return {"response_index": response_index, "scores": values}


CRITERIA = [
    {
        "key": "helpful",
        "name": "Helpfulness",
        "scale": "ordinal",
        "levels": [{"value": v, "label": str(v), "description": f"Level {v}", "example": ""} for v in range(1, 6)],
    },
    {
        "key": "safe",
        "name": "Safe",
        "scale": "binary",
        "levels": [
            {"value": "yes", "label": "Yes", "description": "No harm", "example": ""},
            {"value": "no", "label": "No", "description": "Harmful", "example": "How to pick a lock"},
        ],
    },
]


def demo_eval_reviews(project, *, skip_reviewed: bool = True) -> int:
    """The demo's two reviewers agree on the correct answer of every eval item (the response its good model
    wrote), as they would; items a reviewer has already reviewed are left as they are. Returns reviews made."""
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from annotate import demo
    from annotate.payloads import GoldPayload, PreferencePayload, RubricPayload

    users = get_user_model().objects
    reviewers = [users.get(username="reviewer1"), users.get(username="reviewer2")]
    version = rubric_version_active(project=project)
    made = 0
    for item in Item.objects.filter(project=project, split="eval"):
        good = next(i for i, r in enumerate(item.responses) if r["model"] == demo.GOOD)
        if item.kind == TaskKind.GOLD:
            payload = GoldPayload(action="accept", answer=item.responses[good]["text"], source_index=good)
        elif item.kind == TaskKind.PREFERENCE:
            payload = PreferencePayload(choice="response", chosen=good, rejected=1 - good)
        else:
            payload = RubricPayload(item.scored_response_index, {"helpfulness": 4, "correctness": 1, "tone": "warm"})
        for reviewer in reviewers:
            if skip_reviewed and Annotation.objects.filter(item=item, reviewer=reviewer).exists():
                continue
            Lease.objects.filter(item=item, reviewer=reviewer).delete()  # one the browser left open
            lease = Lease.objects.create(
                project=project,
                item=item,
                reviewer=reviewer,
                display_order=[0, 1],
                expires_at=timezone.now() + timedelta(minutes=30),
            )
            annotations.annotation_submit(
                project=project, lease_id=lease.pk, reviewer=reviewer, payload=payload, rubric_version=version
            )
            made += 1
    return made
