"""Inter-rater agreement, vectorized with numpy and free of Django.

Ratings arrive as three parallel arrays of equal length, one entry per judgement:
``units`` (0..U-1), ``raters`` (0..R-1) and ``codes`` (0..K-1, an index into the sorted value
domain ``levels``). A rater who did not see a unit simply has no entry, so missing data needs no
placeholder. Most figures are computed from the unit × value count matrix ``counts`` (U × K),
which is what Krippendorff's coincidence matrix is built from.

A large report keeps that matrix as ``Units``: its distinct rows ("patterns": rubric data has a
few hundred even at a million units) and each unit's pattern, filled a block of units at a time,
so a unit costs four bytes instead of 8·K. Every figure of ``Units`` is the one the count matrix
gives, bit for bit: per-unit values are looked up per pattern and summed in unit order, and the
coincidence matrix is the same matrix product, taken over ``COINCIDENCE_BLOCK`` units at a time
(a float sum over more units than one block can differ from the single product in its last bit
where weights such as 1/3 are not exact in binary; with two, three, five or nine ratings per unit
every term is exact and the result does not depend on the blocks).

References: Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011); Fleiss (1971);
Cohen (1960). The results match the ``krippendorff`` package and ``statsmodels.stats.inter_rater``
to 1e-9 (see tests/annotate/test_agreement.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOMINAL = "nominal"
ORDINAL = "ordinal"
INTERVAL = "interval"
LEVELS_OF_MEASUREMENT = (NOMINAL, ORDINAL, INTERVAL)

# Above this many distinct unit patterns the bootstrap resamples units in chunks instead.
_BOOTSTRAP_CHUNK_BYTES = 64 * 1024 * 1024


def encode(values, domain=None) -> tuple[np.ndarray, np.ndarray]:
    """Map values to codes 0..K-1 over a sorted domain; returns (codes, levels)."""
    values = np.asarray(values)
    levels = np.unique(values) if domain is None else np.asarray(sorted(domain))
    codes = np.searchsorted(levels, values)
    if len(values) and (np.any(codes >= len(levels)) or np.any(levels[np.minimum(codes, len(levels) - 1)] != values)):
        raise ValueError("Some values are outside the value domain: add them to the domain or drop them.")
    return codes.astype(np.int64), levels


def value_counts(units: np.ndarray, codes: np.ndarray, n_units: int, n_levels: int) -> np.ndarray:
    """The U × K matrix of how many raters gave each value to each unit."""
    flat = np.asarray(units, dtype=np.int64) * n_levels + np.asarray(codes, dtype=np.int64)
    return np.bincount(flat, minlength=n_units * n_levels).reshape(n_units, n_levels).astype(np.float64)


def reliability_to_counts(data: np.ndarray, domain=None) -> tuple[np.ndarray, np.ndarray]:
    """Counts and levels from a raters × units matrix with NaN for missing (the krippendorff layout)."""
    data = np.asarray(data, dtype=np.float64)
    raters, units = np.nonzero(~np.isnan(data))
    codes, levels = encode(data[raters, units], domain)
    return value_counts(units, codes, data.shape[1], len(levels)), levels


# --- Krippendorff's alpha ---------------------------------------------------------------------


def unit_coincidences(counts: np.ndarray) -> np.ndarray:
    """Each pairable unit's contribution to the coincidence matrix, shape (U, K, K)."""
    m = counts.sum(axis=1)
    weight = np.divide(1.0, m - 1, out=np.zeros_like(m), where=m >= 2)
    contrib = counts[:, :, None] * counts[:, None, :]
    idx = np.arange(counts.shape[1])
    contrib[:, idx, idx] -= counts
    return contrib * weight[:, None, None]


def coincidence_matrix(counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Krippendorff's coincidence matrix o_ck: value pairs within units, each unit weighted by 1/(m_u-1)."""
    m = counts.sum(axis=1)
    w = np.divide(1.0, m - 1, out=np.zeros_like(m), where=m >= 2)
    if weights is not None:
        w = w * weights
    # N^T diag(w) N without materializing the U × K × K tensor.
    weighted = counts * w[:, None]
    o = weighted.T @ counts
    o[np.diag_indices_from(o)] -= weighted.sum(axis=0)
    return o


def distance_matrix(level: str, levels: np.ndarray, n_v: np.ndarray) -> np.ndarray:
    """Squared distances δ²_ck between values; n_v (…, K) are the value totals (ordinal needs them)."""
    k = len(levels)
    if level == NOMINAL:
        d = 1.0 - np.eye(k)
        return np.broadcast_to(d, n_v.shape[:-1] + (k, k)).copy()
    if level == INTERVAL:
        v = np.asarray(levels, dtype=np.float64)
        d = (v[:, None] - v[None, :]) ** 2
        return np.broadcast_to(d, n_v.shape[:-1] + (k, k)).copy()
    if level == ORDINAL:
        # δ_ck = Σ_{g=c..k} n_g − (n_c + n_k)/2, with cumulative sums so every pair costs O(1).
        cum = np.cumsum(n_v, axis=-1)
        lo = np.minimum.outer(np.arange(k), np.arange(k))
        hi = np.maximum.outer(np.arange(k), np.arange(k))
        cum0 = np.concatenate([np.zeros(n_v.shape[:-1] + (1,)), cum], axis=-1)
        between = cum0[..., hi + 1] - cum0[..., lo]
        d = between - (n_v[..., :, None] + n_v[..., None, :]) / 2.0
        return d**2
    raise ValueError(f"Unknown level of measurement {level!r}: use one of {', '.join(LEVELS_OF_MEASUREMENT)}.")


def alpha_from_coincidences(o: np.ndarray, level: str, levels: np.ndarray) -> np.ndarray | float:
    """Alpha from one (K, K) or a stack (B, K, K) of coincidence matrices; NaN where undefined."""
    n_v = o.sum(axis=-1)
    n = n_v.sum(axis=-1)
    d = distance_matrix(level, levels, n_v)
    observed = (o * d).sum(axis=(-2, -1))
    expected = (n_v[..., :, None] * n_v[..., None, :] * d).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1.0 - (n - 1.0) * observed / expected
    alpha = np.where((expected > 0) & (n > 1), alpha, np.nan)
    return float(alpha) if np.ndim(alpha) == 0 else alpha


def krippendorff_alpha(counts: np.ndarray, levels: np.ndarray, level: str = NOMINAL) -> float:
    """Krippendorff's alpha from a unit × value count matrix (missing data allowed)."""
    if level not in LEVELS_OF_MEASUREMENT:
        raise ValueError(f"Unknown level of measurement {level!r}: use one of {', '.join(LEVELS_OF_MEASUREMENT)}.")
    return alpha_from_coincidences(coincidence_matrix(counts), level, np.asarray(levels))


# --- Percent agreement, Fleiss and Cohen ------------------------------------------------------


def unit_agreement(counts: np.ndarray) -> np.ndarray:
    """Per unit, the share of rater pairs that agree; NaN for units with fewer than two ratings."""
    m = counts.sum(axis=1)
    pairs = m * (m - 1)
    agree = (counts * (counts - 1)).sum(axis=1)
    return np.divide(agree, pairs, out=np.full_like(m, np.nan), where=pairs > 0)


def percent_agreement(counts: np.ndarray) -> float:
    """Mean pairwise agreement over units rated at least twice."""
    per_unit = unit_agreement(counts)
    ok = ~np.isnan(per_unit)
    return float(per_unit[ok].mean()) if ok.any() else float("nan")


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa; units may have different numbers of raters (each unit's agreement uses its own m),
    which reduces to Fleiss (1971) when every unit has the same number."""
    m = counts.sum(axis=1)
    keep = m >= 2
    if not keep.any():
        return float("nan")
    counts = counts[keep]
    p_unit = unit_agreement(counts)
    p_cat = counts.sum(axis=0) / counts.sum()
    p_exp = float((p_cat**2).sum())
    if p_exp >= 1.0:
        return float("nan")
    return float((p_unit.mean() - p_exp) / (1.0 - p_exp))


def cohen_kappa(table: np.ndarray) -> float:
    """Cohen's kappa from a K × K contingency table of two raters' values on shared units."""
    table = np.asarray(table, dtype=np.float64)
    n = table.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        po = np.trace(table, axis1=-2, axis2=-1) / n
        pe = (table.sum(axis=-1) * table.sum(axis=-2)).sum(axis=-1) / n**2
        kappa = (po - pe) / (1.0 - pe)
    kappa = np.where((n > 0) & (pe < 1.0), kappa, np.nan)
    return float(kappa) if np.ndim(kappa) == 0 else kappa


def pairwise_tables(
    units: np.ndarray, raters: np.ndarray, codes: np.ndarray, n_raters: int, n_levels: int
) -> np.ndarray:
    """Contingency tables for every rater pair, shape (R, R, K, K); [a, b] has a's values on rows."""
    units, raters, codes = (np.asarray(x, dtype=np.int64) for x in (units, raters, codes))
    slots = n_raters * n_levels
    half = pair_counts(units, raters * n_levels + codes, slots).reshape(slots, slots)
    # Count each pair both ways so tables[a, b] and tables[b, a] are transposes of each other.
    both = (half + half.T).reshape(n_raters, n_levels, n_raters, n_levels).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(both, dtype=np.float64)


def pair_counts(units: np.ndarray, slot: np.ndarray, slots: int) -> np.ndarray:
    """How often each ordered pair of "slots" (rater, value) meets on a unit, once per pair of judgements
    (flat, ``slots``²): the one of the pair that comes first in unit order is the row."""
    # Over the judgements grouped by unit, the pairs on one unit are those `gap` apart for gap = 1, 2,
    # ...: counted gap by gap, so no array of all pairs is ever built.
    if len(units) > 1 and not np.all(units[1:] >= units[:-1]):
        order = np.argsort(units, kind="stable")
        units, slot = units[order], slot[order]
    half = np.zeros(slots * slots, dtype=np.int64)
    for gap in range(1, len(units)):
        first = np.flatnonzero(units[gap:] == units[:-gap])
        if not len(first):
            break
        half += np.bincount(slot[first] * slots + slot[first + gap], minlength=slots * slots)
    return half


def pairwise_kappa(tables: np.ndarray) -> np.ndarray:
    """Cohen's kappa for every rater pair (R × R), NaN where two raters share no unit."""
    kappa = cohen_kappa(tables)
    np.fill_diagonal(kappa, np.nan)
    return kappa


def pairwise_percent(tables: np.ndarray) -> np.ndarray:
    """Share of shared units on which each rater pair agrees (R × R)."""
    n = tables.sum(axis=(-2, -1))
    agree = np.trace(tables, axis1=-2, axis2=-1)
    out = np.divide(agree, n, out=np.full_like(n, np.nan), where=n > 0)
    np.fill_diagonal(out, np.nan)
    return out


# --- Bootstrap ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n_units: int

    def as_dict(self) -> dict:
        return {"value": _num(self.value), "low": _num(self.low), "high": _num(self.high), "n_units": self.n_units}


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _patterns(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct unit rows and their multiplicities: rubric data has few, so resampling stays cheap."""
    pairable = counts[counts.sum(axis=1) >= 2]
    if len(pairable) == 0:
        return pairable, np.zeros(0)
    base = int(pairable.max()) + 1
    k = pairable.shape[1]
    if k * np.log2(base) < 62:
        # Each row as one integer in base (max count + 1): a 1-D unique is far faster than axis=0.
        weights = base ** np.arange(k, dtype=np.int64)
        codes = pairable.astype(np.int64) @ weights
        uniq, first, mult = np.unique(codes, return_index=True, return_counts=True)
        return pairable[first], mult.astype(np.float64)
    rows, mult = np.unique(pairable, axis=0, return_counts=True)
    return rows, mult.astype(np.float64)


def _resample_weights(mult: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights over patterns: resampling units with replacement is a multinomial draw."""
    return rng.multinomial(int(mult.sum()), mult / mult.sum(), size=n_boot).astype(np.float64)


def alpha_estimate(
    counts: np.ndarray, levels: np.ndarray, level: str, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> Estimate:
    """Alpha with a percentile bootstrap confidence interval over units."""
    value = krippendorff_alpha(counts, levels, level)
    rows, mult = _patterns(counts)
    return _alpha_bootstrap(value, rows, mult, levels, level, n_boot=n_boot, seed=seed, ci=ci)


def _alpha_bootstrap(value, rows, mult, levels, level: str, *, n_boot: int, seed: int, ci: float) -> Estimate:
    if len(rows) == 0 or n_boot <= 0:
        return Estimate(value, float("nan"), float("nan"), int(mult.sum()))
    rng = np.random.default_rng(seed)
    contrib = unit_coincidences(rows).reshape(len(rows), -1)
    k = rows.shape[1]
    chunk = max(1, _BOOTSTRAP_CHUNK_BYTES // max(1, 8 * len(rows)))
    alphas = []
    for start in range(0, n_boot, chunk):
        w = _resample_weights(mult, min(chunk, n_boot - start), rng)
        alphas.append(alpha_from_coincidences((w @ contrib).reshape(-1, k, k), level, levels))
    low, high = _percentiles(np.concatenate(alphas), ci)
    return Estimate(value, low, high, int(mult.sum()))


def percent_estimate(counts: np.ndarray, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> Estimate:
    """Percent agreement with a percentile bootstrap confidence interval over units."""
    value = percent_agreement(counts)
    rows, mult = _patterns(counts)
    return _percent_bootstrap(value, rows, mult, n_boot=n_boot, seed=seed, ci=ci)


def _percent_bootstrap(value, rows, mult, *, n_boot: int, seed: int, ci: float) -> Estimate:
    if len(rows) == 0 or n_boot <= 0:
        return Estimate(value, float("nan"), float("nan"), int(mult.sum()))
    rng = np.random.default_rng(seed)
    per_row = unit_agreement(rows)
    w = _resample_weights(mult, n_boot, rng)
    stats = (w @ per_row) / w.sum(axis=1)
    low, high = _percentiles(stats, ci)
    return Estimate(value, low, high, int(mult.sum()))


def _percentiles(stats: np.ndarray, ci: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - ci) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


# --- Many units: distinct count rows -------------------------------------------------------------

# Units per matrix product when ``Units`` sums its coincidences: 32768 units × K values × 8 bytes,
# twice (the counts and their weighted copy), is 5.8 MB at K = 11.
COINCIDENCE_BLOCK = 32768


class UnitsBuilder:
    """``Units`` filled a block of units at a time, in unit order."""

    def __init__(self, n_levels: int):
        self.n_levels = n_levels
        self._index: dict[bytes, int] = {}
        self._rows: list[np.ndarray] = []
        self._parts: list[np.ndarray] = []

    def add(self, counts: np.ndarray) -> None:
        """The next units' rows of the count matrix (integers, U × K)."""
        counts = np.asarray(counts, dtype=np.int64)
        if not len(counts):
            return
        top = int(counts.max()) + 1
        if self.n_levels * np.log2(max(top, 2)) < 62:
            # Each row as one integer in base (max count + 1): a 1-D unique is far faster than axis=0.
            key = counts @ (top ** np.arange(self.n_levels, dtype=np.int64))
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            distinct = counts[first]
        else:
            distinct, inverse = np.unique(counts, axis=0, return_inverse=True)
        ids = np.fromiter((self._pattern(row) for row in distinct), dtype=np.int32, count=len(distinct))
        self._parts.append(ids[inverse.ravel()])

    def _pattern(self, row: np.ndarray) -> int:
        key = row.tobytes()
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self._rows)
            self._rows.append(row.copy())
        return found

    def build(self) -> Units:
        patterns = np.array(self._rows, dtype=np.int64).reshape(len(self._rows), self.n_levels)
        of_unit = np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.int32)
        self._parts = [of_unit]  # held once from here on
        return Units(patterns=patterns, of_unit=of_unit, mult=np.bincount(of_unit, minlength=len(patterns)))


@dataclass(frozen=True)
class Units:
    """A count matrix as its distinct rows (``patterns``, P × K), each unit's row (``of_unit``) and
    how many units have each row (``mult``)."""

    patterns: np.ndarray
    of_unit: np.ndarray
    mult: np.ndarray

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> Units:
        builder = UnitsBuilder(counts.shape[1])
        builder.add(np.asarray(counts).astype(np.int64))
        return builder.build()

    @property
    def n_units(self) -> int:
        return len(self.of_unit)

    def ratings(self) -> np.ndarray:
        """Ratings per pattern (m)."""
        return self.patterns.sum(axis=1)

    def n_pairable(self) -> int:
        """Units rated at least twice."""
        return int(self.mult[self.ratings() >= 2].sum())

    def value_totals(self) -> np.ndarray:
        """How often each value was given over all units: the column sums of the count matrix."""
        return self.mult @ self.patterns

    def pairable(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct rows of units rated at least twice, as ``_patterns`` orders them, and their
        multiplicities (both float64)."""
        keep = (self.ratings() >= 2) & (self.mult > 0)
        rows, mult = self.patterns[keep], self.mult[keep]
        if not len(rows):
            return np.zeros((0, self.patterns.shape[1])), np.zeros(0)
        base = int(rows.max()) + 1
        k = rows.shape[1]
        if k * np.log2(base) < 62:
            order = np.argsort(rows @ (base ** np.arange(k, dtype=np.int64)))
        else:
            order = np.lexsort(rows.T[::-1])
        return rows[order].astype(np.float64), mult[order].astype(np.float64)

    def coincidences(self, units: np.ndarray | None = None) -> np.ndarray:
        """``coincidence_matrix`` of the units (all, or those of ``units``, in that order)."""
        of_unit = self.of_unit if units is None else self.of_unit[units]
        k = self.patterns.shape[1]
        rows = self.patterns.astype(np.float64)
        o, diagonal = np.zeros((k, k)), np.zeros(k)
        for start in range(0, len(of_unit), COINCIDENCE_BLOCK):
            counts = rows[of_unit[start : start + COINCIDENCE_BLOCK]]
            m = counts.sum(axis=1)
            w = np.divide(1.0, m - 1, out=np.zeros_like(m), where=m >= 2)
            weighted = counts * w[:, None]
            if start:
                o += weighted.T @ counts
                diagonal += weighted.sum(axis=0)
            else:  # one block is exactly coincidence_matrix's product
                o, diagonal = weighted.T @ counts, weighted.sum(axis=0)
        o[np.diag_indices_from(o)] -= diagonal
        return o

    def agreement(self, units: np.ndarray | None = None) -> np.ndarray:
        """``unit_agreement`` of the units rated at least twice (all, or those of ``units``), in unit order."""
        of_unit = self.of_unit if units is None else self.of_unit[units]
        pairable = self.ratings() >= 2
        return unit_agreement(self.patterns.astype(np.float64))[of_unit[pairable[of_unit]]]


def units_alpha(units: Units, levels: np.ndarray, level: str, selected: np.ndarray | None = None) -> float:
    """``krippendorff_alpha`` of the count matrix ``units`` holds (or of its rows ``selected``)."""
    if level not in LEVELS_OF_MEASUREMENT:
        raise ValueError(f"Unknown level of measurement {level!r}: use one of {', '.join(LEVELS_OF_MEASUREMENT)}.")
    return alpha_from_coincidences(units.coincidences(selected), level, np.asarray(levels))


def units_percent(units: Units, selected: np.ndarray | None = None) -> float:
    """``percent_agreement`` of the count matrix ``units`` holds (or of its rows ``selected``)."""
    per_unit = units.agreement(selected)
    return float(per_unit.mean()) if len(per_unit) else float("nan")


def units_fleiss_kappa(units: Units) -> float:
    """``fleiss_kappa`` of the count matrix ``units`` holds."""
    per_unit = units.agreement()
    if not len(per_unit):
        return float("nan")
    mult = units.mult * (units.ratings() >= 2)
    totals = (mult @ units.patterns).astype(np.float64)  # integers: exact, in any order
    p_cat = totals / totals.sum()
    p_exp = float((p_cat**2).sum())
    if p_exp >= 1.0:
        return float("nan")
    return float((per_unit.mean() - p_exp) / (1.0 - p_exp))


def units_estimates(
    units: Units, levels: np.ndarray, level: str, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> tuple[Estimate, Estimate]:
    """``alpha_estimate`` and ``percent_estimate`` of the count matrix ``units`` holds."""
    rows, mult = units.pairable()
    return (
        _alpha_bootstrap(units_alpha(units, levels, level), rows, mult, levels, level, n_boot=n_boot, seed=seed, ci=ci),
        _percent_bootstrap(units_percent(units), rows, mult, n_boot=n_boot, seed=seed, ci=ci),
    )


# --- Bias tests ---------------------------------------------------------------------------------


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test p-value (the same rule as scipy.stats.binomtest)."""
    if n <= 0:
        return 1.0
    i = np.arange(1, n + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - i + 1) - np.log(i))])
    ks = np.arange(n + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_pmf = log_comb + ks * np.log(p) + (n - ks) * np.log1p(-p)
    pmf = np.exp(log_pmf)
    if k == n * p:
        return 1.0
    threshold = pmf[k] * (1 + 1e-7)
    return float(min(1.0, pmf[pmf <= threshold].sum()))


# --- Rankings ---------------------------------------------------------------------------------


def ranking_with_cycles(n_items: int, comparisons: list[tuple[int, int]]) -> dict:
    """Rank candidates from (winner, loser) comparisons by net wins; report 3-cycles of the majority relation."""
    wins = np.zeros((n_items, n_items))
    for winner, loser in comparisons:
        if 0 <= winner < n_items and 0 <= loser < n_items and winner != loser:
            wins[winner, loser] += 1
    beats = wins > wins.T
    score = beats.sum(axis=1) - beats.sum(axis=0)
    order = [int(i) for i in np.argsort(-score, kind="stable")]
    cycles = []
    for a in range(n_items):
        for b in range(n_items):
            for c in range(n_items):
                if a < b and a < c and beats[a, b] and beats[b, c] and beats[c, a]:
                    cycles.append([a, b, c])
    return {"ranking": order, "cycles": cycles}
