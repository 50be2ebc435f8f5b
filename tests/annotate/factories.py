"""Items and annotations made straight with the ORM, for the agreement, rubric and report tests."""

import itertools

from annotate.models import Annotation, Item

_counter = itertools.count(1)


def make_item(project, kind="rubric", *, responses=2, **fields) -> Item:
    n = next(_counter)
    fields.setdefault("split", "train")
    return Item.objects.create(
        project=project,
        kind=kind,
        prompt=fields.pop("prompt", f"Prompt {n}"),
        responses=[{"text": f"Response {i} of {n}", "model": "m"} for i in range(responses)],
        content_hash=f"hash-{n:08d}",
        **fields,
    )


def annotate(item, reviewer, payload, *, version=None, display_order=None) -> Annotation:
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
