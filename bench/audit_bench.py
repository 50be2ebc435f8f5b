"""Snapshot audit end to end: an admin asks for the audit, a Celery worker reads the snapshot and audits it.

    python bench/audit_bench.py                      # 100k and 1M examples
    python bench/audit_bench.py --sizes 100000

Needs DATABASE_URL (PostgreSQL) and REDIS_URL, as the app runs in production. The snapshots live in a
scratch database named after DATABASE_URL's plus "_audit_bench", made and migrated by the owner role
(``manage.py ensure_db_roles`` creates it) and dropped at the end. Each snapshot is written with COPY:
support answers of ~60 words from three sources (one adds "Thanks!" to 40% of its answers), 30%
preference pairs (a third of them differing only in a sign-off), refund windows stated as 30 days
and sometimes 14, and a share of templated answers, so every detector has work to do.

A worker runs as docker-compose runs it (``celery -A config worker -Q default -l info --concurrency 2``).
End to end is what an admin waits for: the snapshot page's "Audit again" POST (view → audit queued on
commit) until the audit row has finished, with the peak RSS of the worker process that ran it (its
VmHWM, reset before). Beside it, labelled inner figures from the worker's log: reading (waiting for the
pages of records), detecting (feeding them to the detectors), and the findings that need text afterwards;
and the CPU time per example of the worker and of the second process it starts for the text detectors
(its peak RSS is sampled while it runs), which says what an idle machine would take when this one is busy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
    raise SystemExit("Set DATABASE_URL to a PostgreSQL database (and REDIS_URL): the worker reads PostgreSQL.")
if not os.environ.get("REDIS_URL"):
    raise SystemExit("Set REDIS_URL: the audit goes to a Celery worker through Redis, as in production.")
SCRATCH = (urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/") or "goldset") + "_audit_bench"
os.environ["GOLDSET_DB_NAME"] = SCRATCH
os.environ["GOLDSET_VAR_DIR"] = tempfile.mkdtemp(prefix="goldset-audit-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")

from _roles import owner_sql  # noqa: E402
from _worker import Worker  # noqa: E402

SPLIT = re.compile(
    r"audit (\d+): (\d+) records; read and detect ([\d.]+) s "
    r"\(read ([\d.]+) s, detect ([\d.]+) s\), findings ([\d.]+) s"
)
WORDS = [
    "order",
    "refund",
    "delivery",
    "account",
    "password",
    "invoice",
    "parcel",
    "warehouse",
    "return",
    "exchange",
    "label",
    "tracking",
    "courier",
    "payment",
    "card",
    "statement",
    "subscription",
    "plan",
    "settings",
    "profile",
    "address",
    "coupon",
    "discount",
    "warranty",
    "size",
    "colour",
    "product",
    "shipping",
    "express",
    "standard",
    "business",
    "days",
    "email",
    "link",
    "code",
    "support",
    "team",
    "today",
    "tomorrow",
    "week",
]
TEMPLATE = "Your order {n} left our warehouse today; tracking appears within 24 hours and delivery takes 3-5 days."


def answer(rng: random.Random, n: int) -> str:
    sentences = []
    for _ in range(rng.randint(3, 6)):
        words = rng.choices(WORDS, k=rng.randint(8, 14))
        sentences.append(" ".join(words).capitalize() + ".")
    if n % 9 == 0:
        window = "14" if n % 45 == 0 else "30"
        sentences.insert(0, f"You can get a full refund within {window} days of delivery.")
    if n % 23 == 0:
        return TEMPLATE.format(n=f"NW-{n:07d}")
    return " ".join(sentences)


def build(size: int):
    """A snapshot of ``size`` examples, written with COPY."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from annotate.models import Project
    from training.models import SnapshotRecord, TrainingSnapshot

    user, _ = get_user_model().objects.get_or_create(username="bench-admin", defaults={"is_superuser": True})
    project, _ = Project.objects.get_or_create(slug="bench", defaults={"name": "Bench", "task_kinds": ["gold"]})
    dpo = 3 * (size // 10) + min(size % 10, 3)  # examples n with n % 10 < 3 are pairs (a snapshot is written once)
    snapshot = TrainingSnapshot.objects.create(
        name=f"bench {size:,}",
        sha256=f"{size:064x}",
        sources=[{"project_id": project.pk, "project_slug": project.slug}],
        sft_count=size - dpo,
        dpo_count=dpo,
        created_by=user,
    )
    rng = random.Random(size)
    columns = [
        "snapshot_id",
        "position",
        "kind",
        "messages",
        "completion",
        "chosen",
        "rejected",
        "source_item_id",
        "content_hash",
        "lineage",
    ]
    started = time.perf_counter()
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {SnapshotRecord._meta.db_table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for n in range(size):
            source = ("swift", "careful", "policy")[n % 3]
            text = answer(rng, n)
            if source == "swift" and rng.random() < 0.4:
                text += " Thanks!"
            prompt = json.dumps([{"role": "user", "content": f"Customer {n} asks about their {rng.choice(WORDS)}."}])
            lineage = {
                "provenance": ("human", "distilled", "production_log")[n % 3],
                "source": source,
                "decided_by": "consensus",
                "agreement": 1.0,
                "left_picks": 1,
                "picks": 2,
            }
            if n % 10 < 3:
                rejected = text + " Thanks!" if n % 10 == 0 else answer(rng, n + 1)
                chosen, completion, kind = text, "", "dpo"
                lineage["rejected_source"] = "policy"
            else:
                chosen, rejected, completion, kind = "", "", text, "sft"
            copy.write_row(
                [snapshot.pk, n, kind, prompt, completion, chosen, rejected, n, f"{n:064x}", json.dumps(lineage)]
            )
    took = time.perf_counter() - started
    print(f"built a snapshot of {size:,} examples ({size - dpo:,} SFT, {dpo:,} DPO) in {took:.0f} s")
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    app_url = os.environ["DATABASE_URL"]
    owner_sql(app_url, f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)', f'CREATE DATABASE "{SCRATCH}"')
    try:
        run(args)
    finally:
        from django.db import connections

        connections.close_all()
        owner_sql(app_url, f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')


def run(args) -> None:
    import django

    django.setup()
    from _roles import migrate_alias
    from django.core.management import call_command
    from django.test import Client
    from django.urls import reverse

    from annotate.services.projects import roles_ensure, user_grant_role
    from training.models import SnapshotAudit

    call_command("migrate", database=migrate_alias(), verbosity=0)
    roles_ensure()
    log = Path(os.environ["GOLDSET_VAR_DIR"]) / "worker.log"
    worker = Worker(log, name="audit-bench", env={"GOLDSET_AUDIT_INLINE_MAX": "0"})
    results = []
    print(f"load average {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            snapshot = build(size)
            from django.contrib.auth import get_user_model

            admin = get_user_model().objects.get(username="bench-admin")
            user_grant_role(user=admin, role="admin")
            client = Client()
            client.force_login(admin)
            idle = worker.idle_mib()
            worker.reset_peaks()
            cpu = worker.cpu_seconds()
            start = time.perf_counter()
            response = client.post(reverse("training:snapshot-audit", args=[snapshot.pk]))
            assert response.status_code == 302, response.status_code
            audit = SnapshotAudit.objects.filter(snapshot=snapshot).latest()
            helper = 0.0
            while True:
                helper = max(helper, worker.helper_peak_mib())
                audit.refresh_from_db()
                if audit.is_finished:
                    break
                if time.perf_counter() - start > 1800:
                    raise SystemExit(f"No audit after 30 minutes:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
            seconds = time.perf_counter() - start
            if audit.status != "succeeded":
                raise SystemExit(f"The audit failed: {audit.message}\n{log.read_text()[-3000:]}")
            peak = worker.peak_mib()
            (own, helpers), (own0, helpers0) = worker.cpu_seconds(), cpu
            own, helpers = own - own0, helpers - helpers0
            cpu = own + helpers
            split = {m.group(1): m for m in SPLIT.finditer(log.read_text())}[str(audit.pk)]
            types = sorted({f["type"] for f in audit.findings})
            print(
                f"{size:>9,} examples  end to end (POST → worker → stored) {seconds:6.1f} s "
                f"({size / seconds:,.0f} examples/s); worker peak RSS {peak:,.0f} MiB (idle {idle:,.0f} MiB), "
                f"its second process (text detectors) {helper:,.0f} MiB; "
                f"inner: read {float(split.group(4)):.1f} s, detect {float(split.group(5)):.1f} s, "
                f"findings {float(split.group(6)):.1f} s; "
                f"CPU {cpu:.1f} s ({cpu / size * 1e6:.0f} µs/example: worker {own / size * 1e6:.0f}, "
                f"second process {helpers / size * 1e6:.0f})"
            )
            print(f"           {len(audit.findings)} findings: {', '.join(types)}")
            results.append((size, seconds, peak, cpu, helper))
    finally:
        worker.stop()
    if len(results) > 1:
        (s0, t0, m0, c0, h0), (s1, t1, m1, c1, h1) = results[0], results[-1]
        print(
            f"{s1 // s0}x the examples: {t1 / t0:.1f}x the time, {c1 / c0:.1f}x the CPU, "
            f"worker peak RSS x{m1 / m0:.2f} ({m0:,.0f} → {m1:,.0f} MiB), "
            f"second process x{h1 / h0 if h0 else float('nan'):.2f} ({h0:,.0f} → {h1:,.0f} MiB)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
