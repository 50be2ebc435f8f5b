"""Import end to end: ``manage.py import_items`` in a fresh process, as a user runs it, SQLite and PostgreSQL.

    python bench/import_bench.py [--sizes 100000,1000000] [--formats jsonl,csv] [--backends sqlite,postgresql]

Each measurement is the real command on a generated file, from its start to its exit: Python and
Django starting, the batch created, the file checked and written, the summary printed. Printed:
the command's seconds and rows/s (what the user waits for), its peak RSS (the process's own
high-water mark, VmHWM) and rows per CPU-second of that process (PostgreSQL's server-side work
is not in it), and beside them, labelled, the service's own time (the batch's created → finished)
and, with ``--tracemalloc``, the peak Python allocation in a second, slower run. SQLite uses a
temporary database file; PostgreSQL (when DATABASE_URL is set) a scratch database named after
DATABASE_URL's plus "_import_bench", created and dropped here. The last lines print the 1M/100k
memory ratio: flat memory means a ratio near 1.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _memory import run_watched  # noqa: E402

# Named after the configured database, so two people's runs on one server do not meet.
SCRATCH_DB = (urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "goldset") + "_import_bench"
# Runs the command under tracemalloc and prints the peak Python allocation when it exits.
TRACED = (
    "import runpy, sys, tracemalloc; tracemalloc.start(); sys.argv = ['manage.py', *sys.argv[1:]]\n"
    "try:\n    runpy.run_path('manage.py', run_name='__main__')\n"
    "finally:\n    print('tracemalloc peak', tracemalloc.get_traced_memory()[1], file=sys.stderr)"
)

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


def helper(args) -> None:
    """Set-up and read-back steps in their own process (``--helper project`` or ``--helper batch SLUG``)."""
    import django

    django.setup()
    from annotate.models import ImportBatch
    from annotate.services.projects import project_create

    if args.helper == "project":
        slug = f"bench-{os.getpid()}-{int(time.time() * 1000)}"
        project_create(name=slug, slug=slug, task_kinds=["gold", "preference", "rubric"])
        print(slug)
        return
    batch = ImportBatch.objects.filter(project__slug=args.slug).latest("created_at")
    print(
        json.dumps(
            {
                "status": batch.status,
                "rows": batch.rows_imported,
                "service_seconds": (batch.finished_at - batch.created_at).total_seconds(),
            }
        )
    )


def _python(args: list[str], env: dict) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def run_command(file: Path, env: dict, *, traced: bool) -> dict:
    """``manage.py import_items`` on ``file`` into a new project, in a fresh process; its own figures."""
    slug = _python([__file__, "--helper", "project"], env)
    command = ["import_items", slug, str(file)]
    manage = str(ROOT / "manage.py")
    argv = [sys.executable, "-c", TRACED, *command] if traced else [sys.executable, manage, *command]
    run = run_watched(argv, env=env, cwd=ROOT)
    if run["returncode"] != 0:
        raise SystemExit(
            f"import_items failed ({run['returncode']}):\n{run['stdout'][-2000:]}\n{run['stderr'][-3000:]}"
        )
    err = run["stderr"]
    batch = json.loads(_python([__file__, "--helper", "batch", "--slug", slug], env))
    peak = next((int(line.split()[-1]) for line in err.splitlines() if line.startswith("tracemalloc peak")), 0)
    return {
        "rows": batch["rows"],
        "seconds": run["seconds"],
        "cpu_seconds": run["cpu_seconds"],
        "rss_peak": run["peak_mib"] * 2**20,
        "service_seconds": batch["service_seconds"],
        "tracemalloc_peak": peak,
    }


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
    from _roles import scratch_database

    scratch_database(os.environ["DATABASE_URL"], SCRATCH_DB, create=create)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--formats", default="jsonl,csv")
    parser.add_argument("--backends", default="", help="Default: sqlite, plus postgresql when DATABASE_URL is set.")
    parser.add_argument("--tracemalloc", action="store_true", help="Also run each import under tracemalloc (slow).")
    parser.add_argument("--helper", help=argparse.SUPPRESS)
    parser.add_argument("--slug", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helper:
        sys.path.insert(0, str(ROOT))
        helper(args)
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
        print(f"load average before the runs: {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
        print(
            f"{'':28} {'--- manage.py import_items, end to end ---':^46}  {'--- inner ---':^32}\n"
            f"{'backend':<11} {'format':<6} {'rows':>9} {'seconds':>8} {'rows/s':>8} {'rows/cpu-s':>10}"
            f" {'peak RSS':>9}   {'service s':>9} {'rows/s':>8} {'tracemalloc*':>12}"
        )
        for backend in backends:
            if backend == "postgresql":
                pg_scratch(create=True)
            try:
                env = backend_env(backend, tmp)
                migrate = [sys.executable, "manage.py", "migrate", "-v0"]
                if backend == "postgresql":
                    migrate += ["--database", "owner"]
                subprocess.run(migrate, cwd=ROOT, env=env, check=True)
                for fmt in formats:
                    for size in sizes:
                        r = run_command(files[fmt, size], env, traced=False)
                        if args.tracemalloc:
                            r["tracemalloc_peak"] = run_command(files[fmt, size], env, traced=True)["tracemalloc_peak"]
                        results[backend, fmt, size] = r
                        trace = f"{r['tracemalloc_peak'] / 2**20:.1f} MiB" if args.tracemalloc else "-"
                        print(
                            f"{backend:<11} {fmt:<6} {r['rows']:>9,} {r['seconds']:>8.1f}"
                            f" {r['rows'] / r['seconds']:>8,.0f} {r['rows'] / r['cpu_seconds']:>10,.0f}"
                            f" {r['rss_peak'] / 2**20:>5.0f} MiB"
                            f"   {r['service_seconds']:>9.1f} {r['rows'] / r['service_seconds']:>8,.0f} {trace:>12}",
                            flush=True,
                        )
            finally:
                if backend == "postgresql":
                    pg_scratch(create=False)
    if args.tracemalloc:
        print("* peak Python allocation over the whole command (Django's start included), from a second run")
    if len(sizes) >= 2:
        small, big = min(sizes), max(sizes)
        for backend in backends:
            for fmt in formats:
                a, b = results[backend, fmt, small], results[backend, fmt, big]
                trace = (
                    f"tracemalloc peak ×{b['tracemalloc_peak'] / a['tracemalloc_peak']:.2f}, "
                    if a["tracemalloc_peak"]
                    else ""
                )
                print(
                    f"memory ratio {big:,}/{small:,} rows, {backend} {fmt}: {trace}"
                    f"command's peak RSS ×{b['rss_peak'] / a['rss_peak']:.2f} (rows ×{big / small:.0f})"
                )
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
