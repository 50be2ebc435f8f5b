"""Contamination check end to end: N training texts of a snapshot against 50k eval records.

    python bench/contamination_bench.py                  # 100k and 1M training texts
    python bench/contamination_bench.py --sizes 20000    # a quick run

Eval records have a prompt (~40 words) and an answer (~80 words), so 50k records are ~100k eval
texts; snapshot records hold two ~80-word texts each (prompt and completion). 0.1% of the training
texts are planted near-duplicates of eval texts (re-cased, re-spaced, truncated, reworded or
embedded), and the run checks that the verdict blocks the snapshot for exactly those.

The data goes into a scratch database (eval sets and snapshots are write-once, so a benchmark must
never fill a real one): with DATABASE_URL (and REDIS_URL) a PostgreSQL database named after it plus
"_contamination_bench", else a temporary SQLite file with the filesystem broker; removed at the end.
A Celery worker runs as docker-compose runs it (``celery -A config worker -Q default -l info
--concurrency 2``). End to end is what an admin waits for: the snapshot page's "check" POST (view
→ task queued on commit) until the verdict is stored (the new SnapshotCheck row seen), with the peak
RSS of the worker process that ran it (its VmHWM, reset before). Beside it, labelled inner figures:
the check service called in this process (the database to the verdict, no queue), and the matching
alone over the same texts held in memory (what this benchmark measured before).
"""

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
BACKEND = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
if "--backend" in sys.argv:
    BACKEND = sys.argv[sys.argv.index("--backend") + 1]
if BACKEND == "postgresql" and not os.environ.get("REDIS_URL"):
    raise SystemExit("Set REDIS_URL with DATABASE_URL: the check goes to a Celery worker through Redis.")
SCRATCH = Path(tempfile.mkdtemp(prefix="goldset-contamination-bench-"))
SCRATCH_DB = (urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "goldset") + "_contamination_bench"
if BACKEND == "sqlite":
    for var in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(var, None)
else:
    os.environ["GOLDSET_DB_NAME"] = SCRATCH_DB
os.environ["GOLDSET_VAR_DIR"] = str(SCRATCH)
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
os.environ.setdefault("SECRET_KEY", "bench")


def pg_scratch(create: bool) -> None:
    from _roles import scratch_database

    scratch_database(os.environ["DATABASE_URL"], SCRATCH_DB, create=create)


if BACKEND == "postgresql":
    pg_scratch(create=True)

import django  # noqa: E402

django.setup()

from _memory import PeakRSS  # noqa: E402
from _roles import migrate_alias  # noqa: E402
from _worker import Worker  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from annotate.models import Project  # noqa: E402
from annotate.services.projects import project_add_members, roles_ensure, user_grant_role  # noqa: E402
from evalsets.contamination import DEFAULT_N, DEFAULT_THRESHOLD, EvalIndex  # noqa: E402
from evalsets.export import canonical_line, record_content_hash  # noqa: E402
from evalsets.models import EvalRecord, EvalSetVersion  # noqa: E402
from evalsets.services import snapshot_contamination_check  # noqa: E402
from training.models import SnapshotCheck, SnapshotRecord, TrainingSnapshot  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "da", "ri", "zu", "be", "fo", "gi", "ha"]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words = set()
    while len(words) < size:
        words.add("".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))))
    return sorted(words)


def sentence(rng: random.Random, vocab: list[str], k: int) -> str:
    return " ".join(rng.choices(vocab, k=k)).capitalize() + "."


def plant(text: str, how: int) -> str:
    words = text.split()
    # A light paraphrase: one word in the first quarter, a second one late in long texts.
    reworded = {len(words) // 4, 3 * len(words) // 4 if len(words) >= 60 else -1}
    return [
        text.upper(),
        "   ".join(words),
        " ".join(words[: len(words) * 2 // 3]),
        " ".join("changed" if i in reworded else w for i, w in enumerate(words)),
        "Forwarded message: " + text + " -- sent from my phone",
    ][how % 5]


def training_texts(size: int, eval_texts: list, pool: list[str], planted: dict):
    """(index, text) for ``size`` training texts; every 1000th is a planted copy of an eval text."""
    for i in range(size):
        if i % 1000 == 999:
            key, text = eval_texts[(i * 7919) % len(eval_texts)]
            planted[i] = key
            yield i, plant(text, i // 1000)
        else:
            yield i, pool[i % len(pool)] if i < len(pool) else pool[i % len(pool)][::-1]


@transaction.atomic
def make_evalset(project, user, eval_texts: list, records: int) -> EvalSetVersion:
    """One frozen version: record i has eval_texts 2i (prompt) and 2i+1 (reference)."""
    rows = []
    for i in range(records):
        rows.append(
            {
                "position": i,
                "item_id": i,
                "kind": "gold",
                "prompt": eval_texts[2 * i][1],
                "messages": None,
                "reference": eval_texts[2 * i + 1][1],
                "response": "",
                "chosen": "",
                "rejected": "",
                "rubric_scores": None,
                "rubric_version_id": None,
                "reviewer_ids": [1, 2],
                "agreement": 1.0,
                "agreeing_reviews": 2,
                "adjudicated": False,
                "provenance": "human",
            }
        )
    sha = hashlib.sha256("".join(canonical_line(r) + "\n" for r in rows).encode()).hexdigest()
    version = EvalSetVersion.objects.create(
        project=project, number=1, sha256=sha, record_count=records, frozen_by=user, frozen_at=timezone.now()
    )
    for start in range(0, records, 5000):
        EvalRecord.objects.bulk_create(
            EvalRecord(version=version, content_hash=record_content_hash(r), **r) for r in rows[start : start + 5000]
        )
    return version


@transaction.atomic
def make_snapshot(user, size: int, eval_texts: list, pool: list[str]) -> tuple[TrainingSnapshot, dict]:
    """A snapshot of size/2 SFT records, two training texts each (prompt, completion)."""
    planted: dict[int, tuple] = {}
    texts = training_texts(size, eval_texts, pool, planted)
    snapshot = TrainingSnapshot.objects.create(
        name=f"bench-{size}", sha256=hashlib.sha256(f"bench-{size}".encode()).hexdigest(), created_by=user
    )
    batch = []
    for position in range(size // 2):
        (_, prompt), (_, completion) = next(texts), next(texts)
        batch.append(
            SnapshotRecord(
                snapshot=snapshot,
                position=position,
                kind=SnapshotRecord.Kind.SFT,
                messages=[{"role": "user", "content": prompt}],
                completion=completion,
                source_item_id=position,
                content_hash=hashlib.sha256(f"{size}-{position}".encode()).hexdigest(),
            )
        )
        if len(batch) == 5000:
            SnapshotRecord.objects.bulk_create(batch)
            batch = []
    SnapshotRecord.objects.bulk_create(batch)
    return snapshot, planted


def verify(check: SnapshotCheck, planted: dict[int, tuple]) -> tuple[int, int, int]:
    """(planted, found, false alarms) from the stored verdict; every listed pair must be a planted one.

    The pairs, which quote eval text, are kept on the evalsets side (ContaminationReport); the verdict the
    trainer role can read holds counts and training record ids only."""
    from evalsets.models import ContaminationReport

    report = check.report
    pairs = ContaminationReport.objects.filter(snapshot_check=check).first()
    planted_records = {i // 2 for i in planted}
    found = false_alarms = 0
    for pair in pairs.pairs if pairs else []:
        position = pair["train"]["position"]
        text_index = 2 * position + (0 if pair["train"]["field"] == "prompt" else 1)
        key = planted.get(text_index)
        expected = key and (key[0], "prompt" if key[1] == "prompt" else "reference")
        if expected == (pair["eval"]["item_id"], pair["eval"]["field"]):
            found += 1
        else:
            false_alarms += 1
    listed_all = not (pairs and pairs.pairs_truncated)
    offending = report.get("offending_train_records", found)
    if listed_all:
        return len(planted), found, false_alarms
    # Not every pair is listed: the blocked records must be exactly as many as the planted ones.
    return len(planted_records), offending - false_alarms, false_alarms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="Training text counts, comma-separated.")
    parser.add_argument("--eval-records", type=int, default=50_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], help="Default: postgresql with DATABASE_URL.")
    args = parser.parse_args()
    call_command("migrate", database=migrate_alias(), verbosity=0)
    roles_ensure()
    user = get_user_model().objects.create_user("bench", password="bench")
    user_grant_role(user=user, role="admin")
    project = Project.objects.create(name="Bench", slug="bench", task_kinds=["gold"])
    project_add_members(project=project, users=[user])
    client = Client()
    client.force_login(user)

    rng = random.Random(20261128)
    vocab = vocabulary(50_000, rng)
    eval_texts = []
    for i in range(args.eval_records):
        eval_texts.append(((i, "prompt"), sentence(rng, vocab, rng.randint(25, 55))))
        eval_texts.append(((i, "reference"), sentence(rng, vocab, rng.randint(50, 110))))
    t0 = time.perf_counter()
    make_evalset(project, user, eval_texts, args.eval_records)
    stored = time.perf_counter() - t0
    print(f"eval set: {args.eval_records:,} records, {len(eval_texts):,} texts, stored in {stored:.0f} s")
    pool = [sentence(rng, vocab, 80) for _ in range(20_000)]
    where = f"scratch PostgreSQL database {SCRATCH_DB}" if BACKEND == "postgresql" else "scratch SQLite database"
    print(f"{where} (removed afterwards); load average {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
    worker = Worker(SCRATCH / "worker.log", name="contamination-bench")
    results = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            t0 = time.perf_counter()
            snapshot, planted = make_snapshot(user, size, eval_texts, pool)
            print(f"{size:>9,} training texts ({size // 2:,} records): stored in {time.perf_counter() - t0:.0f} s")

            # End to end: the page's POST, the worker, the verdict stored.
            worker.reset_peaks()
            before = SnapshotCheck.objects.filter(snapshot=snapshot).count()
            url = reverse("evalsets:snapshot-contamination-check", kwargs={"snapshot_id": snapshot.pk})
            start = time.perf_counter()
            response = client.post(url)
            if response.status_code not in (200, 302):
                raise SystemExit(f"The check request failed: {response.status_code}")
            while SnapshotCheck.objects.filter(snapshot=snapshot).count() == before:
                if time.perf_counter() - start > 3600:
                    raise SystemExit(f"No verdict after an hour:\n{worker.log.read_text()[-3000:]}")
                time.sleep(0.05)
            end_to_end = time.perf_counter() - start
            served_peak = worker.peak_mib()
            check = SnapshotCheck.objects.filter(snapshot=snapshot).latest("checked_at")
            n_planted, found, false_alarms = verify(check, planted)
            print(
                f"  end to end (page → worker → verdict): {end_to_end:6.1f} s, {size / end_to_end:>8,.0f} texts/s,"
                f" worker peak RSS {served_peak:,.0f} MiB; blocked: {not check.passed};"
                f" planted {n_planted}, found {found}, false alarms {false_alarms}"
            )
            if check.passed or found != n_planted or false_alarms:
                raise SystemExit("FAILED: a planted duplicate was missed or an unrelated text was flagged")

            # Inner: the service in this process (database → verdict, no queue, no worker).
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                snapshot_contamination_check(snapshot=snapshot)
                service_s = time.perf_counter() - t0
            print(
                f"  inner, check service in-process:      {service_s:6.1f} s, {size / service_s:>8,.0f} texts/s,"
                f" +{mem.delta_mib:,.0f} MiB RSS during the call"
            )

            # Inner: the matching alone, texts in memory.
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                index = EvalIndex(n=DEFAULT_N).add(eval_texts).build()
                build_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                index.check(training_texts(size, eval_texts, pool, {}), threshold=DEFAULT_THRESHOLD)
                match_s = time.perf_counter() - t0
            print(
                f"  inner, matching in memory:            {match_s:6.1f} s, {size / match_s:>8,.0f} texts/s"
                f" (+ index built in {build_s:.1f} s), +{mem.delta_mib:,.0f} MiB RSS"
            )
            results.append((size, end_to_end))
    finally:
        worker.stop()
    if len(results) > 1:
        (s0, t0_), (s1, t1_) = results[0], results[-1]
        print(f"scaling, end to end: {s1 / s0:.0f}x the texts took {t1_ / t0_:.1f}x the time")
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    try:
        main()
    finally:
        from django.db import connections

        connections.close_all()
        shutil.rmtree(SCRATCH, ignore_errors=True)
        if BACKEND == "postgresql":
            pg_scratch(create=False)
