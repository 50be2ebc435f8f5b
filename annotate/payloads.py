"""What a reviewer judged, per task kind, as typed values: the shape of every annotation payload.

``Annotation.payload``, ``AnnotationRevision.payload``, ``ItemResult.payload`` and
``Adjudication.payload`` all hold one of these as JSON. Responses are named by their index into
``Item.responses``, never by the position a reviewer saw them in, so a stored judgement does not depend
on how it was displayed. Nothing here knows about HTTP: the page forms (``annotate/forms.py``) and
any other entry point validate input into these values, and services take them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import models


class GoldAction(models.TextChoices):
    ACCEPT = "accept", "Accept the selected candidate"
    EDIT = "edit", "Edit the selected candidate"
    WRITE = "write", "Write one from scratch"
    UNUSABLE = "unusable", "Mark the item unusable"


class PreferenceChoice(models.TextChoices):
    RESPONSE = "response", "One response is better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"


class Strength(models.TextChoices):
    SLIGHT = "slight", "Slightly better"
    CLEAR = "clear", "Clearly better"


# Gold actions that carry a written answer, and those that start from a candidate response.
ANSWER_ACTIONS = (GoldAction.EDIT, GoldAction.WRITE)
SOURCE_ACTIONS = (GoldAction.ACCEPT, GoldAction.EDIT)


@dataclass(frozen=True, slots=True)
class GoldPayload:
    action: str
    answer: str = ""
    source_index: int | None = None
    reason: str = ""

    kind = "gold"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PreferencePayload:
    choice: str
    chosen: int | None = None
    rejected: int | None = None
    strength: str | None = None
    rationale: str = ""

    kind = "preference"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RubricPayload:
    """Scores of one response (``response_index`` into ``Item.responses``; None when the item has none)."""

    response_index: int | None
    scores: dict[str, Any] = field(default_factory=dict)

    kind = "rubric"

    def to_json(self) -> dict[str, Any]:
        return {"response_index": self.response_index, "scores": dict(self.scores)}


Payload = GoldPayload | PreferencePayload | RubricPayload
PAYLOAD_TYPES: dict[str, type] = {"gold": GoldPayload, "preference": PreferencePayload, "rubric": RubricPayload}


def payload_from_json(kind: str, data: dict) -> Payload:
    """A stored payload as its typed value; keys a kind does not have are dropped."""
    cls = PAYLOAD_TYPES[kind]
    if cls is RubricPayload:
        return RubricPayload(response_index=data.get("response_index"), scores=dict(data.get("scores") or {}))
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in data.items() if k in names})
