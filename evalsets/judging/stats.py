"""Statistics of a blind comparison and of a capability regression: plain functions of plain data.

A judgement is one reviewer's verdict on one item: ``b`` (the challenger's response is better), ``a``
(the baseline's), ``tie`` or ``both_bad``; in reference mode, how the run's response compares with the
reference answer (``better``, ``as_good``, ``worse``, ``wrong``). The win rate counts a tie or a both-bad as half a win
(the usual convention of pairwise evals: with no preference the rate is 50%). Confidence intervals
are 95% percentile bootstraps that resample *items* (all of an item's judgements together, since
the judgements of one item are not independent), with a fixed seed so a page shows the same figures
every time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from annotate.agreement import NOMINAL, binomial_test, encode, krippendorff_alpha, value_counts

OUTCOMES = ("b", "tie", "both_bad", "a")
VERDICTS = ("better", "as_good", "worse", "wrong")
N_BOOT = 2000
CI = 0.95


@dataclass(frozen=True)
class Judgement:
    item_id: int
    reviewer: str
    outcome: str  # b | a | tie | both_bad, or a reference-mode verdict (VERDICTS)
    picked_left: bool | None = None  # for a or b: whether the picked response was shown on the left


@dataclass(frozen=True)
class Share:
    value: float
    low: float
    high: float

    @property
    def plus_minus(self) -> float:
        """Half the interval's width (what "± 5%" reports)."""
        return (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "plus_minus": self.plus_minus}


def _item_matrix(judgements: list[Judgement], domain: tuple[str, ...] = OUTCOMES) -> tuple[np.ndarray, list[int]]:
    """Per item: counts of each outcome of ``domain`` (by default b, tie, both_bad, a), in item order."""
    by_item: dict[int, list[int]] = defaultdict(lambda: [0] * len(domain))
    for j in judgements:
        by_item[j.item_id][domain.index(j.outcome)] += 1
    items = sorted(by_item)
    return np.array([by_item[i] for i in items], dtype=np.float64).reshape(len(items), len(domain)), items


def _shares(counts: np.ndarray) -> np.ndarray:
    """(win, tie, loss, win rate) from summed outcome counts; rows of a (B, 4) array or one (4,) vector."""
    total = counts.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        win = counts[..., 0] / total
        tie = (counts[..., 1] + counts[..., 2]) / total
        loss = counts[..., 3] / total
    return np.stack([win, tie, loss, win + tie / 2], axis=-1)


def bootstrap_indices(n_items: int, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """The resampled item indices, (n_boot, n_items): one draw with replacement per bootstrap sample."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_items, size=(n_boot, n_items))


def win_tie_loss(judgements: list[Judgement], *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Win, tie (tie or both bad) and loss shares of the challenger and its win rate, each with a 95% CI."""
    matrix, items = _item_matrix(judgements)
    if not items:
        return {"n_items": 0, "n_judgements": 0}
    point = _shares(matrix.sum(axis=0))
    draws = matrix[bootstrap_indices(len(items), n_boot=n_boot, seed=seed)].sum(axis=1)
    boot = _shares(draws)
    tail = (1 - CI) / 2 * 100
    low, high = np.nanpercentile(boot, [tail, 100 - tail], axis=0)
    names = ("win", "tie", "loss", "win_rate")
    result = {name: Share(float(point[i]), float(low[i]), float(high[i])) for i, name in enumerate(names)}
    counts = matrix.sum(axis=0)
    return {
        **result,
        "n_items": len(items),
        "n_judgements": int(counts.sum()),
        "counts": {o: int(c) for o, c in zip(OUTCOMES, counts, strict=True)},
    }


def judge_alpha(judgements: list[Judgement], domain: tuple[str, ...] = OUTCOMES) -> float | None:
    """Krippendorff's alpha (nominal over ``domain``: b / a / tie / both bad by default) of the reviewers over the
    items."""
    items = sorted({j.item_id for j in judgements})
    if not items:
        return None
    index = {item: i for i, item in enumerate(items)}
    codes, levels = encode([j.outcome for j in judgements], domain=domain)
    counts = value_counts(np.array([index[j.item_id] for j in judgements]), codes, len(items), len(levels))
    alpha = krippendorff_alpha(counts, levels, NOMINAL)
    return None if alpha is None or not math.isfinite(alpha) else float(alpha)


def position_bias(judgements: list[Judgement]) -> dict:
    """How often a decisive judgement picked the left response, against chance (exact two-sided binomial test)."""
    decisive = [j for j in judgements if j.outcome in ("a", "b") and j.picked_left is not None]
    left = sum(j.picked_left for j in decisive)
    n = len(decisive)
    return {
        "n": n,
        "left": left,
        "left_share": left / n if n else None,
        "p_value": binomial_test(left, n) if n else None,
    }


def breakdown(
    judgements: list[Judgement], key_of, *, n_boot: int = N_BOOT, seed: int = 0, min_items: int = 1
) -> list[dict]:
    """Win/tie/loss per group; ``key_of(judgement)`` names the group (None leaves the judgement out)."""
    groups: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        key = key_of(j)
        if key is not None:
            groups[str(key)].append(j)
    rows = []
    for key in sorted(groups):
        result = win_tie_loss(groups[key], n_boot=n_boot, seed=seed)
        if result["n_items"] >= min_items:
            rows.append({"group": key, **result})
    return rows


def percent(value: float) -> str:
    return f"{round(100 * value)}%"


def verdict(
    result: dict, *, challenger: str, baseline: str, evalset: str, reviewers_per_item: float, alpha: float | None
) -> str:
    """One line: who wins, by how much, on what, with how much evidence."""
    if not result.get("n_items"):
        return f"No judgements yet of {challenger} against {baseline} on {evalset}."
    rate: Share = result["win_rate"]
    if rate.low > 0.5:
        head = f"{challenger} wins {percent(rate.value)} ± {percent(rate.plus_minus)} over {baseline}"
    elif rate.high < 0.5:
        head = f"{challenger} loses to {baseline}: wins {percent(rate.value)} ± {percent(rate.plus_minus)}"
    else:
        head = f"{challenger} vs {baseline}: no clear winner, {percent(rate.value)} ± {percent(rate.plus_minus)}"
    per_item = (
        f"{reviewers_per_item:g}" if reviewers_per_item == int(reviewers_per_item) else f"{reviewers_per_item:.1f}"
    )
    agreement = "α n/a" if alpha is None else f"α={alpha:.2f}"
    return (
        f"{head} on {evalset}, n={result['n_items']}, {per_item} reviewer{'s' if reviewers_per_item != 1 else ''} "
        f"per item, {agreement}"
    )


def accuracy_change(base: list[bool], adapter: list[bool], *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Accuracy of each model on the same checks and the change (adapter − base), with a paired bootstrap CI."""
    if len(base) != len(adapter):
        raise ValueError("Both models must be scored on the same checks, in the same order.")
    n = len(base)
    if n == 0:
        return {"n": 0}
    b = np.asarray(base, dtype=np.float64)
    a = np.asarray(adapter, dtype=np.float64)
    idx = bootstrap_indices(n, n_boot=n_boot, seed=seed)
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    tail = (1 - CI) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return {
        "n": n,
        "base": float(b.mean()),
        "adapter": float(a.mean()),
        "change": Share(float(a.mean() - b.mean()), float(low), float(high)),
    }


# --- reference mode and rubric scores -------------------------------------------------------------------


def verdict_shares(judgements: list[Judgement], *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Reference mode: the share of judgements of each verdict, and of "as good or better", each with a 95% CI
    from the same item bootstrap as the win rate."""
    matrix, items = _item_matrix(judgements, VERDICTS)
    if not items:
        return {"n_items": 0, "n_judgements": 0}

    def shares(counts: np.ndarray) -> np.ndarray:
        total = counts.sum(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            each = counts / total
        return np.concatenate([each, each[..., :2].sum(axis=-1, keepdims=True)], axis=-1)

    point = shares(matrix.sum(axis=0))
    boot = shares(matrix[bootstrap_indices(len(items), n_boot=n_boot, seed=seed)].sum(axis=1))
    tail = (1 - CI) / 2 * 100
    low, high = np.nanpercentile(boot, [tail, 100 - tail], axis=0)
    names = (*VERDICTS, "as_good_or_better")
    counts = matrix.sum(axis=0)
    return {
        **{name: Share(float(point[i]), float(low[i]), float(high[i])) for i, name in enumerate(names)},
        "n_items": len(items),
        "n_judgements": int(counts.sum()),
        "counts": {v: int(c) for v, c in zip(VERDICTS, counts, strict=True)},
    }


def verdict_breakdown(judgements: list[Judgement], key_of, *, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """Reference-mode shares per group; ``key_of(judgement)`` names the group (None leaves the judgement out)."""
    groups: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        key = key_of(j)
        if key is not None:
            groups[str(key)].append(j)
    return [{"group": key, **verdict_shares(groups[key], n_boot=n_boot, seed=seed)} for key in sorted(groups)]


def reference_verdict(result: dict, *, run: str, evalset: str, reviewers_per_item: float, alpha: float | None) -> str:
    """One line: how often the run's responses are as good as the reference or better, and how often wrong."""
    if not result.get("n_items"):
        return f"No judgements yet of {run} against the reference answers of {evalset}."
    good: Share = result["as_good_or_better"]
    wrong: Share = result["wrong"]
    return (
        f"{run} is as good as the reference or better on {percent(good.value)} ± {percent(good.plus_minus)} "
        f"of {evalset} (wrong on {percent(wrong.value)} ± {percent(wrong.plus_minus)}), n={result['n_items']}, "
        f"{_per_item(reviewers_per_item)} per item, {_agreement(alpha)}"
    )


def score_mean(scores: list[tuple[int, float]], *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Mean of (item, score) pairs with a 95% CI that resamples items (an item's scores together)."""
    by_item: dict[int, list[float]] = defaultdict(list)
    for item, value in scores:
        by_item[item].append(float(value))
    items = sorted(by_item)
    if not items:
        return {"n_items": 0, "n_scores": 0}
    sums = np.array([sum(by_item[i]) for i in items])
    counts = np.array([len(by_item[i]) for i in items], dtype=np.float64)
    idx = bootstrap_indices(len(items), n_boot=n_boot, seed=seed)
    boot = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1 - CI) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return {
        "mean": Share(float(sums.sum() / counts.sum()), float(low), float(high)),
        "n_items": len(items),
        "n_scores": int(counts.sum()),
    }


def _per_item(reviewers_per_item: float) -> str:
    n = f"{reviewers_per_item:g}" if reviewers_per_item == int(reviewers_per_item) else f"{reviewers_per_item:.1f}"
    return f"{n} reviewer{'s' if reviewers_per_item != 1 else ''}"


def _agreement(alpha: float | None) -> str:
    return "α n/a" if alpha is None else f"α={alpha:.2f}"
