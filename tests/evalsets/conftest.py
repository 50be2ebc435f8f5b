"""Eval items built straight with the ORM: an item, its reviews and its result."""

import hashlib
import itertools

import pytest

from annotate.models import Annotation, Item, ItemResult, Rubric, RubricVersion

_seq = itertools.count(1)


def gold_payload(answer: str) -> dict:
    return {"action": "write", "answer": answer, "source_index": None, "reason": ""}


def preference_payload(chosen: int = 0, rejected: int = 1, choice: str = "response") -> dict:
    return {"choice": choice, "chosen": chosen, "rejected": rejected, "strength": "clear", "rationale": ""}


def rubric_payload(scores: dict, response_index: int = 0) -> dict:
    return {"response_index": response_index, "scores": scores}


@pytest.fixture
def rubric_version(project):
    rubric = Rubric.objects.create(project=project, name="Helpfulness")
    return RubricVersion.objects.create(
        rubric=rubric,
        number=1,
        status=RubricVersion.Status.ACTIVE,
        criteria=[{"key": "helpful", "name": "Helpful", "scale": "ordinal", "levels": []}],
    )


@pytest.fixture
def make_item(project, alice, bob, carol):
    """make_item(kind, prompt=..., payload=..., agreeing=2, status="consensus", ...) -> Item.

    ``agreeing`` reviewers submit the result's payload; ``disagreeing`` ones submit something else.
    """

    def make(
        kind: str = "gold",
        *,
        prompt: str | None = None,
        payload: dict | None = None,
        status: str = ItemResult.Status.CONSENSUS,
        agreeing: int = 2,
        disagreeing: int = 0,
        agreement: float | None = None,
        provenance: str = "human",
        split: str = "eval",
        responses: list | None = None,
        messages: list | None = None,
        rubric_version=None,
        result: bool = True,
    ) -> Item:
        n = next(_seq)
        prompt = prompt if prompt is not None else f"Question number {n}: how do I do thing {n}?"
        if payload is None:
            payload = {
                "gold": gold_payload(f"Answer {n}: do it like this."),
                "preference": preference_payload(),
                "rubric": rubric_payload({"helpful": 4}),
            }[kind]
        item = Item.objects.create(
            project=project,
            kind=kind,
            prompt=prompt,
            messages=messages,
            responses=responses
            if responses is not None
            else [{"text": f"Good response {n}", "model": "a"}, {"text": f"Poor response {n}", "model": "b"}],
            provenance=provenance,
            content_hash=hashlib.sha256(f"{n}:{prompt}".encode()).hexdigest(),
            split=split,
        )
        reviewers = [alice, bob, carol][: agreeing + disagreeing]
        for i, reviewer in enumerate(reviewers):
            given = payload if i < agreeing else {**payload, "disagrees": True}
            Annotation.objects.create(
                item=item, reviewer=reviewer, kind=kind, payload=given, rubric_version=rubric_version
            )
        if result:
            total = max(1, len(reviewers))
            ItemResult.objects.create(
                item=item,
                kind=kind,
                status=status,
                payload=payload,
                agreement=agreement if agreement is not None else round(agreeing / total, 4),
                reviewer_ids=[r.pk for r in reviewers],
                rubric_version=rubric_version,
            )
        return item

    return make


@pytest.fixture
def freeze(project, admin_user):
    from evalsets.services import evalset_freeze

    def _freeze(changelog: str = "First cut of the eval set.", user=None):
        return evalset_freeze(project=project, user=user or admin_user, changelog=changelog)

    return _freeze
