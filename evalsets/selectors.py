"""Reads for eval sets, with permission built in."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404

from annotate import roles
from annotate.models import Annotation, Item, ItemResult, Project, Provenance, Split, TaskKind
from annotate.selectors import project_list_for_user
from evalsets.export import CANONICAL_FIELDS
from evalsets.models import ContaminationCheckRun, ContaminationReport, EvalRecord, EvalSetVersion, HashVerification
from training.models import SnapshotCheck, TrainingSnapshot

MIN_AGREEING_REVIEWS = 2
FROZEN_STATUSES = (ItemResult.Status.CONSENSUS, ItemResult.Status.ADJUDICATED)


# --- who may see what ----------------------------------------------------------------------------


def evalset_projects_for_user(*, user) -> QuerySet[Project]:
    """Projects whose eval sets a user may see: all for admins; for reviewers, member projects that allow it."""
    projects = project_list_for_user(user=user)
    if roles.is_admin(user):
        return projects
    return projects.filter(reviewers_see_evalsets=True)


def evalset_project_get_for_user(*, user, slug: str) -> Project:
    """A project's eval sets page: 404 for non-members, 403 for members when the project hides eval sets."""
    try:
        project = project_list_for_user(user=user).get(slug=slug)
    except Project.DoesNotExist:
        raise Http404("No such project.") from None
    if not (roles.is_admin(user) or project.reviewers_see_evalsets):
        raise PermissionDenied("This project's eval sets are visible to admins only.")
    return project


def evalset_project_get_for_admin(*, user, slug: str) -> Project:
    project = evalset_project_get_for_user(user=user, slug=slug)
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins freeze eval sets.")
    return project


def evalset_version_list_for_user(*, user) -> QuerySet[EvalSetVersion]:
    return (
        EvalSetVersion.objects.filter(project__in=evalset_projects_for_user(user=user))
        .select_related("project", "frozen_by")
        .order_by("project__name", "-number")
    )


def evalset_version_get_for_user(*, user, version_id: int) -> EvalSetVersion:
    """A version, with the same rule as its project: 404 for non-members, 403 when hidden from reviewers."""
    try:
        version = EvalSetVersion.objects.select_related("project", "frozen_by", "previous").get(pk=version_id)
    except EvalSetVersion.DoesNotExist:
        raise Http404("No such eval set version.") from None
    evalset_project_get_for_user(user=user, slug=version.project.slug)
    return version


def evalset_version_list_for_admin(*, user, project: str | None = None) -> QuerySet[EvalSetVersion]:
    """Every frozen version (admins: eval text leaves Goldset through the API), optionally of one project."""
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins read eval sets through the API.")
    versions = EvalSetVersion.objects.select_related("project", "frozen_by")
    return versions.filter(project__slug=project) if project else versions


def evalset_version_get_for_admin(*, user, version_id: int) -> EvalSetVersion:
    """A version as its page finds it (404 for non-members), for admins only (403 for members)."""
    version = evalset_version_get_for_user(user=user, version_id=version_id)
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins read eval sets through the API.")
    return version


# --- freezing ------------------------------------------------------------------------------------


@dataclass
class FreezePlan:
    """What a freeze would store now: the records in canonical form, and the eval items refused."""

    records: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)


def _response_text(item: Item, index: Any, what: str) -> str:
    if not isinstance(index, int) or not 0 <= index < len(item.responses or []):
        raise ValueError(f"{what} points at response {index!r}, but the item has {len(item.responses or [])}")
    response = item.responses[index]
    text = response.get("text") if isinstance(response, dict) else response
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} (response {index}) has no text")
    return text


def _answer_fields(item: Item, result: ItemResult) -> dict[str, Any]:
    """The record's answer fields from the result payload; ValueError (the refusal reason) when unusable."""
    payload = result.payload
    if not isinstance(payload, dict):
        raise ValueError("the result has no payload")
    fields = {"reference": "", "response": "", "chosen": "", "rejected": "", "rubric_scores": None}
    if item.kind == TaskKind.GOLD:
        action = payload.get("action")
        if action == "unusable":
            raise ValueError("reviewers marked the item unusable")
        answer = payload.get("answer") or ""
        if not answer.strip() and action == "accept" and payload.get("source_index") is not None:
            answer = _response_text(item, payload.get("source_index"), "the accepted answer")
        if not answer.strip():
            raise ValueError("the result has no gold answer")
        fields["reference"] = answer
    elif item.kind == TaskKind.PREFERENCE:
        if payload.get("choice") != "response":
            raise ValueError(f"the reviewers' choice is {payload.get('choice')!r}, not a chosen/rejected pair")
        fields["chosen"] = _response_text(item, payload.get("chosen"), "chosen")
        fields["rejected"] = _response_text(item, payload.get("rejected"), "rejected")
        if payload.get("chosen") == payload.get("rejected"):
            raise ValueError("chosen and rejected are the same response")
    elif item.kind == TaskKind.RUBRIC:
        scores = payload.get("scores")
        if not isinstance(scores, dict) or not scores:
            raise ValueError("the result has no rubric scores")
        if result.rubric_version_id is None:
            raise ValueError("the result does not name the rubric version it was scored with")
        fields["rubric_scores"] = scores
        if payload.get("response_index") is not None:
            fields["response"] = _response_text(item, payload["response_index"], "the scored response")
    else:
        raise ValueError(f"unknown task kind {item.kind!r}")
    return fields


def _agreeing_reviews(result: ItemResult, annotations: list[Annotation]) -> int:
    """Human reviews that agree with the result: equal payloads, or agreement × reviewers when the rule
    allows a spread (rubric scores within tolerance)."""
    equal = sum(1 for a in annotations if a.payload == result.payload)
    by_share = 0
    if result.agreement is not None and result.reviewer_ids:
        by_share = int(result.agreement * len(result.reviewer_ids) + 1e-9)
    return max(equal, by_share)


def evalset_freeze_plan(*, project: Project) -> FreezePlan:
    """The records a freeze of the project's eval split would store, and every eval item refused, with why."""
    plan = FreezePlan()
    items = Item.objects.filter(project=project, split=Split.EVAL).select_related("result").order_by("id")
    annotations: dict[int, list[Annotation]] = {}
    for a in Annotation.objects.filter(item__project=project, item__split=Split.EVAL).only("item_id", "payload"):
        annotations.setdefault(a.item_id, []).append(a)
    for item in items:
        result = getattr(item, "result", None)

        def refuse(reason: str, item=item) -> None:
            plan.refusals.append({"item_id": item.pk, "reason": reason})

        if item.provenance == Provenance.LLM_JUDGED:
            refuse("its provenance is llm_judged: LLM-judged items never enter an eval set")
            continue
        if item.provenance == Provenance.MODEL_GENERATED:
            refuse("its responses are model outputs made to judge a model: they never enter an eval set")
            continue
        if result is None or result.status not in FROZEN_STATUSES:
            status = result.status if result else "not reviewed"
            refuse(f"its result is {status}: it needs consensus or an adjudication first")
            continue
        adjudicated = result.status == ItemResult.Status.ADJUDICATED
        agreeing = _agreeing_reviews(result, annotations.get(item.pk, []))
        if not adjudicated and agreeing < MIN_AGREEING_REVIEWS:
            refuse(
                f"only {agreeing} agreeing human review(s): an eval record needs "
                f"{MIN_AGREEING_REVIEWS}, or an adjudication"
            )
            continue
        try:
            answer = _answer_fields(item, result)
        except ValueError as exc:
            refuse(str(exc))
            continue
        plan.records.append(
            {
                "position": len(plan.records),
                "item_id": item.pk,
                "kind": item.kind,
                "prompt": item.prompt,
                "messages": item.messages or None,
                **answer,
                "rubric_version_id": result.rubric_version_id,
                "reviewer_ids": sorted(result.reviewer_ids or []),
                "agreement": result.agreement,
                "agreeing_reviews": agreeing,
                "adjudicated": adjudicated,
                "provenance": item.provenance,
            }
        )
    return plan


# --- reading versions ----------------------------------------------------------------------------


def evalset_records_iter(*, version: EvalSetVersion, chunk_size: int = 5000) -> Iterator[dict[str, Any]]:
    """A version's records as canonical dicts in position order, streamed (flat memory)."""
    rows = (
        EvalRecord.objects.filter(version_id=version.pk)
        .order_by("position")
        .values_list(*CANONICAL_FIELDS)
        .iterator(chunk_size=chunk_size)
    )
    for row in rows:
        yield dict(zip(CANONICAL_FIELDS, row, strict=True))


def evalset_version_info(*, version: EvalSetVersion) -> dict[str, Any]:
    """What an export manifest says about its version (fixed at freeze time)."""
    return {
        "evalset": version.name,
        "project": version.project.slug,
        "version": version.number,
        "version_sha256": version.sha256,
        "counts": version.counts,
        "rubric_versions": version.rubric_versions,
        "created": version.frozen_at.isoformat(),
        "frozen_by": version.frozen_by.get_username(),
    }


def evalset_version_diff(*, version: EvalSetVersion, limit: int = 200) -> dict[str, Any] | None:
    """Items added, removed and changed since the previous version (None for a first version)."""
    if version.previous_id is None:
        return None
    new = dict(EvalRecord.objects.filter(version_id=version.pk).values_list("item_id", "content_hash"))
    old = dict(EvalRecord.objects.filter(version_id=version.previous_id).values_list("item_id", "content_hash"))
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    changed = sorted(i for i in new.keys() & old.keys() if new[i] != old[i])
    prompts = dict(
        EvalRecord.objects.filter(
            version_id__in=[version.pk, version.previous_id], item_id__in=[*added[:limit], *removed[:limit]]
        ).values_list("item_id", "prompt")
    )
    changed_rows = []
    if changed:
        wanted = changed[:limit]
        before = {r.item_id: r for r in EvalRecord.objects.filter(version_id=version.previous_id, item_id__in=wanted)}
        after = {r.item_id: r for r in EvalRecord.objects.filter(version_id=version.pk, item_id__in=wanted)}
        for item_id in wanted:
            changed_rows.append({"item_id": item_id, "before": before[item_id], "after": after[item_id]})
    return {
        "previous": version.previous,
        "added": [{"item_id": i, "prompt": prompts.get(i, "")} for i in added[:limit]],
        "removed": [{"item_id": i, "prompt": prompts.get(i, "")} for i in removed[:limit]],
        "changed": changed_rows,
        "counts": {
            "added": len(added),
            "removed": len(removed),
            "changed": len(changed),
            "unchanged": len(new) - len(added) - len(changed),
        },
        "truncated": max(len(added), len(removed), len(changed)) > limit,
    }


def evalset_version_records_page(*, version: EvalSetVersion, page: int, per_page: int = 50) -> dict[str, Any]:
    page = max(1, page)
    qs = EvalRecord.objects.filter(version_id=version.pk).order_by("position")
    rows = list(qs[(page - 1) * per_page : page * per_page])
    return {
        "records": rows,
        "page": page,
        "has_next": version.record_count > page * per_page,
        "has_previous": page > 1,
    }


def summarize_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, provenance mix and agreement summary stored on a version when it is frozen."""
    counts = Counter(r["kind"] for r in records)
    provenance = Counter(r["provenance"] for r in records)
    shares = [r["agreement"] for r in records if r["agreement"] is not None]
    buckets = {"below 0.5": 0, "0.5–0.75": 0, "0.75–1": 0, "1": 0}
    for s in shares:
        if s >= 1:
            buckets["1"] += 1
        elif s >= 0.75:
            buckets["0.75–1"] += 1
        elif s >= 0.5:
            buckets["0.5–0.75"] += 1
        else:
            buckets["below 0.5"] += 1
    agreement = {
        "mean": round(sum(shares) / len(shares), 4) if shares else None,
        "min": min(shares) if shares else None,
        "adjudicated": sum(1 for r in records if r["adjudicated"]),
        "histogram": buckets,
    }
    return {
        "counts": dict(sorted(counts.items())),
        "provenance_mix": dict(sorted(provenance.items())),
        "agreement": agreement,
    }


# --- training snapshots (the contamination verdict) ----------------------------------------------


def snapshot_get_for_admin(*, user, snapshot_id: int):
    """A training snapshot for its contamination page: admins only."""
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins check training snapshots.")
    try:
        return TrainingSnapshot.objects.get(pk=snapshot_id)
    except TrainingSnapshot.DoesNotExist:
        raise Http404("No such training snapshot.") from None


def snapshot_list_for_admin(*, user) -> list:
    """Training snapshots with their latest contamination verdict (None when never checked): admins only."""
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins check training snapshots.")
    latest = SnapshotCheck.objects.filter(snapshot=OuterRef("pk")).order_by("-checked_at", "-id")
    return list(
        TrainingSnapshot.objects.annotate(
            check_passed=Subquery(latest.values("passed")[:1]), checked_at=Subquery(latest.values("checked_at")[:1])
        ).order_by("-created_at", "-id")[:200]
    )


def contamination_run_get_for_admin(*, user, run_id: int) -> ContaminationCheckRun:
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins check training snapshots.")
    try:
        return ContaminationCheckRun.objects.select_related("snapshot", "verdict").get(pk=run_id)
    except ContaminationCheckRun.DoesNotExist:
        raise Http404("No such contamination check.") from None


def snapshot_contamination_run_pending(*, snapshot) -> ContaminationCheckRun | None:
    """The snapshot's newest check that has not finished yet, if any (its page shows it progress)."""
    return (
        ContaminationCheckRun.objects.filter(snapshot=snapshot)
        .exclude(status__in=ContaminationCheckRun.FINISHED)
        .order_by("-created_at", "-id")
        .first()
    )


def snapshot_latest_check(*, snapshot):
    return snapshot.checks.order_by("-checked_at", "-id").first()


def snapshot_check_pairs(*, check) -> ContaminationReport | None:
    """The offending pairs of a check, eval text included (the check's page, which only admins open)."""
    if check is None:
        return None
    return ContaminationReport.objects.filter(snapshot_check_id=check.pk).first()


def evalset_version_latest_verification(*, version: EvalSetVersion) -> HashVerification | None:
    """The newest recomputation of the version's sha256, or None when it was never verified."""
    return version.verifications.order_by("-verified_at", "-id").first()
