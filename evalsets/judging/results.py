"""Results of a blind comparison and of a capability regression, read on the web side (admins only)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from annotate.agreement import NOMINAL
from annotate.models import Annotation, Item, TaskKind
from evalsets.judging import regression, stats
from evalsets.judging.models import Comparison, ComparisonItem, GenerationRun
from evalsets.models import EvalRecord, EvalSetVersion

META_KEYS = ("category", "difficulty")


def comparison_judgements(comparison: Comparison) -> tuple[list[stats.Judgement], dict[int, ComparisonItem]]:
    """Every current judgement of the comparison's items, in the runs' terms (a / b / tie / both_bad)."""
    links = {link.item_id: link for link in ComparisonItem.objects.filter(comparison=comparison)}
    judgements = []
    annotations = Annotation.objects.filter(item_id__in=list(links), kind=TaskKind.PREFERENCE).select_related(
        "reviewer"
    )
    for annotation in annotations.order_by("item_id", "reviewer_id"):
        link = links[annotation.item_id]
        payload = annotation.payload or {}
        choice = payload.get("choice")
        picked_left = None
        if choice == "response":
            chosen = payload.get("chosen")
            outcome = "a" if chosen == link.a_index else "b"
            order = annotation.display_order or []
            picked_left = bool(order) and order[0] == chosen
        elif choice in ("tie", "both_bad"):
            outcome = choice
        else:
            continue
        judgements.append(
            stats.Judgement(
                item_id=annotation.item_id,
                reviewer=annotation.reviewer.get_username(),
                outcome=outcome,
                picked_left=picked_left,
            )
        )
    return judgements, links


def version_status(version: EvalSetVersion) -> dict:
    """The version's name and hash, and the newest version of its project when this one is superseded."""
    newest = EvalSetVersion.objects.filter(project_id=version.project_id).order_by("-number").first()
    return {
        "name": version.name,
        "sha256": version.sha256,
        "number": version.number,
        "superseded_by": newest.name if newest and newest.number > version.number else None,
        "superseded_by_id": newest.pk if newest and newest.number > version.number else None,
    }


def run_summary(run: GenerationRun) -> dict:
    identity = run.model_identity or {}
    base = identity.get("base_model") or {}
    return {
        "id": run.pk,
        "label": run.label,
        "job_id": run.job_id,
        "base_model": run.base_model,
        "base_model_sha256": base.get("sha256") or base.get("revision") or base.get("id"),
        "adapter_manifest_sha256": identity.get("adapter_manifest_sha256"),
        "decoding": run.decoding,
        "responses_per_second": run.responses_per_second,
    }


def _meta_of(links: dict[int, ComparisonItem]) -> dict[int, dict]:
    """Per comparison item: the eval record's kind and its source item's category and difficulty."""
    records = {r.pk: r for r in EvalRecord.objects.filter(pk__in=[link.record_id for link in links.values()])}
    source_meta = dict(Item.objects.filter(pk__in=[r.item_id for r in records.values()]).values_list("pk", "metadata"))
    meta_of: dict[int, dict] = {}
    for item_id, link in links.items():
        record = records.get(link.record_id)
        metadata = source_meta.get(record.item_id, {}) if record else {}
        if not isinstance(metadata, dict):
            metadata = {}
        meta_of[item_id] = {"kind": record.kind if record else None, **{k: metadata.get(k) for k in META_KEYS}}
    return meta_of


def _evalset_name(version: EvalSetVersion) -> str:
    return f"{version.project.slug}-eval v{version.number}"


def _reviewers_per_item(item_ids) -> float:
    per_item = Counter(item_ids)
    return round(sum(per_item.values()) / len(per_item), 1) if per_item else 0


def comparison_results(comparison: Comparison) -> dict:
    """The results of a comparison in its mode: pairwise, reference or rubric."""
    if comparison.mode == Comparison.Mode.REFERENCE:
        return reference_results(comparison)
    if comparison.mode == Comparison.Mode.RUBRIC:
        return rubric_results(comparison)
    return pairwise_results(comparison)


def pairwise_results(comparison: Comparison) -> dict:
    """Win/tie/loss with CIs, the verdict line, breakdowns, judge agreement and position bias."""
    judgements, links = comparison_judgements(comparison)
    version = comparison.run_a.evalset_version
    meta_of = _meta_of(links)
    overall = stats.win_tie_loss(judgements)
    per_item = Counter(j.item_id for j in judgements)
    alpha = stats.judge_alpha(judgements)
    breakdowns = {}
    for key in (*META_KEYS, "kind"):
        rows = stats.breakdown(judgements, lambda j, key=key: meta_of[j.item_id].get(key))
        if rows:
            breakdowns[key] = rows
    return {
        "mode": comparison.mode,
        "overall": overall,
        "verdict": stats.verdict(
            overall,
            challenger=comparison.run_b.label,
            baseline=comparison.run_a.label,
            evalset=_evalset_name(version),
            reviewers_per_item=_reviewers_per_item(j.item_id for j in judgements),
            alpha=alpha,
        ),
        "alpha": alpha,
        "position_bias": stats.position_bias(judgements),
        "by_meta": breakdowns,
        "by_reviewer": stats.breakdown(judgements, lambda j: j.reviewer),
        "version": version_status(version),
        "runs": {"a": run_summary(comparison.run_a), "b": run_summary(comparison.run_b)},
        "same_decoding": comparison.run_a.decoding == comparison.run_b.decoding,
        "items_total": len(links),
        "items_judged": len(per_item),
    }


def _queue_rubric_annotations(comparison: Comparison, links: dict[int, ComparisonItem]):
    """Current rubric annotations of the comparison's items that score run A's response (the one judged)."""
    annotations = Annotation.objects.filter(item_id__in=list(links), kind=TaskKind.RUBRIC).select_related("reviewer")
    for annotation in annotations.order_by("item_id", "reviewer_id"):
        payload = annotation.payload or {}
        if payload.get("response_index") != links[annotation.item_id].a_index:
            continue  # a score of some other text is not a judgement of the run
        yield annotation, payload.get("scores") or {}


def reference_judgements(comparison: Comparison) -> tuple[list[stats.Judgement], dict[int, ComparisonItem]]:
    """Every current reference-mode verdict on the comparison's items (better / as_good / worse / wrong)."""
    from evalsets.judging.services.comparisons import VERDICT_KEY

    links = {link.item_id: link for link in ComparisonItem.objects.filter(comparison=comparison)}
    judgements = [
        stats.Judgement(item_id=a.item_id, reviewer=a.reviewer.get_username(), outcome=scores[VERDICT_KEY])
        for a, scores in _queue_rubric_annotations(comparison, links)
        if scores.get(VERDICT_KEY) in stats.VERDICTS
    ]
    return judgements, links


def _single_run(comparison: Comparison, links, judged_items) -> dict:
    version = comparison.run_a.evalset_version
    return {
        "mode": comparison.mode,
        "version": version_status(version),
        "runs": {"judged": run_summary(comparison.run_a)},
        "same_decoding": True,
        "items_total": len(links),
        "items_judged": len(set(judged_items)),
    }


def reference_results(comparison: Comparison) -> dict:
    """Share of each verdict (and of as good or better) with CIs, the verdict line, breakdowns, judge agreement."""
    judgements, links = reference_judgements(comparison)
    version = comparison.run_a.evalset_version
    meta_of = _meta_of(links)
    overall = stats.verdict_shares(judgements)
    alpha = stats.judge_alpha(judgements, domain=stats.VERDICTS)
    breakdowns = {}
    for key in (*META_KEYS, "kind"):
        rows = stats.verdict_breakdown(judgements, lambda j, key=key: meta_of[j.item_id].get(key))
        if rows:
            breakdowns[key] = rows
    return {
        **_single_run(comparison, links, (j.item_id for j in judgements)),
        "overall": overall,
        "verdict": stats.reference_verdict(
            overall,
            run=comparison.run_a.label,
            evalset=_evalset_name(version),
            reviewers_per_item=_reviewers_per_item(j.item_id for j in judgements),
            alpha=alpha,
        ),
        "alpha": alpha,
        "by_meta": breakdowns,
        "by_reviewer": stats.verdict_breakdown(judgements, lambda j: j.reviewer),
    }


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def rubric_results(comparison: Comparison) -> dict:
    """Per criterion of the rubric version: the mean score with a 95% item-bootstrap CI and the judges' agreement
    (Krippendorff's alpha at the criterion's level of measurement); per reviewer, their mean scores."""
    from annotate.services.rubrics import LEVEL_OF_MEASUREMENT

    links = {link.item_id: link for link in ComparisonItem.objects.filter(comparison=comparison)}
    version = comparison.rubric_version
    scored = list(_queue_rubric_annotations(comparison, links))
    criteria = []
    for criterion in version.criteria:
        key, levels = criterion["key"], [level["value"] for level in criterion.get("levels", [])]
        values = [(a.item_id, a.reviewer.get_username(), s[key]) for a, s in scored if s.get(key) in levels]
        numeric = all(_numeric(v) for v in levels)
        row = {"key": key, "name": criterion.get("name", key), "scale": criterion.get("scale"), "numeric": numeric}
        row["levels"] = f"{min(levels)}–{max(levels)}" if numeric and levels else ", ".join(map(str, levels))
        if numeric:
            row.update(stats.score_mean([(item, v) for item, _, v in values]))
            reviewers = sorted({r for _, r, _ in values})
            row["by_reviewer"] = [
                {"group": r, **stats.score_mean([(item, v) for item, who, v in values if who == r])} for r in reviewers
            ]
        else:
            row["n_items"] = len({item for item, _, _ in values})
            row["n_scores"] = len(values)
            row["shares"] = dict(Counter(str(v) for _, _, v in values))
        row["alpha"] = _criterion_alpha(values, levels, LEVEL_OF_MEASUREMENT.get(criterion.get("scale"), NOMINAL))
        criteria.append(row)
    run_version = comparison.run_a.evalset_version
    per_item = _reviewers_per_item(a.item_id for a, _ in scored)
    rubric_name = f"{version.rubric.name} v{version.number}"
    return {
        **_single_run(comparison, links, (a.item_id for a, _ in scored)),
        "rubric": {"name": rubric_name, "id": version.pk, "project": version.rubric.project.name},
        "criteria": criteria,
        "verdict": _rubric_verdict(
            comparison.run_a.label, rubric_name, _evalset_name(run_version), criteria, per_item, scored
        ),
        "n_judgements": len(scored),
    }


def _criterion_alpha(values: list[tuple[int, str, object]], levels: list, level: str) -> float | None:
    from annotate.agreement import encode, krippendorff_alpha, value_counts

    items = sorted({item for item, _, _ in values})
    if not items:
        return None
    index = {item: i for i, item in enumerate(items)}
    domain = sorted(levels) if level != NOMINAL and all(_numeric(v) for v in levels) else levels
    codes, encoded = encode([v for _, _, v in values], domain=domain)
    counts = value_counts(np.array([index[item] for item, _, _ in values]), codes, len(items), len(encoded))
    alpha = krippendorff_alpha(counts, encoded, level)
    return None if alpha is None or not math.isfinite(alpha) else float(alpha)


def _rubric_verdict(run: str, rubric: str, evalset: str, criteria: list[dict], per_item: float, scored) -> str:
    if not scored:
        return f"No scores yet of {run} under {rubric} on {evalset}."
    means = ", ".join(
        f"{c['name']} {c['mean'].value:.2f} ± {c['mean'].plus_minus:.2f}" for c in criteria if c.get("mean")
    )
    n_items = len({a.item_id for a, _ in scored})
    per = f"{per_item:g}" if per_item == int(per_item) else f"{per_item:.1f}"
    return (
        f"{run} under {rubric} on {evalset}: {means or 'no numeric criteria'}, n={n_items}, "
        f"{per} reviewer{'s' if per_item != 1 else ''} per item"
    )


# --- capability regression ------------------------------------------------------------------------


def regression_scores(run: GenerationRun) -> dict[str, tuple[str, bool]]:
    """{check key: (category, passed)} for a finished regression run."""
    checks = {c["key"]: c for c in (run.suite or {}).get("checks", [])}
    scores = {}
    for key, text in run.outputs.values_list("check_key", "text"):
        check = checks.get(key)
        if check is not None:
            scores[key] = (check["category"], regression.score(check, text))
    return scores


def regression_comparison(base: GenerationRun, adapter: GenerationRun, *, max_drop: float) -> dict:
    """Per category: each model's accuracy on the same checks and the change with a paired 95% CI; flags drops."""
    if (base.suite or {}).get("sha256") != (adapter.suite or {}).get("sha256"):
        raise ValueError("The two runs asked different regression suites: run both on the same suite.")
    base_scores, adapter_scores = regression_scores(base), regression_scores(adapter)
    keys = sorted(set(base_scores) & set(adapter_scores))
    categories: dict[str, list[str]] = {}
    for key in keys:
        categories.setdefault(base_scores[key][0], []).append(key)
    rows = []
    for category in sorted(categories):
        ks = categories[category]
        result = stats.accuracy_change([base_scores[k][1] for k in ks], [adapter_scores[k][1] for k in ks])
        change: stats.Share = result["change"]
        rows.append(
            {
                "category": category,
                **result,
                "flagged": change.value < -max_drop,
                "significant": change.high < 0 or change.low > 0,
            }
        )
    overall = stats.accuracy_change([base_scores[k][1] for k in keys], [adapter_scores[k][1] for k in keys])
    return {
        "rows": rows,
        "overall": overall,
        "max_drop": max_drop,
        "flagged": [r["category"] for r in rows if r["flagged"]],
        "same_decoding": base.decoding == adapter.decoding,
        "base": run_summary(base),
        "adapter": run_summary(adapter),
    }
