"""The comparison and regression statistics against reference computations: a plain loop over the same
bootstrap draws, scipy's bootstrap and binomial test, the krippendorff package, and the normal approximation."""

import math
import random

import krippendorff
import numpy as np
import pytest
from scipy import stats as scipy_stats

from evalsets.judging import stats
from evalsets.judging.stats import Judgement


def judgements(n_items: int, reviewers: int, p_b: float, p_tie: float, seed: int = 0) -> list[Judgement]:
    rng = random.Random(seed)
    out = []
    for item in range(n_items):
        for r in range(reviewers):
            x = rng.random()
            outcome = "b" if x < p_b else "tie" if x < p_b + p_tie else "both_bad" if x < p_b + p_tie + 0.05 else "a"
            out.append(Judgement(item, f"r{r}", outcome, rng.random() < 0.5 if outcome in "ab" else None))
    return out


def reference_win_rate_ci(js: list[Judgement], *, n_boot: int, seed: int) -> tuple[float, float, float]:
    """The same bootstrap written out item by item: resample items, pool their judgements, score."""
    by_item: dict[int, list[str]] = {}
    for j in js:
        by_item.setdefault(j.item_id, []).append(j.outcome)
    items = sorted(by_item)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(items), size=(n_boot, len(items)))

    def rate(outcomes):
        wins = sum(o == "b" for o in outcomes)
        ties = sum(o in ("tie", "both_bad") for o in outcomes)
        return (wins + ties / 2) / len(outcomes)

    samples = []
    for row in draws:
        pooled = [o for i in row for o in by_item[items[i]]]
        samples.append(rate(pooled))
    point = rate([o for i in items for o in by_item[i]])
    low, high = np.percentile(samples, [2.5, 97.5])
    return point, float(low), float(high)


def test_the_win_rate_and_its_interval_match_a_plain_reference_loop():
    js = judgements(150, 2, 0.55, 0.15, seed=4)
    result = stats.win_tie_loss(js, n_boot=500, seed=11)
    point, low, high = reference_win_rate_ci(js, n_boot=500, seed=11)
    assert result["win_rate"].value == pytest.approx(point, abs=1e-12)
    assert result["win_rate"].low == pytest.approx(low, abs=1e-12)
    assert result["win_rate"].high == pytest.approx(high, abs=1e-12)
    counts = result["counts"]
    assert sum(counts.values()) == result["n_judgements"] == 300 and result["n_items"] == 150
    assert result["win"].value == pytest.approx(counts["b"] / 300)
    assert result["tie"].value == pytest.approx((counts["tie"] + counts["both_bad"]) / 300)
    assert result["win"].value + result["tie"].value + result["loss"].value == pytest.approx(1)


def test_the_interval_agrees_with_scipys_bootstrap_and_the_normal_approximation():
    js = judgements(2000, 1, 0.6, 0.0, seed=5)  # one judgement per item: items are independent draws
    result = stats.win_tie_loss(js, seed=1)
    win = result["win"]
    data = np.array([1.0 if j.outcome == "b" else 0.0 for j in js])
    ref = scipy_stats.bootstrap((data,), np.mean, n_resamples=2000, method="percentile", random_state=2)
    assert win.low == pytest.approx(ref.confidence_interval.low, abs=0.006)
    assert win.high == pytest.approx(ref.confidence_interval.high, abs=0.006)
    half = 1.96 * math.sqrt(win.value * (1 - win.value) / len(data))
    assert win.plus_minus == pytest.approx(half, abs=0.004)


def test_judge_agreement_matches_the_krippendorff_package():
    js = judgements(80, 3, 0.5, 0.2, seed=6)
    codes = {o: i for i, o in enumerate(stats.OUTCOMES)}
    matrix = np.full((3, 80), np.nan)
    for j in js:
        matrix[int(j.reviewer[1:]), j.item_id] = codes[j.outcome]
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    assert stats.judge_alpha(js) == pytest.approx(expected, abs=1e-9)


def test_position_bias_is_an_exact_binomial_test_of_left_picks():
    js = [Judgement(i, "r", "b" if i % 3 else "a", picked_left=i % 4 != 0) for i in range(60)]
    bias = stats.position_bias(js)
    left = sum(i % 4 != 0 for i in range(60))
    assert bias["n"] == 60 and bias["left"] == left
    assert bias["p_value"] == pytest.approx(scipy_stats.binomtest(left, 60, 0.5).pvalue, rel=1e-9)


def test_the_verdict_line_says_who_wins_by_how_much_on_what():
    js = judgements(400, 2, 0.6, 0.1, seed=7)
    result = stats.win_tie_loss(js)
    line = stats.verdict(
        result, challenger="fine-tuned", baseline="base", evalset="support-eval v3", reviewers_per_item=2, alpha=0.71
    )
    rate = round(100 * result["win_rate"].value)
    pm = round(100 * result["win_rate"].plus_minus)
    assert line == f"fine-tuned wins {rate}% ± {pm}% over base on support-eval v3, n=400, 2 reviewers per item, α=0.71"
    even = stats.win_tie_loss(judgements(50, 1, 0.35, 0.2, seed=8))
    assert "no clear winner" in stats.verdict(
        even, challenger="b", baseline="a", evalset="e", reviewers_per_item=1, alpha=None
    )
    worse = stats.win_tie_loss(judgements(300, 1, 0.2, 0.1, seed=8))
    assert "b loses to a" in stats.verdict(
        worse, challenger="b", baseline="a", evalset="e", reviewers_per_item=1, alpha=0.5
    )


def test_the_regression_change_is_a_paired_bootstrap():
    rng = random.Random(9)
    base = [rng.random() < 0.8 for _ in range(300)]
    adapter = [b and rng.random() > 0.15 for b in base]
    result = stats.accuracy_change(base, adapter, n_boot=400, seed=3)
    idx = np.random.default_rng(3).integers(0, 300, size=(400, 300))
    b, a = np.array(base, float), np.array(adapter, float)
    diffs = [a[row].mean() - b[row].mean() for row in idx]
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert result["change"].value == pytest.approx(a.mean() - b.mean())
    assert (result["change"].low, result["change"].high) == pytest.approx((low, high), abs=1e-12)
    assert result["change"].high < 0  # a real drop is seen as one
    with pytest.raises(ValueError, match="same checks"):
        stats.accuracy_change([True], [True, False])


def _verdicts(n_items: int, reviewers: int, seed: int) -> list[Judgement]:
    rng = random.Random(seed)
    weights = [0.2, 0.4, 0.25, 0.15]
    return [
        Judgement(item, f"r{r}", rng.choices(stats.VERDICTS, weights)[0])
        for item in range(n_items)
        for r in range(reviewers)
    ]


def test_the_verdict_shares_and_their_intervals_match_a_plain_reference_loop():
    js = _verdicts(120, 2, seed=5)
    result = stats.verdict_shares(js, n_boot=400, seed=9)
    by_item: dict[int, list[str]] = {}
    for j in js:
        by_item.setdefault(j.item_id, []).append(j.outcome)
    items = sorted(by_item)
    draws = np.random.default_rng(9).integers(0, len(items), size=(400, len(items)))
    for name, counted in [(v, (v,)) for v in stats.VERDICTS] + [("as_good_or_better", ("better", "as_good"))]:
        samples = []
        for row in draws:
            pooled = [o for i in row for o in by_item[items[i]]]
            samples.append(sum(o in counted for o in pooled) / len(pooled))
        low, high = np.percentile(samples, [2.5, 97.5])
        point = sum(j.outcome in counted for j in js) / len(js)
        share = result[name]
        assert (share.value, share.low, share.high) == pytest.approx((point, low, high), abs=1e-12), name
    assert sum(result["counts"].values()) == result["n_judgements"] == 240 and result["n_items"] == 120


def test_the_verdict_agreement_matches_the_krippendorff_package():
    js = _verdicts(80, 3, seed=2)
    data = np.full((3, 80), np.nan)
    for j in js:
        data[int(j.reviewer[1:]), j.item_id] = stats.VERDICTS.index(j.outcome)
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert stats.judge_alpha(js, domain=stats.VERDICTS) == pytest.approx(expected, abs=1e-9)


def test_the_mean_score_and_its_interval_match_a_plain_reference_loop():
    rng = random.Random(7)
    scores = [(item, rng.randint(1, 5)) for item in range(90) for _ in range(rng.randint(1, 3))]
    result = stats.score_mean(scores, n_boot=300, seed=4)
    by_item: dict[int, list[int]] = {}
    for item, value in scores:
        by_item.setdefault(item, []).append(value)
    items = sorted(by_item)
    draws = np.random.default_rng(4).integers(0, len(items), size=(300, len(items)))
    samples = []
    for row in draws:
        pooled = [v for i in row for v in by_item[items[i]]]
        samples.append(sum(pooled) / len(pooled))
    low, high = np.percentile(samples, [2.5, 97.5])
    point = sum(v for _, v in scores) / len(scores)
    mean = result["mean"]
    assert (mean.value, mean.low, mean.high) == pytest.approx((point, low, high), abs=1e-12)
    assert result["n_items"] == 90 and result["n_scores"] == len(scores)
    assert stats.score_mean([]) == {"n_items": 0, "n_scores": 0}
