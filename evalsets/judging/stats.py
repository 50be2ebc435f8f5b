"""Statistics of a blind comparison and of a capability regression: plain functions of plain data.

A judgement is one reviewer's verdict on one item: ``b`` (the challenger's response is better), ``a``
(the baseline's), ``tie`` or ``both_bad``. The win rate counts a tie or a both-bad as half a win
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
N_BOOT = 2000
CI = 0.95


@dataclass(frozen=True)
class Judgement:
    item_id: int
    reviewer: str
    outcome: str  # b | a | tie | both_bad
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


def _item_matrix(judgements: list[Judgement]) -> tuple[np.ndarray, list[int]]:
    """Per item: counts of (b, tie, both_bad, a), in item order."""
    by_item: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for j in judgements:
        by_item[j.item_id][OUTCOMES.index(j.outcome)] += 1
    items = sorted(by_item)
    return np.array([by_item[i] for i in items], dtype=np.float64).reshape(len(items), 4), items


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


def judge_alpha(judgements: list[Judgement]) -> float | None:
    """Krippendorff's alpha (nominal: b / a / tie / both bad) of the reviewers over the items."""
    items = sorted({j.item_id for j in judgements})
    if not items:
        return None
    index = {item: i for i, item in enumerate(items)}
    codes, levels = encode([j.outcome for j in judgements], domain=OUTCOMES)
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
