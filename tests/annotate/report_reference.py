"""The agreement report as the ORM reader built it, kept as the reference the streaming reader must match.

This is ``annotate.reports.report_build`` and its row helpers as they were before the report read
PostgreSQL through a server-side cursor: every annotation through ``values_list`` (payloads decoded
in Python), arranged with dicts, then the figures computed as they were before the report kept its
units as patterns and summed its ratings a block at a time (``variables_report`` below: a count
matrix of all the units, one matrix product, one bincount per sum). One change: the rows are ordered by
(item, reviewer). Without an ORDER BY the row order was whatever plan PostgreSQL chose (a merge
join on large projects gives item order, a hash join gives the heap's order), and float sums over
units in a different order can differ in the last bit, so this reference could not even match
itself across plans.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from django.contrib.auth import get_user_model
from django.db.models import Count

from annotate import agreement as ag
from annotate.consensus import (
    agreement_with,
    criteria_by_key,
    gold_category,
    normalize_text,
    preference_category,
)
from annotate.models import Annotation, Item, ItemResult, TaskKind
from annotate.reports import (
    LENIENCY_FLAG,
    LEVEL_OF_MEASUREMENT,
    MAX_SIMILARITY_PAIRS,
    MIN_BIAS_N,
    SIGNIFICANCE,
    STRAIGHT_LINE_SHARE,
    Variable,
)


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


@dataclass
class Rows:
    unit_of: dict[int, int] = field(default_factory=dict)
    rater_of: dict[int, int] = field(default_factory=dict)

    def unit(self, item_id: int) -> int:
        if item_id not in self.unit_of:
            self.unit_of[item_id] = len(self.unit_of)
        return self.unit_of[item_id]

    def rater(self, reviewer_id: int) -> int:
        if reviewer_id not in self.rater_of:
            self.rater_of[reviewer_id] = len(self.rater_of)
        return self.rater_of[reviewer_id]


def _categorical_variable(key, name, labels, rows) -> Variable:
    index = {label: i for i, label in enumerate(labels)}
    units, raters, codes, days = zip(*[(u, r, index[c], d) for u, r, c, d in rows], strict=True) if rows else ([],) * 4
    return Variable(
        key=key,
        name=name,
        level="nominal",
        labels=list(labels),
        levels=np.arange(len(labels), dtype=np.float64),
        units=np.asarray(units, dtype=np.int64),
        raters=np.asarray(raters, dtype=np.int64),
        codes=np.asarray(codes, dtype=np.int64),
        days=np.asarray(days, dtype=np.int64),
    )


def rubric_variables(criteria: list[dict], rows: list[tuple[int, int, dict, int]]) -> list[Variable]:
    n = len(rows)
    units = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    raters = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
    days = np.fromiter((r[3] for r in rows), dtype=np.int64, count=n)
    specs = []
    for criterion in criteria:
        level = LEVEL_OF_MEASUREMENT[criterion["scale"]]
        levels = list(criterion["levels"])
        if level != "nominal":
            levels.sort(key=lambda lv: lv["value"])
        index: dict = {}
        for i, lv in enumerate(levels):
            index[str(lv["value"])] = i
            index[lv["value"]] = i
        specs.append((criterion, level, levels, index))
    codes = np.full((len(specs), n), -1, dtype=np.int64)
    keys = [c["key"] for c, _, _, _ in specs]
    lookups = [index for _, _, _, index in specs]
    for i, (_, _, payload, _) in enumerate(rows):
        given = payload.get("scores")
        if not given:
            continue
        for j, key in enumerate(keys):
            value = given.get(key)
            if value is None:
                continue
            try:
                code = lookups[j].get(value)
            except TypeError:
                code = None
            if code is None:
                code = lookups[j].get(str(value))
            if code is not None:
                codes[j, i] = code
    variables = []
    for j, (criterion, level, levels, _) in enumerate(specs):
        keep = codes[j] >= 0
        numeric = (
            np.arange(len(levels), dtype=np.float64)
            if level == "nominal"
            else np.asarray([lv["value"] for lv in levels], dtype=np.float64)
        )
        variables.append(
            Variable(
                key=criterion["key"],
                name=criterion["name"],
                level=level,
                labels=[str(lv.get("label") or lv["value"]) for lv in levels],
                levels=numeric,
                units=units[keep],
                raters=raters[keep],
                codes=codes[j][keep],
                days=days[keep],
                meta={"scale": criterion["scale"]},
            )
        )
    return variables


def report_build_reference(*, project, version, n_boot: int = 500, seed: int = 0) -> dict:
    """The full report as the ORM reader computed it (``version`` already resolved)."""
    rows = list(
        Annotation.objects.filter(item__project=project, item__is_calibration=False)
        .order_by("item_id", "reviewer_id")
        .values_list("item_id", "reviewer_id", "kind", "payload", "display_order", "updated_at", "rubric_version_id")
    )
    checks = dict(Item.objects.filter(project=project, is_check=True).values_list("id", "check_answer"))
    names = dict(
        get_user_model().objects.filter(id__in={r[1] for r in rows}).values_list("id", get_user_model().USERNAME_FIELD)
    )
    status_counts = dict(
        ItemResult.objects.filter(item__project=project).values_list("status").annotate(n=Count("id")).order_by()
    )
    index = Rows()
    for reviewer_id in sorted(names):
        index.rater(reviewer_id)
    rater_names = [names[rid] for rid in sorted(names)]
    by_kind: dict[str, list] = defaultdict(list)
    for item_id, reviewer_id, kind, payload, order, reviewed, version_id in rows:
        day = int(reviewed.timestamp() // 86400)
        by_kind[kind].append((item_id, index.rater(reviewer_id), payload, order, day, version_id))

    sections = []
    kinds = [k for k in (TaskKind.GOLD, TaskKind.PREFERENCE, TaskKind.RUBRIC) if k in by_kind]
    for kind in kinds:
        kind_rows = by_kind[kind]
        units = Rows()
        if kind == TaskKind.RUBRIC:
            kind_rows = [r for r in kind_rows if version is None or r[5] == version.pk]
            criteria = version.criteria if version else []
            data = [(units.unit(r[0]), r[1], r[2], r[4]) for r in kind_rows]
            variables = rubric_variables(criteria, data)
            extra = {"rubric_version": {"id": version.pk, "label": str(version)} if version else None}
        elif kind == TaskKind.PREFERENCE:
            data = [(units.unit(r[0]), r[1], preference_category(r[2]), r[4]) for r in kind_rows]
            labels = sorted({c for _, _, c, _ in data}, key=_category_order)
            variables = [_categorical_variable("choice", "Chosen side", labels, data)]
            extra = {"left_pick": left_pick(kind_rows, rater_names), "rankings": rankings(kind_rows)}
        else:
            data = [(units.unit(r[0]), r[1], gold_category(r[2]), r[4]) for r in kind_rows]
            labels = [a for a in ("accept", "edit", "write", "unusable") if any(c == a for _, _, c, _ in data)]
            labels += sorted({c for _, _, c, _ in data} - set(labels))
            variables = [_categorical_variable("action", "Action", labels, data)]
            extra = {"edit_similarity": edit_similarity(kind_rows)}
        sections.append(
            {
                "kind": str(kind),
                "title": TaskKind(kind).label,
                "n_annotations": len(kind_rows),
                "n_items": len(units.unit_of),
                "variables": variables_report(
                    variables, n_units=len(units.unit_of), rater_names=rater_names, n_boot=n_boot, seed=seed
                ),
                **extra,
            }
        )
    return {
        "project": {"slug": project.slug, "name": project.name},
        "n_annotations": len(rows),
        "n_items": len({r[0] for r in rows}),
        "reviewers": rater_names,
        "result_status": {s: int(status_counts.get(s, 0)) for s in ItemResult.Status.values},
        "bootstrap": {"resamples": n_boot, "seed": seed, "interval": 0.95},
        "sections": sections,
        "checks": check_accuracy(project, rows, checks, names, version),
    }


def variables_report(
    variables: list[Variable],
    *,
    n_units: int,
    rater_names: list[str],
    n_boot: int = 500,
    seed: int = 0,
) -> list[dict]:
    """Every agreement figure for each variable, over the whole count matrix at once."""
    out = []
    for var in variables:
        out.append(variable_report(var, n_units=n_units, rater_names=rater_names, n_boot=n_boot, seed=seed))
    return out


def variable_report(var: Variable, *, n_units: int, rater_names: list[str], n_boot: int, seed: int) -> dict:
    n_raters, k = len(rater_names), len(var.levels)
    counts = ag.value_counts(var.units, var.codes, n_units, k)
    pairable = counts.sum(axis=1) >= 2
    tables = ag.pairwise_tables(var.units, var.raters, var.codes, n_raters, k)
    return {
        "key": var.key,
        "name": var.name,
        "level": var.level,
        "labels": var.labels,
        "n_ratings": int(len(var.codes)),
        "n_units": int(pairable.sum()),
        "alpha": ag.alpha_estimate(counts, var.levels, var.level, n_boot=n_boot, seed=seed).as_dict(),
        "percent": ag.percent_estimate(counts, n_boot=n_boot, seed=seed).as_dict(),
        "fleiss_kappa": _num(ag.fleiss_kappa(counts)),
        "confusion": ag.coincidence_matrix(counts).round(6).tolist(),
        "pairwise_kappa": _matrix(ag.pairwise_kappa(tables)),
        "pairwise_percent": _matrix(ag.pairwise_percent(tables)),
        "pairwise_n": tables.sum(axis=(-2, -1)).astype(int).tolist(),
        "over_time": _over_time(var, counts, n_units) if var.days is not None else [],
        "reviewers": _rater_bias(var, counts, rater_names),
        **var.meta,
    }


def _matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[_num(x) for x in row] for row in m]


def _over_time(var: Variable, counts: np.ndarray, n_units: int) -> list[dict]:
    """Alpha per period, each unit dated by its latest rating (days if the span is short, else weeks)."""
    unit_day = np.full(n_units, np.iinfo(np.int64).min, dtype=np.int64)
    units = var.units
    if len(units) and np.all(units[1:] >= units[:-1]):  # rows in unit order, as the sections arrange them
        starts = np.flatnonzero(np.concatenate(([True], units[1:] != units[:-1])))
        unit_day[units[starts]] = np.maximum.reduceat(var.days, starts)
    else:
        np.maximum.at(unit_day, units, var.days)
    rated = counts.sum(axis=1) >= 2
    if not rated.any():
        return []
    days = unit_day[rated]
    span = int(days.max() - days.min())
    width = 1 if span <= 45 else 7
    bucket = (days - days.min()) // width
    sub = counts[rated]
    # Units grouped by period once (a stable sort keeps each period's units in order), not masked per period.
    order = np.argsort(bucket, kind="stable")
    periods, first = np.unique(bucket[order], return_index=True)
    ends = np.append(first[1:], len(order))
    out = []
    for b, lo, hi in zip(periods, first, ends, strict=True):
        chunk = sub[order[lo:hi]]
        start = int(days.min() + b * width)
        out.append(
            {
                "start": _day_iso(start),
                "days": width,
                "n_units": int(len(chunk)),
                "alpha": _num(ag.krippendorff_alpha(chunk, var.levels, var.level)),
                "percent": _num(ag.percent_agreement(chunk)),
            }
        )
    return out


def _day_iso(day: int) -> str:
    return str(np.datetime64(day, "D"))


def _rater_bias(var: Variable, counts: np.ndarray, rater_names: list[str]) -> list[dict]:
    """Per reviewer: how many ratings, the share of their most common value, and (numeric scales)
    their mean distance from the other reviewers on the same items."""
    n_raters, k = len(rater_names), len(var.levels)
    per_rater = np.bincount(var.raters * k + var.codes, minlength=n_raters * k).reshape(n_raters, k)
    n = per_rater.sum(axis=1)
    pooled = counts.sum(axis=0)
    pooled_share = pooled / pooled.sum() if pooled.sum() else pooled
    # Agreement with others: share of other reviewers on the same unit who gave the same value.
    same = counts[var.units, var.codes] - 1
    others = counts.sum(axis=1)[var.units] - 1
    ok = others > 0
    agree = np.bincount(var.raters[ok], same[ok] / others[ok], minlength=n_raters)
    agree_n = np.bincount(var.raters[ok], minlength=n_raters)
    lean = np.full(n_raters, np.nan)
    if var.level in ("ordinal", "interval"):
        values = var.levels[var.codes]
        unit_sum = np.bincount(var.units, values, minlength=len(counts))
        others_mean = np.divide(unit_sum[var.units] - values, others, out=np.zeros_like(values), where=ok)
        dev = np.bincount(var.raters[ok], values[ok] - others_mean[ok], minlength=n_raters)
        lean = np.divide(dev, agree_n, out=np.full(n_raters, np.nan), where=agree_n > 0)
        if var.level == "ordinal":
            # Ordinal levels have no unit; express the lean in steps between adjacent levels.
            step = np.diff(var.levels).mean() if k > 1 else 1.0
            lean = lean / step
    # Judge each lean against the typical reviewer's, so one extreme reviewer (who shifts everyone
    # else's "others' mean") does not get the whole team flagged.
    typical = np.nanmedian(lean[n > 0]) if np.isfinite(lean[n > 0]).any() else 0.0
    out = []
    for r in range(n_raters):
        if n[r] == 0:
            continue
        top = int(per_rater[r].argmax())
        share = per_rater[r, top] / n[r]
        flags = []
        if n[r] >= MIN_BIAS_N and share >= STRAIGHT_LINE_SHARE and share - pooled_share[top] >= 0.2:
            flags.append(f"gives {var.labels[top]} to {share:.0%} of items (all reviewers: {pooled_share[top]:.0%})")
        relative = lean[r] - typical
        if n[r] >= MIN_BIAS_N and np.isfinite(relative) and abs(relative) >= LENIENCY_FLAG:
            flags.append(
                f"scores {'higher' if relative > 0 else 'lower'} than the typical reviewer by {abs(relative):.2f}"
            )
        out.append(
            {
                "reviewer": rater_names[r],
                "n": int(n[r]),
                "distribution": per_rater[r].astype(int).tolist(),
                "top_value": var.labels[top],
                "top_share": _num(share),
                "agreement_with_others": _num(agree[r] / agree_n[r]) if agree_n[r] else None,
                "lean": _num(lean[r]),
                "flags": flags,
            }
        )
    return out


def _category_order(label: str) -> tuple:
    if label.startswith("response:"):
        return (0, int(label.split(":")[1]) if label.split(":")[1].isdigit() else 0)
    return (1, label)


def left_pick(rows: list[tuple], rater_names: list[str]) -> list[dict]:
    left = np.zeros(len(rater_names), dtype=np.int64)
    total = np.zeros(len(rater_names), dtype=np.int64)
    for _, rater, payload, order, _, _ in rows:
        if payload.get("choice") != "response" or not isinstance(order, list) or len(order) != 2:
            continue
        total[rater] += 1
        left[rater] += int(order[0] == payload.get("chosen"))
    out = []
    for r, name in enumerate(rater_names):
        if total[r] == 0:
            continue
        p = ag.binomial_test(int(left[r]), int(total[r]), 0.5)
        out.append(
            {
                "reviewer": name,
                "left": int(left[r]),
                "n": int(total[r]),
                "rate": round(left[r] / total[r], 6),
                "p_value": p,
                "flag": p < SIGNIFICANCE,
            }
        )
    return out


def rankings(rows: list[tuple]) -> dict:
    comparisons: dict[int, list] = defaultdict(list)
    sizes: dict[int, int] = {}
    for item_id, _, payload, order, _, _ in rows:
        n = len(order) if isinstance(order, list) else 0
        if n <= 2 or payload.get("choice") != "response":
            continue
        sizes[item_id] = n
        chosen, rejected = payload.get("chosen"), payload.get("rejected")
        if isinstance(chosen, int) and isinstance(rejected, int):
            comparisons[item_id].append((chosen, rejected))
        elif isinstance(chosen, int):
            comparisons[item_id] += [(chosen, j) for j in range(n) if j != chosen]
    cyclic = []
    for item_id, pairs in comparisons.items():
        result = ag.ranking_with_cycles(sizes[item_id], pairs)
        if result["cycles"]:
            cyclic.append({"item_id": item_id, **result})
    return {"items_ranked": len(comparisons), "items_with_cycles": len(cyclic), "examples": cyclic[:20]}


def edit_similarity(rows: list[tuple]) -> dict:
    answers: dict[int, list[str]] = defaultdict(list)
    for item_id, _, payload, _, _, _ in rows:
        if payload.get("action") in ("edit", "write") and payload.get("answer"):
            answers[item_id].append(normalize_text(payload["answer"]))
    ratios = []
    for texts in answers.values():
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if len(ratios) >= MAX_SIMILARITY_PAIRS:
                    break
                ratios.append(difflib.SequenceMatcher(None, texts[i], texts[j], autojunk=False).ratio())
    if not ratios:
        return {"pairs": 0, "mean": None, "median": None, "histogram": []}
    arr = np.asarray(ratios)
    hist, _ = np.histogram(arr, bins=10, range=(0.0, 1.0))
    return {
        "pairs": len(ratios),
        "mean": _num(arr.mean()),
        "median": _num(np.median(arr)),
        "exact_share": _num((arr == 1.0).mean()),
        "histogram": hist.astype(int).tolist(),
    }


def check_accuracy(project, rows, checks: dict, names: dict, version) -> list[dict]:
    if not checks:
        return []
    criteria = criteria_by_key(version)
    scores: dict[int, list[float]] = defaultdict(list)
    for item_id, reviewer_id, kind, payload, _, _, _ in rows:
        answer = checks.get(item_id)
        if answer is None:
            continue
        scores[reviewer_id].append(
            agreement_with(kind, answer, [payload], tolerance=project.score_tolerance, criteria=criteria)
        )
    return [
        {"reviewer": names.get(rid, str(rid)), "n": len(vals), "accuracy": _num(sum(vals) / len(vals))}
        for rid, vals in sorted(scores.items(), key=lambda kv: names.get(kv[0], ""))
    ]
