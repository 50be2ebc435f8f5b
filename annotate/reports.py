"""The agreement report: a project's annotations as arrays (``annotate.report_reader``), numpy does the rest.

``report_build`` reads (rubric reviews grouped by payload and packed rows of the other kinds, on
PostgreSQL). Every figure of a judged variable comes from a ``VariableSums``, fed its ratings a
block of units at a time: the units' count rows as distinct patterns (``agreement.Units``), each
unit's latest day, and per-rater and per-pair sums; it keeps a few bytes per unit and nothing per
rating. The rubric reviews are summed slice by slice as the reader hands them over
(``RubricSums``), so a worker's memory stays nearly flat from 100k to 1M reviews; the gold and
preference rows are arrays held whole, each section's summed in one block (``variables_report``).
The figures are those of the whole count matrix at once, bit for bit (``agreement``'s docstring has
the one limit). The result is a plain JSON-serializable dict, cached in ``AgreementReport`` and
offered as HTML, CSV and JSON. ``bench/agreement_bench.py`` times the whole of it as a worker runs it.
"""

from __future__ import annotations

import difflib
import io
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from django.utils import timezone

from annotate import agreement as ag
from annotate import report_reader
from annotate.consensus import agreement_with, criteria_by_key
from annotate.models import ItemResult, Project, RubricVersion, TaskKind
from config import csvwriter

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
LEVEL_OF_MEASUREMENT = report_reader.LEVEL_OF_MEASUREMENT
# A reviewer giving one value to this share of their items (with at least MIN_BIAS_N items) is flagged.
STRAIGHT_LINE_SHARE = 0.8
MIN_BIAS_N = 20
# Mean distance from the other reviewers on the same items, in level units, that is flagged.
LENIENCY_FLAG = 0.5
MAX_SIMILARITY_PAIRS = 2000
SIGNIFICANCE = 0.01


@dataclass
class Variable:
    """One judged variable: parallel arrays, one entry per rating (units and raters are dense indices)."""

    key: str
    name: str
    level: str
    labels: list[str]
    levels: np.ndarray
    units: np.ndarray
    raters: np.ndarray
    codes: np.ndarray
    days: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def _noop(fraction: float, stage: str) -> None:
    return None


def variables_report(
    variables: list[Variable],
    *,
    n_units: int,
    rater_names: list[str],
    n_boot: int = 500,
    seed: int = 0,
    progress: Progress = _noop,
) -> list[dict]:
    """Every agreement figure for each variable; pure numpy, no database."""
    out = []
    for i, var in enumerate(variables):
        progress(i / max(1, len(variables)), f"Agreement on {var.name}")
        out.append(variable_report(var, n_units=n_units, rater_names=rater_names, n_boot=n_boot, seed=seed))
    progress(1.0, "Done")
    return out


def sums_report(
    variables: list[VariableSums],
    *,
    positions: np.ndarray,
    rater_names: list[str],
    n_boot: int,
    seed: int,
    progress: Progress = _noop,
) -> list[dict]:
    """Every agreement figure for each variable summed so far (``positions``: see ``VariableSums.report``)."""
    out = []
    for i, sums in enumerate(variables):
        progress(i / max(1, len(variables)), f"Agreement on {sums.name}")
        out.append(sums.report(positions=positions, rater_names=rater_names, n_boot=n_boot, seed=seed))
    progress(1.0, "Done")
    return out


def variable_report(var: Variable, *, n_units: int, rater_names: list[str], n_boot: int, seed: int) -> dict:
    """Every agreement figure of one variable given as arrays, its units summed in one block."""
    sums = VariableSums(
        key=var.key, name=var.name, level=var.level, labels=var.labels, levels=var.levels, meta=var.meta
    )
    sums.add(units=var.units, raters=var.raters, codes=var.codes, days=var.days, n_units=n_units)
    return sums.report(positions=np.arange(len(rater_names)), rater_names=rater_names, n_boot=n_boot, seed=seed)


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[_num(x) for x in row] for row in m]


NO_DAY = np.iinfo(np.int32).min


class VariableSums:
    """One judged variable's figures, fed its ratings a block of units at a time, in unit order; what
    it keeps grows with the raters and with four or eight bytes per unit, not with the ratings.

    Each block's units are new (no unit spans two blocks); ratings come in the order their float sums
    run in (a unit's ratings by rater), so the figures are those of all the ratings in one go."""

    def __init__(self, *, key: str, name: str, level: str, labels: list[str], levels: np.ndarray, meta: dict):
        self.key, self.name, self.level, self.labels, self.meta = key, name, level, labels, meta
        self.levels = np.asarray(levels, dtype=np.float64)
        self.k = len(self.levels)
        self.units = ag.UnitsBuilder(self.k)
        self.unit_days: list[np.ndarray] | None = []  # each unit's latest rating (days), NO_DAY for none
        self.n_ratings = 0
        self.n_raters = 0  # raters are dense indices below this (it grows as they appear)
        self.pairs = np.zeros(0, dtype=np.int64)  # (rater, value) × (rater, value) on one unit
        self.per_rater = np.zeros((0, self.k), dtype=np.int64)
        self.agree = np.zeros(0)  # Σ share of the other raters on the unit who gave the same value
        self.agree_n = np.zeros(0, dtype=np.int64)
        self.lean = np.zeros(0)  # Σ value − the other raters' mean on the unit (numeric scales)

    def _grow(self, n_raters: int) -> None:
        if n_raters <= self.n_raters:
            return
        old, k = self.n_raters, self.k
        pairs = np.zeros((n_raters, k, n_raters, k), dtype=np.int64)
        pairs[:old, :, :old, :] = self.pairs.reshape(old, k, old, k)
        self.pairs = pairs.ravel()
        self.per_rater = np.concatenate([self.per_rater, np.zeros((n_raters - old, k), dtype=np.int64)])
        self.agree = np.concatenate([self.agree, np.zeros(n_raters - old)])
        self.agree_n = np.concatenate([self.agree_n, np.zeros(n_raters - old, dtype=np.int64)])
        self.lean = np.concatenate([self.lean, np.zeros(n_raters - old)])
        self.n_raters = n_raters

    def add(self, *, units: np.ndarray, raters: np.ndarray, codes: np.ndarray, days, n_units: int) -> None:
        """The ratings of ``n_units`` new units (``units`` numbers them from 0), with their raters' dense
        indices, value codes and days (None: undated)."""
        k = self.k
        units, raters, codes = (np.asarray(x, dtype=np.int64) for x in (units, raters, codes))
        self._grow(int(raters.max()) + 1 if len(raters) else 0)
        self.n_ratings += len(codes)
        counts = np.bincount(units * k + codes, minlength=n_units * k).reshape(n_units, k)
        self.units.add(counts)
        if days is None or self.unit_days is None:
            self.unit_days = None
        else:
            self.unit_days.append(_latest(units, np.asarray(days, dtype=np.int64), n_units))
        slots = self.n_raters * k
        self.pairs += ag.pair_counts(units, raters * k + codes, slots)
        self.per_rater += np.bincount(raters * k + codes, minlength=slots).reshape(self.n_raters, k)
        # Agreement with others: share of other reviewers on the same unit who gave the same value.
        m = counts.sum(axis=1)
        same = counts[units, codes] - 1
        others = m[units] - 1
        ok = others > 0
        # Sums in the order of the ratings, as one bincount over them all would add them.
        np.add.at(self.agree, raters[ok], same[ok] / others[ok])
        self.agree_n += np.bincount(raters[ok], minlength=self.n_raters)
        if self.level in (ag.ORDINAL, ag.INTERVAL):
            values = self.levels[codes]
            unit_sum = np.bincount(units, values, minlength=n_units)
            others_mean = np.divide(unit_sum[units] - values, others, out=np.zeros_like(values), where=ok)
            np.add.at(self.lean, raters[ok], values[ok] - others_mean[ok])

    def report(self, *, positions: np.ndarray, rater_names: list[str], n_boot: int, seed: int) -> dict:
        """Every figure; ``positions`` places each dense rater index among ``rater_names``."""
        units = self.units.build()
        n_raters, k = len(rater_names), self.k
        self._grow(len(positions))
        positions = np.asarray(positions, dtype=np.int64)[: self.n_raters]
        pairs = np.zeros((n_raters, k, self.n_raters, k), dtype=np.int64)
        pairs[positions] = self.pairs.reshape(self.n_raters, k, self.n_raters, k)
        half = np.zeros((n_raters, k, n_raters, k), dtype=np.int64)
        half[:, :, positions] = pairs
        half = half.reshape(n_raters * k, n_raters * k)
        both = (half + half.T).reshape(n_raters, k, n_raters, k).transpose(0, 2, 1, 3)
        tables = np.ascontiguousarray(both, dtype=np.float64)
        alpha, percent = ag.units_estimates(units, self.levels, self.level, n_boot=n_boot, seed=seed)
        return {
            "key": self.key,
            "name": self.name,
            "level": self.level,
            "labels": self.labels,
            "n_ratings": int(self.n_ratings),
            "n_units": units.n_pairable(),
            "alpha": alpha.as_dict(),
            "percent": percent.as_dict(),
            "fleiss_kappa": _num(ag.units_fleiss_kappa(units)),
            "confusion": units.coincidences().round(6).tolist(),
            "pairwise_kappa": _matrix(ag.pairwise_kappa(tables)),
            "pairwise_percent": _matrix(ag.pairwise_percent(tables)),
            "pairwise_n": tables.sum(axis=(-2, -1)).astype(int).tolist(),
            "over_time": self._over_time(units) if self.unit_days is not None else [],
            "reviewers": self._rater_bias(units, positions, rater_names),
            **self.meta,
        }

    def _over_time(self, units: ag.Units) -> list[dict]:
        """Alpha per period, each unit dated by its latest rating (days if the span is short, else weeks)."""
        rated = np.flatnonzero((units.ratings() >= 2)[units.of_unit])
        if not len(rated):
            return []
        self.unit_days = [np.concatenate(self.unit_days)]  # held once from here on
        days = self.unit_days[0][rated]  # int32: a few bytes per unit
        first_day = int(days.min())
        span = int(days.max()) - first_day
        width = 1 if span <= 45 else 7
        bucket = (days - np.int32(first_day)) // np.int32(width)
        del days
        # Units grouped by period once (a stable sort keeps each period's units in order), not masked per period.
        order = np.argsort(bucket, kind="stable")
        bucket = bucket[order]
        first = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
        periods = bucket[first].astype(np.int64)
        del bucket
        ends = np.append(first[1:], len(order))
        out = []
        for b, lo, hi in zip(periods, first, ends, strict=True):
            chosen = rated[order[lo:hi]]
            out.append(
                {
                    "start": _day_iso(first_day + int(b) * width),
                    "days": width,
                    "n_units": int(len(chosen)),
                    "alpha": _num(ag.units_alpha(units, self.levels, self.level, chosen)),
                    "percent": _num(ag.units_percent(units, chosen)),
                }
            )
        return out

    def _rater_bias(self, units: ag.Units, positions: np.ndarray, rater_names: list[str]) -> list[dict]:
        """Per reviewer: how many ratings, the share of their most common value, and (numeric scales)
        their mean distance from the other reviewers on the same items."""
        n_raters, k = len(rater_names), self.k

        def placed(values: np.ndarray, fill=0) -> np.ndarray:
            out = np.full((n_raters, *values.shape[1:]), fill, dtype=values.dtype)
            out[positions] = values
            return out

        per_rater = placed(self.per_rater)
        n = per_rater.sum(axis=1)
        pooled = units.value_totals().astype(np.float64)
        pooled_share = pooled / pooled.sum() if pooled.sum() else pooled
        agree, agree_n = placed(self.agree), placed(self.agree_n)
        lean = np.full(n_raters, np.nan)
        if self.level in (ag.ORDINAL, ag.INTERVAL):
            lean = np.divide(placed(self.lean), agree_n, out=np.full(n_raters, np.nan), where=agree_n > 0)
            if self.level == ag.ORDINAL:
                # Ordinal levels have no unit; express the lean in steps between adjacent levels.
                step = np.diff(self.levels).mean() if k > 1 else 1.0
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
                flags.append(
                    f"gives {self.labels[top]} to {share:.0%} of items (all reviewers: {pooled_share[top]:.0%})"
                )
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
                    "top_value": self.labels[top],
                    "top_share": _num(share),
                    "agreement_with_others": _num(agree[r] / agree_n[r]) if agree_n[r] else None,
                    "lean": _num(lean[r]),
                    "flags": flags,
                }
            )
        return out


def _latest(units: np.ndarray, days: np.ndarray, n_units: int) -> np.ndarray:
    """Each unit's latest day (NO_DAY for a unit without ratings)."""
    latest = np.full(n_units, NO_DAY, dtype=np.int64)
    if len(units) and np.all(units[1:] >= units[:-1]):  # rows in unit order, as the sections arrange them
        starts = np.flatnonzero(np.concatenate(([True], units[1:] != units[:-1])))
        latest[units[starts]] = np.maximum.reduceat(days, starts)
    else:
        np.maximum.at(latest, units, days)
    return latest.astype(np.int32)


def _day_iso(day: int) -> str:
    return str(np.datetime64(day, "D"))


# --- From the database --------------------------------------------------------------------------


class _Clock:
    """Seconds spent per stage (read, arrange, compute), for the log and the benchmark."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class _Section:
    """One task kind's rows, in (item, reviewer) order, with dense unit and rater indices."""

    index: np.ndarray  # positions in ReportRows
    units: np.ndarray
    raters: np.ndarray
    items: np.ndarray  # item id of each unit

    @property
    def n_units(self) -> int:
        return len(self.items)


def _section(rows: report_reader.ReportRows, mask: np.ndarray, rater: np.ndarray, n_raters: int) -> _Section:
    """The rows of ``mask`` as units, one per item."""
    index = np.flatnonzero(mask)
    items = rows.item[index]
    if len(items) and np.all(items[1:] >= items[:-1]):
        new = np.empty(len(items), dtype=bool)
        new[:1] = True
        np.not_equal(items[1:], items[:-1], out=new[1:])
        units = np.cumsum(new) - 1
        unit_items = items[new]
    else:
        unit_items, units = np.unique(items, return_inverse=True)
    raters = rater[index]
    # Units are numbered by item id and rows ordered by (item, reviewer), whatever order the
    # database returned them in: float sums over rows then come out the same on every plan.
    key = units * n_raters + raters
    if len(key) and not np.all(key[1:] > key[:-1]):
        order = np.argsort(key, kind="stable")
        index, units, raters = index[order], units[order], raters[order]
    return _Section(index=index, units=units.astype(np.int64), raters=raters.astype(np.int64), items=unit_items)


class Raters:
    """Reviewer ids as dense indices, numbered in the order they appear."""

    def __init__(self):
        self.ids = np.zeros(0, dtype=np.int64)  # the reviewer id of each index
        self._sorted = self.ids
        self._index = self.ids

    def index(self, reviewer: np.ndarray) -> np.ndarray:
        reviewer = np.asarray(reviewer, dtype=np.int64)
        at = np.searchsorted(self._sorted, reviewer)
        known = at < len(self._sorted)
        known[known] = self._sorted[at[known]] == reviewer[known]
        if not known.all():  # a reviewer not met before (rare: reviewers are few)
            self.ids = np.concatenate([self.ids, np.unique(reviewer[~known])])
            self._index = np.argsort(self.ids, kind="stable")
            self._sorted = self.ids[self._index]
            at = np.searchsorted(self._sorted, reviewer)
        return self._index[at]


class RubricSums:
    """The rubric section, fed the reader's chunks of reviews (in item order) as they arrive: one
    ``VariableSums`` per criterion, over units of one response of one item (the scores of different
    responses of an item are never compared)."""

    def __init__(self, criteria: list[dict], raters: Raters):
        self.raters = raters
        self.seen = 0  # rubric reviews, counted or not: the section is shown when there are any
        self.n_annotations = 0
        self.n_items = 0
        self.variables = []
        for criterion in criteria:
            level, levels, _ = report_reader.score_lookup(criterion)
            numeric = (
                np.arange(len(levels), dtype=np.float64)
                if level == "nominal"
                else np.asarray([lv["value"] for lv in levels], dtype=np.float64)
            )
            self.variables.append(
                VariableSums(
                    key=criterion["key"],
                    name=criterion["name"],
                    level=level,
                    labels=[str(lv.get("label") or lv["value"]) for lv in levels],
                    levels=numeric,
                    meta={"scale": criterion["scale"]},
                )
            )

    def add(self, chunk: report_reader.RubricChunk) -> None:
        """One chunk of reviews: those made under the covered rubric version count; scores outside
        the levels (code -1) are left out of their criterion."""
        self.seen += len(chunk)
        index = np.flatnonzero((chunk.flags & report_reader.COUNTED) != 0)
        if not len(index):
            return
        # Responses per item are few (an import allows 20): item and response in one sortable key.
        key = chunk.item[index] * 1024 + (chunk.response[index].astype(np.int64) + 1)
        if np.all(key[1:] >= key[:-1]):
            new = np.empty(len(key), dtype=bool)
            new[:1] = True
            np.not_equal(key[1:], key[:-1], out=new[1:])
            units = np.cumsum(new) - 1
            unit_items = key[new] // 1024
        else:
            unit_keys, units = np.unique(key, return_inverse=True)
            unit_items = unit_keys // 1024
        del key
        reviewer = chunk.reviewer[index].astype(np.int64)
        # Ratings by unit, then by reviewer id: the order their float sums run in.
        order = units * (int(reviewer.max()) + 1) + reviewer
        if np.all(order[1:] > order[:-1]):
            order = None
        else:
            order = np.argsort(order, kind="stable")
            index, units, reviewer = index[order], units[order], reviewer[order]
        raters = self.raters.index(reviewer)
        days = chunk.day[index].astype(np.int64)
        n_units = len(unit_items)
        self.n_annotations += len(index)
        self.n_items += int(np.count_nonzero(unit_items[1:] != unit_items[:-1])) + 1
        for j, sums in enumerate(self.variables):
            codes = chunk.scores[j, index].astype(np.int64)
            keep = codes >= 0
            if keep.all():  # the usual case: every criterion shares the chunk's arrays
                sums.add(units=units, raters=raters, codes=codes, days=days, n_units=n_units)
            else:
                sums.add(units=units[keep], raters=raters[keep], codes=codes[keep], days=days[keep], n_units=n_units)


def _categorical(key: str, name: str, labels: list[str], codes: np.ndarray, rows, section: _Section) -> Variable:
    return Variable(
        key=key,
        name=name,
        level="nominal",
        labels=labels,
        levels=np.arange(len(labels), dtype=np.float64),
        units=section.units,
        raters=section.raters,
        codes=codes.astype(np.int64),
        days=rows.day[section.index].astype(np.int64),
    )


def _label_codes(names: list[str], table: np.ndarray, order: list[str]) -> np.ndarray:
    """Codes (positions in ``order``) for rows whose label is ``names[table[i]]``."""
    if not len(table):
        return np.zeros(0, dtype=np.int64)
    present, inverse = np.unique(table, return_inverse=True)
    position = {label: i for i, label in enumerate(order)}
    return np.asarray([position[names[int(p)]] for p in present], dtype=np.int64)[inverse]


def _preference_variable(rows: report_reader.ReportRows, section: _Section) -> Variable:
    pcat, chosen = rows.pcat[section.index], rows.chosen[section.index]
    by_chosen = pcat == report_reader.RESPONSE_CHOSEN
    chosen_values = np.unique(chosen[by_chosen])
    names = {f"response:{int(c)}" for c in chosen_values}
    names |= {rows.preference_labels[int(p)] for p in np.unique(pcat[~by_chosen])}
    # Labels that sort level (anything "response:" with a non-number) are ordered by name.
    labels = sorted(names, key=lambda label: (_category_order(label), label))
    codes = np.empty(len(pcat), dtype=np.int64)
    position = {label: i for i, label in enumerate(labels)}
    chosen_codes = np.asarray([position[f"response:{int(c)}"] for c in chosen_values], dtype=np.int64)
    codes[by_chosen] = chosen_codes[np.searchsorted(chosen_values, chosen[by_chosen])]
    codes[~by_chosen] = _label_codes(rows.preference_labels, pcat[~by_chosen], labels)
    return _categorical("choice", "Chosen side", labels, codes, rows, section)


def _gold_variable(rows: report_reader.ReportRows, section: _Section) -> Variable:
    gcat = rows.gcat[section.index]
    names = {rows.gold_labels[int(g)] for g in np.unique(gcat)}
    labels = [a for a in ("accept", "edit", "write", "unusable") if a in names]
    labels += sorted(names - set(labels))
    return _categorical("action", "Action", labels, _label_codes(rows.gold_labels, gcat, labels), rows, section)


def report_rubric_version(*, project: Project, rubric_version: RubricVersion | None = None) -> RubricVersion | None:
    """The rubric version a report covers: the one asked for, else the active one, else the newest scored."""
    if rubric_version is not None:
        return rubric_version
    versions = RubricVersion.objects.filter(rubric__project=project)
    return (
        versions.filter(status=RubricVersion.Status.ACTIVE).order_by("-activated_at").first()
        or versions.filter(annotation__isnull=False).order_by("-created_at", "-pk").first()
    )


# Shares of the progress bar: reading the rows is most of the wait on a large project.
READ_UNTIL, ARRANGE_UNTIL, COMPUTE_UNTIL = 0.6, 0.65, 0.97


def report_build(
    *,
    project: Project,
    rubric_version: RubricVersion | None = None,
    n_boot: int = 500,
    seed: int = 0,
    progress: Progress = _noop,
) -> dict:
    """The full agreement report of a project as a JSON-serializable dict."""
    clock = _Clock()
    progress(0.02, "Reading annotations")
    with clock("read"):
        version = report_rubric_version(project=project, rubric_version=rubric_version)
        raters = Raters()
        rubric = RubricSums(version.criteria if version else [], raters)
        data = report_reader.read(
            project=project,
            version=version,
            max_similarity_pairs=MAX_SIMILARITY_PAIRS,
            progress=lambda f, stage: progress(0.02 + (READ_UNTIL - 0.02) * f, stage),
            rubric=rubric.add,
        )
    progress(READ_UNTIL, "Arranging arrays")
    rows = data.rows
    with clock("arrange"):
        rater_ids = np.asarray(sorted(data.names), dtype=np.int64)
        rater_names = [data.names[int(r)] for r in rater_ids]
        rater = np.searchsorted(rater_ids, rows.reviewer)
        kind = rows.kind
        present = np.bincount(kind, minlength=4)
        plans = []
        for name in (TaskKind.GOLD, TaskKind.PREFERENCE):
            code = report_reader.KIND_CODE[name]
            if not present[code]:
                continue
            section = _section(rows, kind == code, rater, len(rater_names))
            if name == TaskKind.PREFERENCE:
                variables = [_preference_variable(rows, section)]
            else:
                variables = [_gold_variable(rows, section)]
            plans.append((name, section, int(present[code]), variables))
        if rubric.seen:  # its rows were summed as they were read
            plans.append((TaskKind.RUBRIC, None, rubric.n_annotations, rubric.variables))
    progress(ARRANGE_UNTIL, "Computing agreement")
    sections = []
    with clock("compute"):
        for i, (name, section, n_annotations, variables) in enumerate(plans):

            def sub_progress(f, stage, i=i):
                progress(ARRANGE_UNTIL + (COMPUTE_UNTIL - ARRANGE_UNTIL) * (i + f) / len(plans), stage)

            if name == TaskKind.RUBRIC:
                extra = {"rubric_version": {"id": version.pk, "label": str(version)} if version else None}
                n_items = rubric.n_items
                figures = sums_report(
                    variables,
                    positions=np.searchsorted(rater_ids, raters.ids),
                    rater_names=rater_names,
                    n_boot=n_boot,
                    seed=seed,
                    progress=sub_progress,
                )
            else:
                if name == TaskKind.PREFERENCE:
                    extra = {"left_pick": left_pick(rows, section, rater_names), "rankings": rankings(rows, section)}
                else:
                    extra = {"edit_similarity": edit_similarity(data.answers)}
                n_items = _distinct_count(section.items)
                figures = variables_report(
                    variables,
                    n_units=section.n_units,
                    rater_names=rater_names,
                    n_boot=n_boot,
                    seed=seed,
                    progress=sub_progress,
                )
            sections.append(
                {
                    "kind": str(name),
                    "title": TaskKind(name).label,
                    "n_annotations": n_annotations,
                    "n_items": n_items,
                    "variables": figures,
                    **extra,
                }
            )
        progress(COMPUTE_UNTIL, "Scoring check items")
        checks = check_accuracy(project, data.check_rows, data.checks, data.names, version)
    report = {
        "project": {"slug": project.slug, "name": project.name},
        "generated_at": timezone.now().isoformat(),
        "n_annotations": data.n_annotations,
        "n_items": data.n_items,
        "reviewers": rater_names,
        "result_status": {s: int(data.status_counts.get(s, 0)) for s in ItemResult.Status.values},
        "bootstrap": {"resamples": n_boot, "seed": seed, "interval": 0.95},
        "sections": sections,
        "checks": checks,
    }
    seconds = clock.seconds
    logger.info(
        "agreement report %s: %d annotations; read %.2f s, arrange %.2f s, compute %.2f s; %d coded in Python",
        project.slug,
        data.n_annotations,
        seconds["read"],
        seconds["arrange"],
        seconds["compute"],
        data.coded_in_python,
    )
    progress(1.0, "Done")
    return report


def _distinct_count(values: np.ndarray) -> int:
    if len(values) and np.all(values[1:] >= values[:-1]):
        return int(np.count_nonzero(values[1:] != values[:-1])) + 1
    return len(np.unique(values))


def _category_order(label: str) -> tuple:
    if label.startswith("response:"):
        return (0, int(label.split(":")[1]) if label.split(":")[1].isdigit() else 0)
    return (1, label)


def left_pick(rows: report_reader.ReportRows, section: _Section, rater_names: list[str]) -> list[dict]:
    """Per reviewer, how often the response shown on the left was chosen, against chance (two-response items)."""
    flags, olen = rows.flags[section.index], rows.olen[section.index]
    counted = ((flags & report_reader.RESPONSE) != 0) & (olen == 2)
    chose_left = counted & ((flags & report_reader.LEFT) != 0)
    total = np.bincount(section.raters[counted], minlength=len(rater_names))
    left = np.bincount(section.raters[chose_left], minlength=len(rater_names))
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


def rankings(rows: report_reader.ReportRows, section: _Section) -> dict:
    """For items with more than two responses: the ranking by net wins and any intransitive cycles."""
    index = section.index
    ranked = index[((rows.flags[index] & report_reader.RESPONSE) != 0) & (rows.olen[index] > 2)]
    comparisons: dict[int, list] = defaultdict(list)
    sizes: dict[int, int] = {}
    none = report_reader.NONE
    for item_id, n, chosen, rejected in zip(
        rows.item[ranked].tolist(),
        rows.olen[ranked].tolist(),
        rows.chosen[ranked].tolist(),
        rows.rejected[ranked].tolist(),
        strict=True,
    ):
        sizes[item_id] = n
        if chosen != none and rejected != none:
            comparisons[item_id].append((chosen, rejected))
        elif chosen != none:
            comparisons[item_id] += [(chosen, j) for j in range(n) if j != chosen]
    cyclic = []
    for item_id, pairs in comparisons.items():
        result = ag.ranking_with_cycles(sizes[item_id], pairs)
        if result["cycles"]:
            cyclic.append({"item_id": item_id, **result})
    return {"items_ranked": len(comparisons), "items_with_cycles": len(cyclic), "examples": cyclic[:20]}


def edit_similarity(answers: dict[int, list[str]]) -> dict:
    """How close reviewers' edited or written answers to the same item are (difflib ratio, 0..1)."""
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


def check_accuracy(project: Project, rows: list[tuple], checks: dict, names: dict, version) -> list[dict]:
    """Each reviewer's accuracy on known-answer check items (0..1; rubric items score the share of criteria)."""
    if not checks:
        return []
    criteria = criteria_by_key(version)
    scores: dict[int, list[float]] = defaultdict(list)
    for item_id, reviewer_id, kind, payload in rows:
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


# --- Downloads ---------------------------------------------------------------------------------

CSV_HEADER = ["section", "variable", "metric", "reviewer", "other_reviewer", "value", "low", "high", "n", "p_value"]


def report_csv(report: dict) -> str:
    """The report's figures as tidy CSV rows (one figure per row); reviewer names never start a formula."""
    out = io.StringIO()
    w = csvwriter.writer(out)
    w.writerow(CSV_HEADER)
    for s in report["sections"]:
        for v in s["variables"]:
            for metric in ("alpha", "percent"):
                e = v[metric]
                w.writerow([s["kind"], v["key"], metric, "", "", e["value"], e["low"], e["high"], e["n_units"]])
            w.writerow([s["kind"], v["key"], "fleiss_kappa", "", "", v["fleiss_kappa"], "", "", v["n_units"]])
            names = report["reviewers"]
            for a, row in enumerate(v["pairwise_kappa"]):
                for b, kappa in enumerate(row):
                    if b > a and v["pairwise_n"][a][b]:
                        w.writerow(
                            [
                                s["kind"],
                                v["key"],
                                "cohen_kappa",
                                names[a],
                                names[b],
                                kappa,
                                "",
                                "",
                                v["pairwise_n"][a][b],
                            ]
                        )
            for r in v["reviewers"]:
                w.writerow([s["kind"], v["key"], "top_share", r["reviewer"], "", r["top_share"], "", "", r["n"]])
                if r["lean"] is not None:
                    w.writerow([s["kind"], v["key"], "lean", r["reviewer"], "", r["lean"], "", "", r["n"]])
        for r in s.get("left_pick", []):
            w.writerow(
                [s["kind"], "choice", "left_pick_rate", r["reviewer"], "", r["rate"], "", "", r["n"], r["p_value"]]
            )
    for c in report["checks"]:
        w.writerow(["checks", "", "check_accuracy", c["reviewer"], "", c["accuracy"], "", "", c["n"]])
    return out.getvalue()
