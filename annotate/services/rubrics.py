"""Rubrics and the agreement on them: versions, sign-off, calibration, activation, re-review.

A version is a draft until proposed; from then on its criteria are frozen (a database trigger
refuses the UPDATE too). It becomes the project's active version once
``project.rubric_signoffs_required`` members have signed it off and, when the project asks for
calibration, every reviewer has scored every calibration item under it and each criterion's
Krippendorff's alpha reaches ``project.calibration_threshold``. Until then scoring uses the
previously active version (``annotate.selectors.rubric_version_active``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from annotate import agreement, selectors
from annotate.models import (
    Annotation,
    AnnotationRevision,
    Item,
    ItemResult,
    Lease,
    Project,
    Rubric,
    RubricSignoff,
    RubricVersion,
    TaskKind,
)
from annotate.services.queue import lease_bulk_write_turn

SCALES = ("nominal", "ordinal", "interval", "binary")
KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
LEVEL_OF_MEASUREMENT = {"nominal": "nominal", "binary": "nominal", "ordinal": "ordinal", "interval": "interval"}


def criteria_validate(criteria) -> list[dict]:
    """Check a criteria list and return it cleaned; errors name the criterion and level to fix."""
    if not isinstance(criteria, list) or not criteria:
        raise ValidationError("A rubric version needs a list of one or more criteria.")
    errors, cleaned, seen = [], [], set()
    for i, c in enumerate(criteria):
        where = f"criteria[{i}]"
        if not isinstance(c, dict):
            errors.append(f"{where}: expected an object with key, name, scale and levels.")
            continue
        key = c.get("key")
        if not isinstance(key, str) or not KEY_RE.match(key):
            errors.append(f"{where}.key: use lowercase letters, digits and _ (starting with a letter); got {key!r}.")
        elif key in seen:
            errors.append(f"{where}.key: {key!r} is used twice; keys must be unique.")
        seen.add(key)
        name = str(c.get("name") or "").strip()
        if not name:
            errors.append(f"{where}.name: give the criterion a name.")
        scale = c.get("scale")
        if scale not in SCALES:
            errors.append(f"{where}.scale: choose one of {', '.join(SCALES)}; got {scale!r}.")
        levels = c.get("levels")
        if not isinstance(levels, list) or len(levels) < 2:
            errors.append(f"{where}.levels: give at least two levels.")
            continue
        if scale == "binary" and len(levels) != 2:
            errors.append(f"{where}.levels: a binary criterion has exactly two levels; got {len(levels)}.")
        clean_levels, values = [], set()
        for j, lv in enumerate(levels):
            lwhere = f"{where}.levels[{j}]"
            if not isinstance(lv, dict):
                errors.append(f"{lwhere}: expected an object with value, label, description and optional example.")
                continue
            value = lv.get("value")
            if scale in ("ordinal", "interval") and (isinstance(value, bool) or not isinstance(value, int | float)):
                errors.append(f"{lwhere}.value: a {scale} level needs a number; got {value!r}.")
            elif value is None or (isinstance(value, str) and not value.strip()):
                errors.append(f"{lwhere}.value: give the level a value.")
            elif repr(value) in values:
                errors.append(f"{lwhere}.value: {value!r} appears twice in this criterion.")
            values.add(repr(value))
            if not str(lv.get("description") or "").strip():
                errors.append(f"{lwhere}.description: describe what this level means.")
            clean_levels.append(
                {
                    "value": value,
                    "label": str(lv.get("label") or value),
                    "description": str(lv.get("description") or ""),
                    "example": str(lv.get("example") or ""),
                }
            )
        cleaned.append({"key": key, "name": name, "scale": scale, "levels": clean_levels})
    if errors:
        raise ValidationError(errors)
    return cleaned


@transaction.atomic
def rubric_create(*, project: Project, name: str) -> Rubric:
    """Create a rubric for a project."""
    rubric = Rubric(project=project, name=name.strip())
    rubric.full_clean()
    rubric.save()
    return rubric


@transaction.atomic
def rubric_version_create(*, rubric: Rubric, criteria: list, created_by, notes: str = "") -> RubricVersion:
    """Add a draft version with the next number."""
    last = RubricVersion.objects.select_for_update().filter(rubric=rubric).order_by("-number").first()
    version = RubricVersion(
        rubric=rubric,
        number=(last.number + 1) if last else 1,
        criteria=criteria_validate(criteria),
        notes=notes,
        created_by=created_by,
    )
    version.full_clean()
    version.save()
    return version


@transaction.atomic
def rubric_version_update(*, version: RubricVersion, criteria: list, notes: str = "") -> RubricVersion:
    """Change a draft's criteria; proposed versions are immutable."""
    version = RubricVersion.objects.select_for_update().get(pk=version.pk)
    if version.status != RubricVersion.Status.DRAFT:
        raise ValidationError(f"Version {version.number} is {version.status} and immutable: create a new version.")
    version.criteria = criteria_validate(criteria)
    version.notes = notes
    version.full_clean()
    version.save()
    return version


@transaction.atomic
def rubric_version_propose(*, version: RubricVersion) -> RubricVersion:
    """Freeze a draft and start collecting sign-offs."""
    version = RubricVersion.objects.select_for_update().get(pk=version.pk)
    if version.status != RubricVersion.Status.DRAFT:
        raise ValidationError(f"Version {version.number} is already {version.status}; only drafts can be proposed.")
    criteria_validate(version.criteria)
    version.status = RubricVersion.Status.PROPOSED
    version.proposed_at = timezone.now()
    version.save(update_fields=["status", "proposed_at"])
    return _advance(version)


@transaction.atomic
def rubric_signoff(*, version: RubricVersion, reviewer) -> RubricSignoff:
    """Record that a project member agrees with a proposed version; activates it when the rules are met."""
    version = RubricVersion.objects.select_for_update().select_related("rubric__project").get(pk=version.pk)
    project = version.rubric.project
    if not project.members.filter(pk=reviewer.pk).exists():
        raise PermissionDenied("Only project members can sign off a rubric.")
    if version.status != RubricVersion.Status.PROPOSED:
        raise ValidationError(f"Version {version.number} is {version.status}; only proposed versions take sign-offs.")
    if RubricSignoff.objects.filter(version=version, reviewer=reviewer).exists():
        raise ValidationError(f"{reviewer} has already signed off version {version.number}.")
    signoff = RubricSignoff(version=version, reviewer=reviewer)
    signoff.full_clean()
    signoff.save()
    _advance(version)
    return signoff


@transaction.atomic
def calibration_item_add(*, item: Item) -> Item:
    """Make a rubric item a calibration item; only items nobody has been served yet qualify."""
    item = Item.objects.select_for_update().get(pk=item.pk)
    if item.kind != TaskKind.RUBRIC:
        raise ValidationError(f"Item {item.pk} is a {item.kind} item; calibration items are rubric items.")
    if item.is_check:
        raise ValidationError(f"Item {item.pk} is a check item; choose another.")
    if Lease.objects.filter(item=item).exists() or Annotation.objects.filter(item=item).exists():
        raise ValidationError(f"Item {item.pk} has already been served to reviewers; choose an unreviewed item.")
    item.is_calibration = True
    item.save(update_fields=["is_calibration"])
    return item


@dataclass
class CalibrationStatus:
    items: int
    reviewers: list[str]
    missing: dict[str, int] = field(default_factory=dict)  # reviewer → calibration items not yet scored
    alphas: dict[str, float | None] = field(default_factory=dict)
    threshold: float = 0.0

    @property
    def complete(self) -> bool:
        return self.items > 0 and bool(self.reviewers) and not self.missing

    @property
    def passed(self) -> bool:
        return (
            self.complete
            and bool(self.alphas)
            and all(a is not None and a >= self.threshold for a in self.alphas.values())
        )

    @property
    def failing(self) -> list[str]:
        return [k for k, a in self.alphas.items() if a is None or a < self.threshold]


def calibration_evaluate(*, version: RubricVersion) -> CalibrationStatus:
    """Who still has calibration items to score, and each criterion's alpha under this version."""
    project = version.rubric.project
    items = list(selectors.calibration_items(project=project).values_list("id", flat=True))
    reviewers = list(selectors.calibration_reviewers(project=project))
    rows = list(
        Annotation.objects.filter(item_id__in=items, rubric_version=version, reviewer__in=reviewers).values_list(
            "item_id", "reviewer_id", "payload"
        )
    )
    done: dict[int, int] = {}
    for _, reviewer_id, _ in rows:
        done[reviewer_id] = done.get(reviewer_id, 0) + 1
    status = CalibrationStatus(
        items=len(items),
        reviewers=[r.username for r in reviewers],
        missing={r.username: len(items) - done.get(r.pk, 0) for r in reviewers if done.get(r.pk, 0) < len(items)},
        threshold=project.calibration_threshold,
    )
    unit_index = {item_id: i for i, item_id in enumerate(items)}
    for criterion in version.criteria:
        units, values = [], []
        for item_id, _, payload in rows:
            value = (payload.get("scores") or {}).get(criterion["key"])
            if value is not None:
                units.append(unit_index[item_id])
                values.append(value)
        domain = [lv["value"] for lv in criterion["levels"]]
        alpha = float("nan")
        if values:
            level = LEVEL_OF_MEASUREMENT[criterion["scale"]]
            codes = _codes(values, domain, level)
            counts = agreement.value_counts(np.asarray(units), codes, len(items), len(domain))
            alpha = agreement.krippendorff_alpha(counts, _numeric_domain(domain, level), level)
            if np.isnan(alpha) and counts.sum() and np.count_nonzero(counts.sum(axis=0)) == 1:
                alpha = 1.0  # everyone gave every item the same value: perfect, if uninformative, agreement
        status.alphas[criterion["key"]] = None if np.isnan(alpha) else float(alpha)
    return status


def _codes(values: list, domain: list, level: str) -> np.ndarray:
    index = {repr(v): i for i, v in enumerate(_sorted_domain(domain, level))}
    return np.asarray([index[repr(v)] for v in values], dtype=np.int64)


def _sorted_domain(domain: list, level: str) -> list:
    return sorted(domain) if level in ("ordinal", "interval") else list(domain)


def _numeric_domain(domain: list, level: str) -> np.ndarray:
    if level in ("ordinal", "interval"):
        return np.asarray(sorted(domain), dtype=np.float64)
    return np.arange(len(domain), dtype=np.float64)


@transaction.atomic
def calibration_score_submit(*, version: RubricVersion, item: Item, reviewer, payload: dict) -> Annotation:
    """Store a reviewer's calibration scores under a version (a new revision if they scored the item before)."""
    version = RubricVersion.objects.select_related("rubric__project").get(pk=version.pk)
    project = version.rubric.project
    if item.project_id != project.pk or not item.is_calibration:
        raise ValidationError(f"Item {item.pk} is not a calibration item of {project}.")
    if version.status != RubricVersion.Status.CALIBRATING:
        raise ValidationError(f"Version {version.number} is {version.status}, not calibrating.")
    if not selectors.calibration_reviewers(project=project).filter(pk=reviewer.pk).exists():
        raise PermissionDenied("Only the project's reviewers take part in calibration.")
    payload = rubric_payload_validate(payload, version)
    annotation = Annotation.objects.select_for_update().filter(item=item, reviewer=reviewer).first()
    if annotation is None:
        annotation = Annotation(item=item, reviewer=reviewer, kind=TaskKind.RUBRIC, payload=payload, revision=1)
    else:
        annotation.revision += 1
        annotation.payload = payload
    annotation.rubric_version = version
    annotation.full_clean(exclude=["display_order"])
    annotation.save()
    AnnotationRevision.objects.create(
        annotation=annotation, number=annotation.revision, payload=payload, rubric_version=version
    )
    _advance(version)
    return annotation


def rubric_payload_validate(payload: dict, version: RubricVersion) -> dict:
    """A rubric payload whose every criterion has one of its levels; errors name the criterion."""
    scores = (payload or {}).get("scores")
    if not isinstance(scores, dict):
        raise ValidationError('A rubric payload needs "scores": {criterion_key: value}.')
    errors, clean = [], {}
    for c in version.criteria:
        allowed = [lv["value"] for lv in c["levels"]]
        value = scores.get(c["key"])
        if value is None:
            errors.append(f"{c['name']}: choose a level.")
            continue
        match = next((a for a in allowed if a == value or str(a) == str(value)), None)
        if match is None:
            errors.append(f"{c['name']}: {value!r} is not one of {', '.join(map(str, allowed))}.")
        clean[c["key"]] = match
    unknown = sorted(set(scores) - {c["key"] for c in version.criteria})
    if unknown:
        errors.append(
            f"Unknown criteria {', '.join(unknown)}: this version has {', '.join(c['key'] for c in version.criteria)}."
        )
    if errors:
        raise ValidationError(errors)
    return {"response_index": payload.get("response_index"), "scores": clean}


def _advance(version: RubricVersion) -> RubricVersion:
    """Move a proposed version on once the sign-off and calibration rules allow."""
    project = version.rubric.project
    if version.status == RubricVersion.Status.PROPOSED:
        if version.signoffs.count() < project.rubric_signoffs_required:
            return version
        if project.calibration_required:
            version.status = RubricVersion.Status.CALIBRATING
            version.save(update_fields=["status"])
        else:
            return _activate(version)
    if version.status == RubricVersion.Status.CALIBRATING and calibration_evaluate(version=version).passed:
        return _activate(version)
    return version


def _activate(version: RubricVersion) -> RubricVersion:
    now = timezone.now()
    # One active version per project: the one it replaces retires.
    RubricVersion.objects.filter(rubric__project=version.rubric.project, status=RubricVersion.Status.ACTIVE).exclude(
        pk=version.pk
    ).update(status=RubricVersion.Status.RETIRED)
    version.status = RubricVersion.Status.ACTIVE
    version.activated_at = now
    version.save(update_fields=["status", "activated_at"])
    return version


@transaction.atomic
def rubric_version_activate(*, version: RubricVersion) -> RubricVersion:
    """Activate a version whose sign-offs (and calibration, if required) are complete; says what is missing."""
    version = RubricVersion.objects.select_for_update().select_related("rubric__project").get(pk=version.pk)
    project = version.rubric.project
    if version.status == RubricVersion.Status.ACTIVE:
        return version
    if version.status not in (RubricVersion.Status.PROPOSED, RubricVersion.Status.CALIBRATING):
        raise ValidationError(f"Version {version.number} is {version.status}: propose it first.")
    signed = version.signoffs.count()
    if signed < project.rubric_signoffs_required:
        raise ValidationError(
            f"Version {version.number} has {signed} of {project.rubric_signoffs_required} sign-offs: "
            "ask more reviewers to sign it off."
        )
    if project.calibration_required:
        status = calibration_evaluate(version=version)
        if not status.complete:
            if status.items == 0:
                raise ValidationError("The project requires calibration but has no calibration items: add some.")
            left = ", ".join(f"{name} ({n})" for name, n in status.missing.items())
            raise ValidationError(f"Calibration is not complete; still to score: {left}.")
        if not status.passed:
            failing = ", ".join(f"{k} (α={status.alphas[k]})" for k in status.failing)
            raise ValidationError(
                f"Calibration agreement is below the threshold {project.calibration_threshold} on: {failing}. "
                "Discuss the disagreements, then propose a clarified version."
            )
    return _activate(version)


def _stale_annotations(version: RubricVersion):
    return Annotation.objects.filter(
        item__project=version.rubric.project, item__kind=TaskKind.RUBRIC, item__is_calibration=False
    ).exclude(rubric_version=version)


def rubric_items_send_back_preview(*, version: RubricVersion) -> dict[str, int]:
    """How many items and reviews a send-back would touch (adjudicated items stay as decided)."""
    stale = _stale_annotations(version)
    adjudicated = set(
        ItemResult.objects.filter(item__in=stale.values("item_id"), status=ItemResult.Status.ADJUDICATED).values_list(
            "item_id", flat=True
        )
    )
    items = set(stale.values_list("item_id", flat=True)) - adjudicated
    reviews = stale.exclude(item_id__in=adjudicated).count()
    return {"items": len(items), "reviews": reviews, "adjudicated_kept": len(adjudicated)}


@transaction.atomic
def rubric_items_send_back(*, version: RubricVersion) -> int:
    """Send items scored under older versions back to their reviewers for re-review; returns the item count."""
    lease_bulk_write_turn(wait=True)
    version = RubricVersion.objects.select_related("rubric__project").get(pk=version.pk)
    if version.status != RubricVersion.Status.ACTIVE:
        raise ValidationError(f"Version {version.number} is {version.status}: only the active version can send back.")
    stale = list(
        _stale_annotations(version)
        .exclude(item__result__status=ItemResult.Status.ADJUDICATED)
        .values_list("item_id", "reviewer_id")
    )
    if not stale:
        return 0
    item_ids = {item_id for item_id, _ in stale}
    pairs = set(stale)
    lease_ids = [
        pk
        for pk, item_id, reviewer_id in Lease.objects.select_for_update()
        .filter(item_id__in=item_ids)
        .values_list("id", "item_id", "reviewer_id")
        if (item_id, reviewer_id) in pairs
    ]
    Lease.objects.filter(id__in=lease_ids).update(status=Lease.Status.RELEASED, updated_at=timezone.now())
    ItemResult.objects.filter(item_id__in=item_ids).exclude(status=ItemResult.Status.ADJUDICATED).update(
        status=ItemResult.Status.PENDING, payload=None, agreement=None, decided_at=None, updated_at=timezone.now()
    )
    return len(item_ids)
