"""Results of a blind comparison and of a capability regression, read on the web side (admins only)."""

from __future__ import annotations

from collections import Counter

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


def comparison_results(comparison: Comparison) -> dict:
    """Win/tie/loss with CIs, the verdict line, breakdowns, judge agreement and position bias."""
    judgements, links = comparison_judgements(comparison)
    version = comparison.run_a.evalset_version
    records = {r.pk: r for r in EvalRecord.objects.filter(pk__in=[link.record_id for link in links.values()])}
    source_meta = dict(Item.objects.filter(pk__in=[r.item_id for r in records.values()]).values_list("pk", "metadata"))
    meta_of: dict[int, dict] = {}
    for item_id, link in links.items():
        record = records.get(link.record_id)
        metadata = source_meta.get(record.item_id, {}) if record else {}
        meta_of[item_id] = {"kind": record.kind if record else None, **{k: metadata.get(k) for k in META_KEYS}}
    overall = stats.win_tie_loss(judgements)
    per_item = Counter(j.item_id for j in judgements)
    reviewers_per_item = (sum(per_item.values()) / len(per_item)) if per_item else 0
    alpha = stats.judge_alpha(judgements)
    status = version_status(version)
    breakdowns = {}
    for key in (*META_KEYS, "kind"):
        rows = stats.breakdown(judgements, lambda j, key=key: meta_of[j.item_id].get(key))
        if rows:
            breakdowns[key] = rows
    return {
        "overall": overall,
        "verdict": stats.verdict(
            overall,
            challenger=comparison.run_b.label,
            baseline=comparison.run_a.label,
            evalset=f"{version.project.slug}-eval v{version.number}",
            reviewers_per_item=round(reviewers_per_item, 1),
            alpha=alpha,
        ),
        "alpha": alpha,
        "position_bias": stats.position_bias(judgements),
        "by_meta": breakdowns,
        "by_reviewer": stats.breakdown(judgements, lambda j: j.reviewer),
        "version": status,
        "runs": {"a": run_summary(comparison.run_a), "b": run_summary(comparison.run_b)},
        "same_decoding": comparison.run_a.decoding == comparison.run_b.decoding,
        "items_total": len(links),
        "items_judged": len(per_item),
    }


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
