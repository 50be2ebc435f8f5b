"""Consensus over an item's reviews, by the project's rule.

What counts as "the same judgement", per kind:

- gold: the same action and, for edit/write, the same answer after normalization (Unicode NFKC,
  case-folded, whitespace collapsed); accept agrees on the accepted response index. Gold answers
  are text, so ``mean_within_tolerance`` falls back to majority.
- preference: the same choice category: the same chosen response, or tie, or both_bad. The
  ``mean_within_tolerance`` rule falls back to majority here too.
- rubric: every criterion separately, among the reviews made under the newest rubric version
  the item has reviews for, and only between scores of the same response. Nominal and binary
  criteria need a majority (all equal under ``unanimous``). Ordinal and interval criteria agree
  when the spread (max − min) is within ``project.score_tolerance``; the result is the mean
  (interval) or the level nearest the mean (ordinal). One criterion without agreement makes the
  item disputed. Reviews score the item's own scored response (``Item.rubric_response``); reviews
  stored before items named it scored whichever response was shown first and keep that
  ``response_index``: when an item's reviews scored different responses their scores are not
  compared, and the item is disputed for an adjudicator to decide.

``majority`` means more than half. An item needs ``project.overlap_k`` reviews before it is
decided; calibration items are never decided (they calibrate a rubric, they are not data).
An adjudicated result is final and no refresh changes it.

These are pure functions of payloads; ``annotate/services/results.py`` loads the reviews, calls them and
writes the item's result.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence

from annotate.models import Annotation, ConsensusRule, RubricVersion, TaskKind
from annotate.payloads import ANSWER_ACTIONS, GoldAction, PreferenceChoice

NUMERIC_SCALES = ("ordinal", "interval")


def normalize_text(text: str | None) -> str:
    """Text as compared for agreement: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def gold_key(payload: dict) -> tuple:
    action = payload.get("action")
    if action == GoldAction.ACCEPT:
        return (GoldAction.ACCEPT.value, payload.get("source_index"))
    if action in ANSWER_ACTIONS:
        return ("answer", normalize_text(payload.get("answer")))
    return (action,)


def preference_key(payload: dict) -> tuple:
    choice = payload.get("choice")
    if choice == PreferenceChoice.RESPONSE:
        return (PreferenceChoice.RESPONSE.value, payload.get("chosen"))
    return (choice,)


def preference_category(payload: dict) -> str:
    """A preference judgement as one nominal category: 'response:<index>', 'tie' or 'both_bad'."""
    key = preference_key(payload)
    return f"response:{key[1]}" if key[0] == PreferenceChoice.RESPONSE else str(key[0])


def gold_category(payload: dict) -> str:
    """The gold action as a nominal category (accept, edit, write, unusable)."""
    return str(payload.get("action"))


def criteria_by_key(version: RubricVersion | None) -> dict[str, dict]:
    return {c["key"]: c for c in (version.criteria if version else [])}


def payload_key(kind: str, payload: dict) -> tuple:
    """A hashable key: two payloads of a categorical kind agree when their keys are equal."""
    if kind == TaskKind.GOLD:
        return gold_key(payload)
    if kind == TaskKind.PREFERENCE:
        return preference_key(payload)
    scores = payload.get("scores") or {}
    return (payload.get("response_index"), tuple(sorted((k, repr(v)) for k, v in scores.items())))


def _majority(keys: Sequence, *, unanimous: bool) -> tuple[bool, object, int]:
    """(rule met, top key, its count); the key itself may be None (e.g. no response index)."""
    if not keys:
        return False, None, 0
    (top, count), *_ = Counter(keys).most_common(1)
    needed = len(keys) if unanimous else len(keys) // 2 + 1
    return count >= needed, top, count


def _numeric_consensus(values: list[float], criterion: dict, *, tolerance: float, unanimous: bool):
    if unanimous:
        return (values[0], 1.0) if all(v == values[0] for v in values) else (None, 0.0)
    if max(values) - min(values) > tolerance:
        return None, 0.0
    mean = sum(values) / len(values)
    if criterion.get("scale") == "ordinal":
        levels = [lv["value"] for lv in criterion.get("levels") or [] if isinstance(lv.get("value"), int | float)]
        if levels:
            # The level nearest the mean; ties go to the lower level.
            return min(sorted(levels), key=lambda lv: abs(lv - mean)), 1.0
        return round(mean), 1.0
    return mean, 1.0


def rubric_consensus(
    payloads: list[dict], criteria: dict[str, dict], *, rule: str, tolerance: float
) -> tuple[dict | None, float]:
    """The rubric result payload (or None when some criterion disagrees) and the mean agreement share.

    Scores are compared only between reviews of the same response: when the reviews scored different
    responses (see the module docstring) nothing is decided, and the agreement is the share of reviews
    that scored the most scored response."""
    indices = Counter(p.get("response_index") for p in payloads)
    if len(indices) > 1:
        return None, max(indices.values()) / len(payloads)
    unanimous = rule == ConsensusRule.UNANIMOUS
    keys = set(criteria) or {k for p in payloads for k in (p.get("scores") or {})}
    scores: dict = {}
    shares: list[float] = []
    decided = True
    for key in sorted(keys):
        values = [p["scores"][key] for p in payloads if key in (p.get("scores") or {})]
        if not values:
            continue
        criterion = criteria.get(key, {})
        numeric = criterion.get("scale") in NUMERIC_SCALES and all(isinstance(v, int | float) for v in values)
        if numeric:
            value, share = _numeric_consensus(values, criterion, tolerance=tolerance, unanimous=unanimous)
        else:
            met, top, count = _majority([repr(v) for v in values], unanimous=unanimous)
            share = count / len(values)
            value = next(v for v in values if repr(v) == top) if met else None
        shares.append(share)
        if value is None:
            decided = False
        else:
            scores[key] = value
    agreement = sum(shares) / len(shares) if shares else 1.0
    if not decided:
        return None, agreement
    (response_index,) = indices or [None]
    return {"response_index": response_index, "scores": scores}, agreement


def decide(
    kind: str, payloads: list[dict], *, rule: str, tolerance: float, criteria: dict[str, dict] | None = None
) -> tuple[dict | None, float]:
    """The consensus payload under a rule (None when disputed) and the share of reviews agreeing with it."""
    if kind == TaskKind.RUBRIC:
        return rubric_consensus(payloads, criteria or {}, rule=rule, tolerance=tolerance)
    keys = [payload_key(kind, p) for p in payloads]
    met, winner, count = _majority(keys, unanimous=rule == ConsensusRule.UNANIMOUS)
    share = count / len(payloads) if payloads else 0.0
    if not met:
        return None, share
    return payloads[keys.index(winner)], share


def agreement_with(kind: str, payload: dict, payloads: list[dict], *, tolerance: float, criteria=None) -> float:
    """Share of reviews that agree with a given result payload (used for adjudicated results)."""
    if not payloads:
        return 0.0
    if kind != TaskKind.RUBRIC:
        key = payload_key(kind, payload)
        return sum(payload_key(kind, p) == key for p in payloads) / len(payloads)
    criteria = criteria or {}
    target = payload.get("scores") or {}
    shares = []
    for key, value in target.items():
        values = [p["scores"][key] for p in payloads if key in (p.get("scores") or {})]
        if not values:
            continue
        numeric = criteria.get(key, {}).get("scale") in NUMERIC_SCALES and isinstance(value, int | float)
        if numeric:
            shares.append(sum(isinstance(v, int | float) and abs(v - value) <= tolerance for v in values) / len(values))
        else:
            shares.append(sum(v == value for v in values) / len(values))
    return sum(shares) / len(shares) if shares else 0.0


def latest_version_annotations(annotations: list[Annotation]) -> tuple[list[Annotation], RubricVersion | None]:
    """Rubric reviews made under the newest rubric version among them (older ones await re-review)."""
    versions = {a.rubric_version_id: a.rubric_version for a in annotations if a.rubric_version_id}
    if not versions:
        return annotations, None
    newest = max(versions.values(), key=lambda v: (v.activated_at or v.created_at, v.number, v.pk))
    return [a for a in annotations if a.rubric_version_id == newest.pk], newest
