"""The agreement metrics against reference packages (krippendorff, statsmodels, scipy) and published values."""

import krippendorff
import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.inter_rater import cohens_kappa, fleiss_kappa

from annotate import agreement as ag

NAN = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units.
KRIPPENDORFF_EXAMPLE = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
        [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
    ]
)


def random_reliability(seed: int, raters: int = 6, units: int = 300, values: int = 5, missing: float = 0.35):
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, values + 1, size=units)
    noise = rng.integers(-1, 2, size=(raters, units)) * (rng.random((raters, units)) < 0.4)
    data = np.clip(truth + noise, 1, values).astype(np.float64)
    data[rng.random((raters, units)) < missing] = np.nan
    return data


@pytest.mark.parametrize(("level", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_reproduces_krippendorffs_worked_example(level, published):
    counts, levels = ag.reliability_to_counts(KRIPPENDORFF_EXAMPLE)
    alpha = ag.krippendorff_alpha(counts, levels, level)
    assert round(alpha, 3) == published
    reference = krippendorff.alpha(reliability_data=KRIPPENDORFF_EXAMPLE, level_of_measurement=level)
    assert alpha == pytest.approx(reference, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_matches_the_krippendorff_package_on_random_data_with_missing_values(seed, level):
    data = random_reliability(seed)
    counts, levels = ag.reliability_to_counts(data)
    reference = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    assert ag.krippendorff_alpha(counts, levels, level) == pytest.approx(reference, abs=1e-9)


def test_alpha_with_an_unobserved_value_in_the_domain_matches_the_package():
    data = random_reliability(11, values=4)
    domain = [1, 2, 3, 4, 5, 6]
    counts, levels = ag.reliability_to_counts(data, domain=domain)
    for level in ("nominal", "ordinal", "interval"):
        reference = krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=domain)
        assert ag.krippendorff_alpha(counts, levels, level) == pytest.approx(reference, abs=1e-9)


def test_alpha_is_undefined_when_every_rating_is_the_same_value():
    counts = np.array([[3.0, 0.0], [2.0, 0.0]])
    assert np.isnan(ag.krippendorff_alpha(counts, np.array([1, 2]), "nominal"))


def test_an_unknown_level_of_measurement_is_refused_with_the_choices():
    counts, levels = ag.reliability_to_counts(KRIPPENDORFF_EXAMPLE)
    with pytest.raises(ValueError, match="nominal, ordinal, interval"):
        ag.krippendorff_alpha(counts, levels, "ratioish")


def test_fleiss_kappa_reproduces_the_published_fleiss_example():
    # Fleiss' kappa example on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa = 0.210.
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ],
        dtype=float,
    )
    assert round(ag.fleiss_kappa(table), 3) == 0.210
    assert ag.fleiss_kappa(table) == pytest.approx(fleiss_kappa(table), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_fleiss_kappa_matches_statsmodels_on_random_complete_data(seed):
    data = random_reliability(seed, raters=5, missing=0.0)
    counts, _ = ag.reliability_to_counts(data)
    assert ag.fleiss_kappa(counts) == pytest.approx(fleiss_kappa(counts), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_fleiss_kappa_on_missing_data_matches_statsmodels_on_the_fully_rated_units(seed):
    data = random_reliability(seed, raters=4, missing=0.15)
    counts, _ = ag.reliability_to_counts(data)
    full = counts[counts.sum(axis=1) == 4]
    assert ag.fleiss_kappa(full) == pytest.approx(fleiss_kappa(full), abs=1e-9)


def test_cohens_kappa_reproduces_the_textbook_example():
    # 50 proposals, two readers: yes/yes 20, yes/no 5, no/yes 10, no/no 15 → kappa 0.4.
    table = np.array([[20, 5], [10, 15]])
    assert ag.cohen_kappa(table) == pytest.approx(0.4, abs=1e-12)


@pytest.mark.parametrize("order", ["by rater", "by unit and rater", "shuffled"])
def test_pairwise_tables_count_every_pair_of_raters_on_a_unit_whatever_the_row_order(order):
    data = random_reliability(3, raters=7, units=120, values=4, missing=0.2)
    raters, units = np.nonzero(~np.isnan(data))
    codes, levels = ag.encode(data[raters, units])
    if order == "by unit and rater":
        rows = np.lexsort((raters, units))
    else:
        rows = np.random.default_rng(0).permutation(len(units)) if order == "shuffled" else np.arange(len(units))
    tables = ag.pairwise_tables(units[rows], raters[rows], codes[rows], 7, len(levels))
    expected = np.zeros((7, 7, len(levels), len(levels)))
    for u in range(data.shape[1]):
        for a in range(7):
            for b in range(7):
                if a != b and not np.isnan(data[a, u]) and not np.isnan(data[b, u]):
                    expected[a, b, np.searchsorted(levels, data[a, u]), np.searchsorted(levels, data[b, u])] += 1
    assert tables.dtype == np.float64 and np.array_equal(tables, expected)


@pytest.mark.parametrize("seed", range(5))
def test_pairwise_cohens_kappa_matches_statsmodels_for_every_pair_with_missing_values(seed):
    data = random_reliability(seed, raters=5)
    raters, units = np.nonzero(~np.isnan(data))
    codes, levels = ag.encode(data[raters, units])
    tables = ag.pairwise_tables(units, raters, codes, 5, len(levels))
    kappas = ag.pairwise_kappa(tables)
    for a in range(5):
        for b in range(5):
            if a == b:
                assert np.isnan(kappas[a, b])
                continue
            both = ~np.isnan(data[a]) & ~np.isnan(data[b])
            table = np.zeros((len(levels), len(levels)))
            for x, y in zip(data[a, both], data[b, both], strict=True):
                table[np.searchsorted(levels, x), np.searchsorted(levels, y)] += 1
            assert np.array_equal(tables[a, b], table)
            assert kappas[a, b] == pytest.approx(cohens_kappa(table).kappa, abs=1e-9)


def test_percent_agreement_counts_agreeing_pairs_within_each_unit():
    # Unit 1: three raters say 1 → all 3 pairs agree. Unit 2: 1, 1, 2 → 1 of 3 pairs. Unit 3: one rating, ignored.
    counts = np.array([[3.0, 0.0], [2.0, 1.0], [1.0, 0.0]])
    assert ag.percent_agreement(counts) == pytest.approx((1.0 + 1.0 / 3.0) / 2.0)


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    data = random_reliability(3, units=400)
    counts, levels = ag.reliability_to_counts(data)
    first = ag.alpha_estimate(counts, levels, "ordinal", n_boot=400, seed=7)
    again = ag.alpha_estimate(counts, levels, "ordinal", n_boot=400, seed=7)
    assert first == again
    assert first.low < first.value < first.high
    assert first.high - first.low < 0.2
    assert first.value == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def test_bootstrap_over_patterns_agrees_with_resampling_units_directly():
    data = random_reliability(5, units=300)
    counts, levels = ag.reliability_to_counts(data)
    est = ag.alpha_estimate(counts, levels, "interval", n_boot=2000, seed=1)
    rng = np.random.default_rng(2)
    pairable = counts[counts.sum(axis=1) >= 2]
    direct = [
        ag.krippendorff_alpha(pairable[rng.integers(0, len(pairable), len(pairable))], levels, "interval")
        for _ in range(2000)
    ]
    low, high = np.percentile(direct, [2.5, 97.5])
    assert est.low == pytest.approx(low, abs=0.02)
    assert est.high == pytest.approx(high, abs=0.02)


def test_percent_bootstrap_interval_brackets_the_estimate():
    data = random_reliability(4)
    counts, _ = ag.reliability_to_counts(data)
    est = ag.percent_estimate(counts, n_boot=300, seed=0)
    assert est.low <= est.value <= est.high
    assert est.value == pytest.approx(ag.percent_agreement(counts))


@pytest.mark.parametrize(("k", "n", "p"), [(70, 100, 0.5), (50, 100, 0.5), (3, 40, 0.5), (12, 20, 0.3), (0, 10, 0.5)])
def test_binomial_test_matches_scipy(k, n, p):
    assert ag.binomial_test(k, n, p) == pytest.approx(binomtest(k, n, p).pvalue, abs=1e-9)


def test_rankings_report_an_intransitive_cycle():
    result = ag.ranking_with_cycles(3, [(0, 1), (0, 1), (1, 2), (1, 2), (2, 0), (2, 0)])
    assert result["cycles"] == [[0, 1, 2]]
    transitive = ag.ranking_with_cycles(3, [(2, 1), (2, 0), (1, 0)])
    assert transitive == {"ranking": [2, 1, 0], "cycles": []}


def test_bootstrap_handles_wide_value_domains_through_the_general_pattern_path():
    rng = np.random.default_rng(9)
    data = rng.integers(0, 60, size=(4, 200)).astype(float)
    data[:, 100:] = data[0, 100:]  # half the units agree perfectly
    data[rng.random(data.shape) < 0.2] = np.nan
    counts, levels = ag.reliability_to_counts(data)
    est = ag.alpha_estimate(counts, levels, "interval", n_boot=200, seed=0)
    assert est.value == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))
    assert est.low < est.value < est.high


# --- Units: the count matrix as distinct rows -------------------------------------------------------


def units_in_blocks(counts: np.ndarray, sizes: list[int]) -> ag.Units:
    builder = ag.UnitsBuilder(counts.shape[1])
    start = 0
    for size in [*sizes, len(counts)]:
        builder.add(counts[start : start + size].astype(np.int64))
        start = min(len(counts), start + size)
    return builder.build()


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
@pytest.mark.parametrize("seed", range(4))
def test_units_give_the_count_matrix_figures_bit_for_bit(seed, level):
    # Six raters, a third of the ratings missing: units rated 0 to 6 times, weights 1/(m-1) such as 1/3.
    counts, levels = ag.reliability_to_counts(random_reliability(seed, units=700))
    units = units_in_blocks(counts, [1, 40, 7, 300])
    assert np.array_equal(units.patterns[units.of_unit], counts)
    assert len(units.patterns) < len(counts) / 4
    alpha, percent = ag.units_estimates(units, levels, level, n_boot=300, seed=seed)
    assert alpha == ag.alpha_estimate(counts, levels, level, n_boot=300, seed=seed)
    assert percent == ag.percent_estimate(counts, n_boot=300, seed=seed)
    assert ag.units_fleiss_kappa(units) == ag.fleiss_kappa(counts)
    assert np.array_equal(units.coincidences(), ag.coincidence_matrix(counts))
    some = np.flatnonzero(np.random.default_rng(seed).random(len(counts)) < 0.3)
    assert ag.units_alpha(units, levels, level, some) == ag.krippendorff_alpha(counts[some], levels, level)
    assert ag.units_percent(units, some) == ag.percent_agreement(counts[some])
    assert np.array_equal(units.value_totals(), counts.sum(axis=0))


def test_units_order_wide_value_domains_as_the_bootstrap_does():
    rng = np.random.default_rng(9)
    data = rng.integers(0, 60, size=(4, 200)).astype(float)
    data[rng.random(data.shape) < 0.2] = np.nan
    counts, levels = ag.reliability_to_counts(data)
    assert counts.shape[1] * np.log2(counts.max() + 1) >= 62  # the general path of both
    rows, mult = units_in_blocks(counts, [50, 50]).pairable()
    expected_rows, expected_mult = ag._patterns(counts)
    assert np.array_equal(rows, expected_rows) and np.array_equal(mult, expected_mult)


def test_units_without_ratings_have_no_figures():
    units = ag.Units.from_counts(np.zeros((3, 2)))
    alpha, percent = ag.units_estimates(units, np.arange(2.0), "nominal", n_boot=10)
    assert np.isnan(alpha.value) and np.isnan(percent.value) and alpha.n_units == 0
    assert np.isnan(ag.units_fleiss_kappa(units))
    assert np.array_equal(units.coincidences(), np.zeros((2, 2)))
    empty = ag.UnitsBuilder(2).build()
    assert empty.n_units == 0 and np.isnan(ag.units_alpha(empty, np.arange(2.0), "nominal"))


def test_coincidences_summed_over_blocks_of_units_are_exact_where_every_weight_is(monkeypatch):
    """Past one block, the product is summed a block at a time: with 2, 3, 5 or 9 ratings per unit every
    term is a multiple of 1/8 and the sum is the same in any order; with 4 or 6 it stays within rounding."""
    monkeypatch.setattr(ag, "COINCIDENCE_BLOCK", 64)
    rng = np.random.default_rng(3)
    for ratings, exact in (((2, 3, 5, 9), True), ((2, 4, 6), False)):
        m = rng.choice(ratings, size=1000)
        counts = np.stack([np.bincount(rng.integers(0, 4, size=k), minlength=4) for k in m]).astype(np.float64)
        blocked = ag.Units.from_counts(counts).coincidences()
        if exact:
            assert np.array_equal(blocked, ag.coincidence_matrix(counts))
        else:
            assert np.allclose(blocked, ag.coincidence_matrix(counts), rtol=1e-13, atol=0)
