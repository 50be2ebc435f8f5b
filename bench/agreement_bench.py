"""Agreement report on a large synthetic project: prints seconds and peak memory.

    python bench/agreement_bench.py                  # 100k items × 5 reviews × 2 criteria = 1M ratings
    python bench/agreement_bench.py --items 10000    # quicker

Reviews are drawn from a pool of reviewers larger than the overlap, so not every reviewer sees
every item (the missing-data case). One reviewer scores everything 5 and one leans high, so the
bias code has something to find. Two timings: the numpy report from arrays (what a worker
spends once the rows are read), and the array building from annotation payload dicts.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from annotate.reports import Variable, rubric_variables, variables_report  # noqa: E402

CRITERIA = [
    {"key": "helpful", "name": "Helpfulness", "scale": "ordinal", "levels": [{"value": v} for v in range(1, 6)]},
    {"key": "correct", "name": "Correctness", "scale": "interval", "levels": [{"value": v} for v in range(11)]},
    {"key": "safe", "name": "Safe", "scale": "binary", "levels": [{"value": "yes"}, {"value": "no"}]},
]


def generate(items: int, reviewers: int, overlap: int, n_criteria: int, seed: int):
    rng = np.random.default_rng(seed)
    # Each item gets `overlap` distinct reviewers from the pool.
    raters = np.argsort(rng.random((items, reviewers)), axis=1)[:, :overlap].ravel()
    units = np.repeat(np.arange(items), overlap)
    days = np.repeat(rng.integers(20000, 20090, size=items), overlap)
    variables = []
    for criterion in CRITERIA[:n_criteria]:
        k = len(criterion["levels"])
        truth = np.repeat(rng.integers(0, k, size=items), overlap)
        noise = rng.integers(-1, 2, size=len(units)) * (rng.random(len(units)) < 0.3)
        codes = np.clip(truth + noise, 0, k - 1)
        codes[raters == 0] = k - 1 if criterion["scale"] != "binary" else 0  # reviewer 0 gives the top level
        codes[raters == 1] = np.minimum(codes[raters == 1] + 1, k - 1)  # reviewer 1 leans high
        level = {"binary": "nominal"}.get(criterion["scale"], criterion["scale"])
        levels = (
            np.arange(k, dtype=np.float64)
            if level == "nominal"
            else np.asarray([lv["value"] for lv in criterion["levels"]], dtype=np.float64)
        )
        variables.append(
            Variable(
                key=criterion["key"],
                name=criterion["name"],
                level=level,
                labels=[str(lv["value"]) for lv in criterion["levels"]],
                levels=levels,
                units=units,
                raters=raters,
                codes=codes.astype(np.int64),
                days=days,
            )
        )
    return variables


def measure(fn):
    """Seconds from a plain run, peak memory from a second run under tracemalloc (which slows Python code)."""
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--reviewers", type=int, default=8, help="size of the reviewer pool")
    parser.add_argument("--overlap", type=int, default=5, help="reviews per item")
    parser.add_argument("--criteria", type=int, default=2, choices=[1, 2, 3])
    parser.add_argument("--boot", type=int, default=500, help="bootstrap resamples")
    parser.add_argument("--payload-items", type=int, default=None, help="items for the payload timing (default: all)")
    args = parser.parse_args()

    variables = generate(args.items, args.reviewers, args.overlap, args.criteria, seed=0)
    ratings = sum(len(v.codes) for v in variables)
    names = [f"reviewer{i}" for i in range(args.reviewers)]
    print(
        f"{args.items:,} items × {args.overlap} reviews (pool of {args.reviewers}) × {args.criteria} criteria "
        f"= {args.items * args.overlap:,} annotations, {ratings:,} ratings; {args.boot} bootstrap resamples"
    )

    report, seconds, peak = measure(
        lambda: variables_report(variables, n_units=args.items, rater_names=names, n_boot=args.boot)
    )
    print(f"report from arrays:       {seconds:7.2f} s   peak traced memory {peak:8.1f} MiB")
    for v in report:
        a = v["alpha"]
        flagged = [r["reviewer"] for r in v["reviewers"] if r["flags"]]
        print(
            f"  {v['name']:<12} alpha {a['value']:.4f} [{a['low']:.4f}, {a['high']:.4f}]  "
            f"percent {v['percent']['value']:.4f}  fleiss {v['fleiss_kappa']:.4f}  flagged {flagged}"
        )

    n = args.payload_items or args.items
    keep = np.nonzero(variables[0].units < n)[0]
    # Every criterion's arrays share one order (each review scores all criteria), so position i is one review.
    payload_rows = [
        (
            int(variables[0].units[i]),
            int(variables[0].raters[i]),
            {
                "response_index": 0,
                "scores": {
                    c["key"]: c["levels"][v.codes[i]]["value"] for c, v in zip(CRITERIA, variables, strict=False)
                },
            },
            int(variables[0].days[i]),
        )
        for i in keep
    ]
    _, seconds_b, peak_b = measure(lambda: rubric_variables(CRITERIA[: args.criteria], payload_rows))
    print(
        f"arrays from payload dicts: {seconds_b:6.2f} s   peak traced memory {peak_b:8.1f} MiB   "
        f"({len(payload_rows):,} annotations)"
    )
    total = seconds + seconds_b * (args.items / n)
    print(f"total (payloads → report): {total:6.2f} s")
    print(f"process max RSS:           {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.1f} MiB")


if __name__ == "__main__":
    main()
