"""Eval set export throughput and memory at 100k and 1M records.

    python bench/export_bench.py                     # 100k and 1M records
    python bench/export_bench.py --sizes 20000       # a quick run

Runs on a scratch SQLite database in a temporary directory (eval tables are write-once, so a
benchmark must never fill a real database). Each size gets its own frozen version; each layout is
exported twice through the same code as `manage.py export_evalset`, and the run checks that the two
files are byte-identical and that the canonical file hashes to the version's sha256.
"""

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
if sys.argv[1:2] == ["--child"]:
    SCRATCH = Path(os.environ["GOLDSET_VAR_DIR"])
else:
    SCRATCH = Path(tempfile.mkdtemp(prefix="goldset-export-bench-"))
for var in ("DATABASE_URL", "REDIS_URL"):
    os.environ.pop(var, None)
os.environ["GOLDSET_VAR_DIR"] = str(SCRATCH)
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"

import django  # noqa: E402

django.setup()

from _memory import PeakRSS  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from annotate.models import Project  # noqa: E402
from evalsets.export import canonical_line, record_content_hash, write_export  # noqa: E402
from evalsets.models import EvalRecord, EvalSetVersion  # noqa: E402
from evalsets.selectors import evalset_records_iter, evalset_version_info  # noqa: E402

WORDS = [
    "the",
    "a",
    "customer",
    "plan",
    "billing",
    "refund",
    "password",
    "reset",
    "account",
    "support",
    "agent",
    "please",
    "thanks",
    "order",
]


def generate(size: int, number: int):
    """The records of a bench version, the same sequence on every call."""
    rng = random.Random(size)
    kinds = ["gold", "preference", "rubric"]
    for i in range(size):
        kind = kinds[i % 3]
        text = " ".join(rng.choices(WORDS, k=40))
        yield {
            "position": i,
            "item_id": number * 10_000_000 + i,
            "kind": kind,
            "prompt": f"Question {i}: {text}?",
            "messages": None,
            "reference": f"Answer {i}: {text}." if kind == "gold" else "",
            "response": f"Scored response {i}" if kind == "rubric" else "",
            "chosen": f"Good reply {i}: {text}" if kind == "preference" else "",
            "rejected": f"Bad reply {i}" if kind == "preference" else "",
            "rubric_scores": {"helpful": i % 5} if kind == "rubric" else None,
            "rubric_version_id": None,
            "reviewer_ids": [1, 2],
            "agreement": 1.0,
            "agreeing_reviews": 2,
            "adjudicated": False,
            "provenance": "human",
        }


def make_version(project, user, size: int, number: int) -> EvalSetVersion:
    # Two passes (hash, then insert) so a 1M-record version never sits in memory: the version row
    # is write-once, so its sha256 must be known before it is inserted.
    sha = hashlib.sha256()
    for record in generate(size, number):
        sha.update((canonical_line(record) + "\n").encode())
    version = EvalSetVersion.objects.create(
        project=project,
        number=number,
        sha256=sha.hexdigest(),
        record_count=size,
        changelog=f"bench {size}",
        frozen_by=user,
        frozen_at=timezone.now(),
    )
    batch = []
    for record in generate(size, number):
        batch.append(EvalRecord(version=version, content_hash=record_content_hash(record), **record))
        if len(batch) == 5000:
            EvalRecord.objects.bulk_create(batch)
            batch = []
    EvalRecord.objects.bulk_create(batch)
    return version


def child(version_id: int, fmt: str, out: Path) -> None:
    """Export in a fresh process, so its peak RSS is the export's own."""
    # ru_maxrss would carry the parent's peak across fork/exec; sample this process instead.
    version = EvalSetVersion.objects.select_related("project", "frozen_by").get(pk=version_id)
    info = evalset_version_info(version=version)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        data, _ = write_export(evalset_records_iter(version=version), version_info=info, fmt=fmt, directory=out)
        elapsed = time.perf_counter() - t0
    print(f"{elapsed} {mem.peak_mib} {data}")


def run_child(version_id: int, fmt: str, out: Path) -> tuple[float, float, Path]:
    env = {**os.environ, "GOLDSET_VAR_DIR": str(SCRATCH)}
    cmd = [sys.executable, __file__, "--child", str(version_id), fmt, str(out)]
    line = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.split()
    return float(line[0]), float(line[1]), Path(line[2])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="Record counts, comma-separated.")
    parser.add_argument("--formats", default="goldset,prompt-completion,openai-dpo")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench")
    project = Project.objects.create(name="Bench", slug="bench", task_kinds=["gold", "preference", "rubric"])
    print(f"scratch SQLite database under {SCRATCH.name} (removed afterwards)")
    rates = {}
    for number, size in enumerate([int(s) for s in args.sizes.split(",")], start=1):
        t0 = time.perf_counter()
        version = make_version(project, user, size, number)
        print(f"{size:>9,} records: inserted in {time.perf_counter() - t0:.0f} s")
        for fmt in args.formats.split(","):
            out = SCRATCH / f"out-{size}"
            elapsed, peak, data = run_child(version.pk, fmt, out / "a")
            _, _, again = run_child(version.pk, fmt, out / "b")
            identical = data.read_bytes() == again.read_bytes()
            rates[(size, fmt)] = (size / elapsed, peak)
            canon = ""
            if fmt == "goldset":
                if hashlib.sha256(data.read_bytes()).hexdigest() != version.sha256:
                    raise SystemExit("FAILED: the canonical export does not hash to the version's sha256")
                canon = ", sha256 = version's"
            print(
                f"  {fmt:<18} {elapsed:6.1f} s  {size / elapsed:>9,.0f} records/s  "
                f"{data.stat().st_size / 2**20 / elapsed:6.1f} MiB/s  exporter's peak RSS {peak:6.1f} MiB  "
                f"re-export byte-identical: {identical}{canon}"
            )
            if not identical:
                raise SystemExit("FAILED: re-export differs")
            for path in out.rglob("*"):
                if path.is_file():
                    path.unlink()
    sizes = sorted({s for s, _ in rates})
    if len(sizes) > 1:
        for fmt in args.formats.split(","):
            (r0, m0), (r1, m1) = rates[(sizes[0], fmt)], rates[(sizes[-1], fmt)]
            print(
                f"{fmt}: {sizes[-1] // sizes[0]}x the records: throughput ratio {r1 / r0:.2f}, "
                f"exporter peak RSS ratio {m1 / m0:.2f} ({m0:.1f} → {m1:.1f} MiB)"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        main()
    else:
        try:
            main()
        finally:
            import shutil

            shutil.rmtree(SCRATCH, ignore_errors=True)
