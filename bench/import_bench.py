"""Import throughput and memory: rows/s and peak memory for generated files, SQLite and PostgreSQL.

    python bench/import_bench.py [--sizes 100000,1000000] [--formats jsonl,csv] [--backends sqlite,postgresql]

rows/s is wall-clock; rows/cpu-s counts only this process's CPU time (the import's own cost, steady
on a busy machine; PostgreSQL's server-side work is not in it). Each measurement runs in a fresh
child process through the real service (``import_batch_create`` + ``import_batch_run``): one timed
run (rows/s, peak RSS above the process's baseline) and one run under tracemalloc (peak Python
allocation; slower, so not timed). SQLite uses a temporary database file; PostgreSQL (when
DATABASE_URL is set) a scratch database, created and dropped here.
The last lines print the 1M/100k memory ratio: flat memory means a ratio near 1.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# One scratch database per run, so two runs on one server never drop each other's.
SCRATCH_DB = f"goldset_bench_intake_{os.getpid()}"

TOPICS = ["refund", "order", "shipping", "account", "billing", "return"]


def generate(path: Path, rows: int, file_format: str, seed: int = 1) -> None:
    """A file of ``rows`` distinct rows mixing the four accepted shapes."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if file_format == "csv":
            import csv

            writer = csv.writer(f)
            writer.writerow(["prompt", "response", "chosen", "rejected", "metadata", "provenance"])
        for i in range(rows):
            topic = TOPICS[i % len(TOPICS)]
            prompt = f"Customer {i} asks about their {topic} (ticket {rng.randint(1, 10**9)}): what should I do next?"
            good = f"For your {topic}, open Orders and follow the steps; case {i} is handled within 3-5 business days."
            bad = f"Just wait for case {i}."
            shape = i % 4
            if file_format == "csv":
                if shape % 2:
                    writer.writerow([prompt, "", good, bad, json.dumps({"topic": topic}), "production_log"])
                else:
                    writer.writerow([prompt, good, "", "", "", ""])
                continue
            if shape == 0:
                row = {"prompt": prompt, "response": good}
            elif shape == 1:
                row = {"prompt": prompt, "chosen": good, "rejected": bad, "metadata": {"topic": topic}}
            elif shape == 2:
                row = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}]}
            else:
                row = {"prompt": prompt, "responses": [good, {"text": bad, "model": "m2"}], "provenance": "distilled"}
            f.write(json.dumps(row) + "\n")


def child(args) -> None:
    """One import in this process; prints a JSON line with the figures."""
    import django

    django.setup()
    import tracemalloc

    from _roles import migrate_alias
    from django.core.management import call_command

    from annotate.models import ImportBatch
    from annotate.services.imports import import_batch_create, import_batch_run
    from annotate.services.projects import project_create

    call_command("migrate", database=migrate_alias(), verbosity=0)
    slug = f"bench-{os.getpid()}-{int(time.time() * 1000)}"
    project = project_create(name=slug, slug=slug, task_kinds=["gold", "preference", "rubric"])
    path = Path(args.file)
    batch = import_batch_create(project=project, uploaded_by=None, filename=path.name, path=path)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.traced:
        tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    import_batch_run(batch_id=batch.id)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = tracemalloc.get_traced_memory()[1] if args.traced else 0
    batch.refresh_from_db()
    if batch.status != ImportBatch.Status.SUCCEEDED:
        raise SystemExit(f"import failed: {batch.message}")
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "rows": batch.rows_imported,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "tracemalloc_peak": peak,
                "rss_peak_kib": rss_kib,
                "rss_growth_kib": max(0, rss_kib - baseline_rss),
            }
        )
    )


def run_child(backend: str, file: Path, traced: bool, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", "--file", str(file)] + (["--traced"] if traced else [])
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{backend} child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def backend_env(backend: str, tmp: Path) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench"),
    }
    env.pop("REDIS_URL", None)
    if backend == "sqlite":
        env.pop("DATABASE_URL", None)
        env["GOLDSET_VAR_DIR"] = str(tmp / "var")
    else:
        env["GOLDSET_DB_NAME"] = SCRATCH_DB
        env["GOLDSET_VAR_DIR"] = str(tmp / "var-pg")
    return env


def pg_scratch(create: bool) -> None:
    from _roles import owner_sql

    # As the owner role, on the maintenance database: the app role must own nothing.
    owner_sql(os.environ["DATABASE_URL"], f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
    if create:
        owner_sql(os.environ["DATABASE_URL"], f"CREATE DATABASE {SCRATCH_DB}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--formats", default="jsonl,csv")
    parser.add_argument("--backends", default="", help="Default: sqlite, plus postgresql when DATABASE_URL is set.")
    parser.add_argument("--no-tracemalloc", action="store_true", help="Skip the (slow) tracemalloc runs.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        child(args)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    formats = args.formats.split(",")
    backends = (
        args.backends.split(",")
        if args.backends
        else ["sqlite"] + (["postgresql"] if os.environ.get("DATABASE_URL") else [])
    )
    results: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory(prefix="goldset-bench-") as tmpdir:
        tmp = Path(tmpdir)
        files = {}
        for fmt in formats:
            for size in sizes:
                files[fmt, size] = tmp / f"rows-{size}.{fmt}"
                generate(files[fmt, size], size, fmt)
        print(
            f"{'backend':<11} {'format':<6} {'rows':>9} {'MB':>7} {'rows/s':>9} {'rows/cpu-s':>10} "
            f"{'tracemalloc peak':>17} {'RSS growth':>11} {'RSS peak':>9}"
        )
        for backend in backends:
            if backend == "postgresql":
                pg_scratch(create=True)
            try:
                env = backend_env(backend, tmp)
                for fmt in formats:
                    for size in sizes:
                        timed = run_child(backend, files[fmt, size], False, env)
                        traced = {} if args.no_tracemalloc else run_child(backend, files[fmt, size], True, env)
                        r = {
                            "rows_s": timed["rows"] / timed["seconds"],
                            "rows_cpu_s": timed["rows"] / timed["cpu_seconds"],
                            "trace": traced.get("tracemalloc_peak", 0),
                            "rss_growth": timed["rss_growth_kib"] * 1024,
                            "rss": timed["rss_peak_kib"] * 1024,
                        }
                        results[backend, fmt, size] = r
                        mb = files[fmt, size].stat().st_size / 1e6
                        trace = f"{r['trace'] / 2**20:.1f} MiB" if traced else "-"
                        print(
                            f"{backend:<11} {fmt:<6} {size:>9,} {mb:>7.1f} {r['rows_s']:>9,.0f} "
                            f"{r['rows_cpu_s']:>10,.0f} {trace:>17} "
                            f"{r['rss_growth'] / 2**20:>7.1f} MiB {r['rss'] / 2**20:>5.0f} MiB",
                            flush=True,
                        )
            finally:
                if backend == "postgresql":
                    pg_scratch(create=False)
    if len(sizes) >= 2:
        small, big = min(sizes), max(sizes)
        for backend in backends:
            for fmt in formats:
                a, b = results[backend, fmt, small], results[backend, fmt, big]
                trace = f"tracemalloc peak ×{b['trace'] / a['trace']:.2f}, " if a["trace"] else ""
                print(
                    f"memory ratio {big:,}/{small:,} rows, {backend} {fmt}: {trace}"
                    f"RSS peak ×{b['rss'] / a['rss']:.2f} (rows ×{big / small:.0f})"
                )


if __name__ == "__main__":
    main()
