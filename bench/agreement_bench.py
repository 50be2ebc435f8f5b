"""Agreement report end to end: the page asks for it, a Celery worker computes it from PostgreSQL.

    python bench/agreement_bench.py                         # 100k and 1M annotations × 3 criteria, 3 runs each
    python bench/agreement_bench.py --sizes 100000 --repeat 1

Needs DATABASE_URL (PostgreSQL) and REDIS_URL, as the app runs in production. The projects live in
a scratch database named after DATABASE_URL's plus "_agreement_bench", built once with COPY and
kept for the next run (``--fresh`` rebuilds, ``--drop`` removes it). Each item gets ``--overlap``
rubric reviews from a pool of ``--reviewers`` (so not every reviewer sees every item), scored on
``--criteria`` criteria (ordinal 1-5, interval 0-10, binary), dated over 90 days; one reviewer
scores everything at the top and one leans high, so the bias checks have something to find.

A worker is started as docker-compose starts it (``celery -A config worker -Q default -l info
--concurrency 2``). Each run is what a user waits for: an admin's POST to the report page's
"recompute" (view → ``agreement_report_request`` → task queued on commit) until the result is
stored (the report row seen done, looked at every 50 ms), while the page polls its progress
fragment every second as the browser does. Printed per run: those seconds, the peak RSS of the
worker process that computed it (its VmHWM, reset before the run), the worker's own split (read /
arrange / compute, from its log), the request's share, the CPU seconds of the worker process, of
the PostgreSQL processes serving the worker (its connections and their parallel workers) and of the
request (this process's thread, its backend and that backend's parallel workers), and their sum,
which is steadier than wall time on a machine shared with other work, and how many distinct
progress values the page could have shown. Then the best and spread per size, and the memory and
time ratios between sizes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _worker import Worker  # noqa: E402

if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
    raise SystemExit("Set DATABASE_URL to a PostgreSQL database (and REDIS_URL): the worker reads PostgreSQL.")
if not os.environ.get("REDIS_URL"):
    raise SystemExit("Set REDIS_URL: the report goes to a Celery worker through Redis, as in production.")
SCRATCH = (urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/") or "goldset") + "_agreement_bench"
os.environ["GOLDSET_DB_NAME"] = SCRATCH
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("SECRET_KEY", "bench")

CRITERIA = [
    {"key": "helpful", "name": "Helpfulness", "scale": "ordinal", "values": list(range(1, 6))},
    {"key": "correct", "name": "Correctness", "scale": "interval", "values": list(range(11))},
    {"key": "safe", "name": "Safe", "scale": "binary", "values": ["yes", "no"]},
]
SPLIT = re.compile(
    r"agreement report (\S+): (\d+) annotations; read ([\d.]+) s, arrange ([\d.]+) s, compute ([\d.]+) s"
)


def scratch_database(*, fresh: bool, drop: bool = False) -> None:
    """The scratch database, made, owned and migrated by the owner role as production does."""
    import psycopg
    from _roles import owner_url

    with psycopg.connect(owner_url(os.environ["DATABASE_URL"]), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [SCRATCH]).fetchone()
        if exists and (fresh or drop):
            conn.execute(f'DROP DATABASE "{SCRATCH}" WITH (FORCE)')
            exists = None
        if drop:
            return
        if not exists:
            conn.execute(f'CREATE DATABASE "{SCRATCH}"')
    env = {**os.environ, "REDIS_URL": ""}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0", "--database", "owner"], cwd=ROOT, env=env, check=True
    )


def build(size: int, *, reviewers: int, overlap: int, n_criteria: int, seed: int = 0):
    """The project of ``size`` annotations, made with COPY unless it is already there."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotate.models import Annotation, Item, ItemResult, Project, RubricVersion
    from annotate.services import rubrics
    from annotate.services.projects import project_add_members, project_create, roles_ensure, user_grant_role

    slug = f"bench-{size}-c{n_criteria}-r{reviewers}-k{overlap}"
    project = Project.objects.filter(slug=slug).first()
    if project and Annotation.objects.filter(item__project=project).count() == size:
        return project
    if project:
        project.delete()
    started = time.perf_counter()
    users = get_user_model()
    roles_ensure()
    admin = users.objects.filter(username="bench-admin").first()
    if admin is None:
        admin = users.objects.create_user(username="bench-admin", password="bench")
        user_grant_role(user=admin, role="admin")
    pool = []
    for r in range(reviewers):
        user = users.objects.filter(username=f"reviewer{r}").first() or users.objects.create_user(
            username=f"reviewer{r}"
        )
        pool.append(user)
    criteria = [
        {
            "key": c["key"],
            "name": c["name"],
            "scale": c["scale"],
            "levels": [{"value": v, "label": str(v), "description": f"{c['name']} {v}"} for v in c["values"]],
        }
        for c in CRITERIA[:n_criteria]
    ]
    with transaction.atomic():
        project = project_create(name=slug, slug=slug, task_kinds=["rubric"], created_by=admin)
        project_add_members(project=project, users=[admin, *pool])
        rubric = rubrics.rubric_create(project=project, name="Quality")
        version = rubrics.rubric_version_create(rubric=rubric, criteria=criteria, created_by=admin)
        RubricVersion.objects.filter(pk=version.pk).update(
            status=RubricVersion.Status.ACTIVE, activated_at=dt.datetime.now(dt.UTC)
        )

    items = size // overlap
    rng = np.random.default_rng(seed)
    # Each item gets `overlap` distinct reviewers from the pool.
    raters = np.argsort(rng.random((items, reviewers)), axis=1)[:, :overlap].ravel()
    units = np.repeat(np.arange(items), overlap)
    days = np.repeat(rng.integers(0, 90, size=items), overlap)
    minutes = rng.integers(0, 24 * 60, size=len(units))
    codes = []
    for c in CRITERIA[:n_criteria]:
        k = len(c["values"])
        truth = np.repeat(rng.integers(0, k, size=items), overlap)
        noise = rng.integers(-1, 2, size=len(units)) * (rng.random(len(units)) < 0.3)
        code = np.clip(truth + noise, 0, k - 1)
        code[raters == 0] = k - 1 if c["scale"] != "binary" else 0  # reviewer0 gives the top level
        code[raters == 1] = np.minimum(code[raters == 1] + 1, k - 1)  # reviewer1 leans high
        codes.append(code)
    first_day = dt.date(2025, 1, 6)
    day_text = [str(first_day + dt.timedelta(days=d)) for d in range(90)]
    minute_text = [f"{m // 60:02d}:{m % 60:02d}:00+00" for m in range(24 * 60)]
    user_ids = [u.pk for u in pool]
    value_json = [[f'"{v}"' if isinstance(v, str) else str(v) for v in c["values"]] for c in CRITERIA[:n_criteria]]
    keys = [c["key"] for c in CRITERIA[:n_criteria]]
    item_cols = (
        "project_id, kind, prompt, responses, metadata, provenance, content_hash, split, is_check, is_calibration,"
        " created_at, review_count"
    )
    ann_cols = (
        "item_id, reviewer_id, kind, payload, revision, rubric_version_id, display_order, duration_ms, created_at,"
        " updated_at"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        raw = cursor.connection
        with raw.cursor().copy(f"COPY {Item._meta.db_table} ({item_cols}) FROM STDIN") as copy:
            for start in range(0, items, 50_000):
                copy.write(
                    "".join(
                        f"{project.pk}\trubric\tPrompt {i} of {slug}\t"
                        '[{"text": "A response", "model": "m"}]\t{}\thuman\t'
                        f"{slug}-{i:09d}\ttrain\tf\tf\t2025-01-06 00:00:00+00\t{overlap}\n"
                        for i in range(start, min(items, start + 50_000))
                    )
                )
        cursor.execute(f"SELECT id FROM {Item._meta.db_table} WHERE project_id = %s ORDER BY id", [project.pk])
        item_ids = [row[0] for row in cursor.fetchall()]
        with raw.cursor().copy(f"COPY {Annotation._meta.db_table} ({ann_cols}) FROM STDIN") as copy:
            for start in range(0, len(units), 50_000):
                lines = []
                for i in range(start, min(len(units), start + 50_000)):
                    when = f"{day_text[days[i]]} {minute_text[minutes[i]]}"
                    scores = ", ".join(f'"{k}": {value_json[j][codes[j][i]]}' for j, k in enumerate(keys))
                    lines.append(
                        f"{item_ids[units[i]]}\t{user_ids[raters[i]]}\trubric\t"
                        f'{{"response_index": 0, "scores": {{{scores}}}}}\t1\t{version.pk}\t[0]\t9000\t{when}\t{when}\n'
                    )
                copy.write("".join(lines))
        with raw.cursor().copy(
            f"COPY {ItemResult._meta.db_table} (item_id, kind, status, reviewer_ids, updated_at) FROM STDIN"
        ) as copy:
            copy.write("".join(f"{i}\trubric\tconsensus\t[]\t2025-04-06 00:00:00+00\n" for i in item_ids))
    analyze()
    print(f"built {slug}: {items:,} items, {len(units):,} annotations in {time.perf_counter() - started:.0f} s")
    return project


def analyze() -> None:
    """Table statistics and visibility maps, as autovacuum keeps them in production after a bulk load:
    made by the owner (the app role may not), so the report's queries are planned and run as there."""
    import psycopg
    from _roles import owner_url

    from annotate.models import Annotation, Item, ItemResult

    with psycopg.connect(owner_url(os.environ["DATABASE_URL"], SCRATCH), autocommit=True) as conn:
        for model in (Item, Annotation, ItemResult):
            conn.execute(f"VACUUM (ANALYZE) {model._meta.db_table}")


def proc_cpu(pid: int) -> tuple[float, int] | None:
    """CPU seconds (user + system) of a process and its start time (clock ticks since boot), from /proc;
    None once it has ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS, int(fields[19])


def backend_cpu(pid: int) -> float | None:
    got = proc_cpu(pid)
    return None if got is None else got[0]


TICKS = os.sysconf("SC_CLK_TCK")


def boot_ticks_now() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * TICKS)


class PostgresCPU(threading.Thread):
    """CPU seconds of the scratch database's PostgreSQL processes while a run lasts, sampled every 10 ms
    from a thread of its own: the request's (its backend's parallel workers; the backend itself is
    measured exactly) and the rest (the worker's connections, their parallel workers). A process that
    started during the run counts from zero; one that ends counts up to its last sample."""

    def __init__(self, own_pid: int):
        super().__init__(daemon=True)
        import psycopg

        self.own_pid = own_pid
        self.conn = psycopg.connect(os.environ["DATABASE_URL"].rsplit("/", 1)[0] + f"/{SCRATCH}", autocommit=True)
        self.sampler_pid = self.conn.info.backend_pid
        self.started = boot_ticks_now()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.request_pids: set[int] = set()
        self.done = threading.Event()

    def sample(self) -> None:
        rows = self.conn.execute(
            "SELECT pid, leader_pid FROM pg_stat_activity WHERE datname = current_database()"
        ).fetchall()
        for pid, leader in rows:
            if pid in (self.own_pid, self.sampler_pid):
                continue
            got = proc_cpu(pid)
            if got is None:
                continue
            used, started = got
            self.first.setdefault(pid, 0.0 if started >= self.started else used)
            self.last[pid] = used
            if leader == self.own_pid:
                self.request_pids.add(pid)

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            time.sleep(0.01)
        self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.conn.close()

    def seconds(self, request: bool) -> float:
        return sum(self.last[p] - self.first[p] for p in self.last if (p in self.request_pids) == request)


def run_once(client, project, worker: Worker) -> dict:
    from django.urls import reverse

    from annotate.models import AgreementReport

    AgreementReport.objects.filter(project=project).delete()
    worker.reset_peaks()
    idle = {pid: worker.status(pid, "VmRSS") for pid in worker.children()}
    log_at = len(worker.log.read_text())
    url = reverse("annotate:report-refresh", kwargs={"slug": project.slug})
    import psutil
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (own_pid,) = cursor.fetchone()
    worker_cpu = {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in worker.children()}
    postgres = PostgresCPU(own_pid)
    postgres.start()
    own_before = backend_cpu(own_pid)
    start, request_cpu = time.perf_counter(), time.thread_time()
    response = client.post(url)
    requested, request_cpu = time.perf_counter() - start, time.thread_time() - request_cpu
    request_cpu += backend_cpu(own_pid) - own_before  # the request's queries, in its own backend
    if response.status_code != 302:
        raise SystemExit(f"The recompute request failed: {response.status_code} {response.content[:300]!r}")
    seen = []
    # What the page shows while it waits: the row's stage text, or its message on models that keep
    # the stage there.
    shown = "stage" if any(f.name == "stage" for f in AgreementReport._meta.get_fields()) else "message"
    running = (AgreementReport.Status.QUEUED, AgreementReport.Status.RUNNING)
    report_id = AgreementReport.objects.filter(project=project).values_list("id", flat=True).first()
    page = reverse("annotate:report", kwargs={"slug": project.slug}) + f"?report={report_id}"
    next_poll = time.perf_counter() + 1.0
    while True:
        if time.perf_counter() >= next_poll:  # the page's own poll, every second, as the browser sends it
            client.get(page, HTTP_HX_REQUEST="true")
            next_poll += 1.0
        row = AgreementReport.objects.filter(project=project).values("status", "progress", shown, "message").first()
        if row and row["status"] not in running:
            break
        if row and (not seen or seen[-1] != (row["progress"], row[shown])):
            seen.append((row["progress"], row[shown]))
        if time.perf_counter() - start > 600:
            raise SystemExit("No result after 10 minutes.")
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    postgres.stop()
    if row["status"] == AgreementReport.Status.FAILED:
        raise SystemExit(f"The report failed: {row['message']}")
    time.sleep(0.3)  # the log line is written just before the result
    match = None
    for _ in range(20):
        match = SPLIT.search(worker.log.read_text()[log_at:])
        if match:
            break
        time.sleep(0.1)
    peaks = {pid: worker.status(pid, "VmHWM") for pid in worker.children()}
    computing = max(peaks, key=lambda pid: peaks[pid] - idle.get(pid, 0.0))
    cpu = {pid: sum(psutil.Process(pid).cpu_times()[:2]) - worker_cpu.get(pid, 0.0) for pid in worker.children()}
    return {
        "seconds": seconds,
        "request": requested,
        "cpu_request": request_cpu + postgres.seconds(request=True),
        "cpu_worker": max(cpu.values()),
        "cpu_postgres": postgres.seconds(request=False),
        "peak": peaks[computing],
        "idle": idle.get(computing, 0.0),
        "read": float(match.group(3)) if match else float("nan"),
        "arrange": float(match.group(4)) if match else float("nan"),
        "compute": float(match.group(5)) if match else float("nan"),
        "reading_updates": sum(1 for _, stage in seen if stage.startswith("Reading annotations (")),
        "updates": len(seen),
    }


def cpu_all(r: dict) -> float:
    """Every CPU second the run took: on an idle machine, no more than this many seconds of wall time
    even with nothing run in parallel (the data is in memory, so nothing waits on the disk)."""
    return r["cpu_worker"] + r["cpu_postgres"] + r["cpu_request"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="annotations per project, comma-separated")
    parser.add_argument("--reviewers", type=int, default=8, help="size of the reviewer pool")
    parser.add_argument("--overlap", type=int, default=5, help="reviews per item")
    parser.add_argument("--criteria", type=int, default=3, choices=[1, 2, 3])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="rebuild the scratch database")
    parser.add_argument("--drop", action="store_true", help="drop the scratch database and stop")
    args = parser.parse_args()
    scratch_database(fresh=args.fresh, drop=args.drop)
    if args.drop:
        print(f"dropped {SCRATCH}")
        return

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    sizes = [int(s) for s in args.sizes.split(",")]
    projects = {
        size: build(size, reviewers=args.reviewers, overlap=args.overlap, n_criteria=args.criteria) for size in sizes
    }
    analyze()
    client = Client()
    client.force_login(get_user_model().objects.get(username="bench-admin"))
    with tempfile.TemporaryDirectory(prefix="agreement-bench-") as tmp:
        worker = Worker(Path(tmp) / "worker.log", name="agreement-bench")
        try:
            print(f"load average before the runs: {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
            print(
                f"{'':>15} {'end to end':>10}  {'--- worker: wall s ---':^28}  {'--- CPU s ---':^20}"
                f"  {'--- worker RSS ---':^19}\n"
                f"{'annotations':>11} {'run':>3} {'seconds':>10} {'request':>8} {'read':>6} {'arrange':>7}"
                f" {'compute':>7}  {'worker':>6} {'PG':>5} {'request':>7} {'in all':>6}  {'peak':>8} {'idle':>8}"
                "  progress seen"
            )
            results: dict[int, list[dict]] = {}
            for size in sizes:
                for run in range(1, args.repeat + 1):
                    r = run_once(client, projects[size], worker)
                    results.setdefault(size, []).append(r)
                    print(
                        f"{size:>11,} {run:>3} {r['seconds']:>10.2f} {r['request']:>8.2f} {r['read']:>6.2f}"
                        f" {r['arrange']:>7.2f} {r['compute']:>7.2f}  {r['cpu_worker']:>6.2f} {r['cpu_postgres']:>5.2f}"
                        f" {r['cpu_request']:>7.2f} {cpu_all(r):>6.2f}  {r['peak']:>4.0f} MiB {r['idle']:>4.0f} MiB"
                        f"  {r['reading_updates']} while reading, {r['updates']} in all",
                        flush=True,
                    )
        finally:
            worker.stop()
    print()
    for size, runs in results.items():
        secs = [r["seconds"] for r in runs]
        peaks = [r["peak"] for r in runs]
        best = min(runs, key=lambda r: r["seconds"])
        spread = (
            f", spread {min(secs):.2f}-{max(secs):.2f} s, median {statistics.median(secs):.2f} s"
            if len(runs) > 1
            else ""
        )
        print(
            f"{size:>11,} annotations × {args.criteria} criteria: best {best['seconds']:.2f} s end to end"
            f" (request {best['request']:.2f}, read {best['read']:.2f}, arrange {best['arrange']:.2f},"
            f" compute {best['compute']:.2f}){spread}; worker peak RSS {max(peaks):.0f} MiB;"
            f" CPU s per run (median): worker {statistics.median(r['cpu_worker'] for r in runs):.2f},"
            f" PostgreSQL {statistics.median(r['cpu_postgres'] for r in runs):.2f},"
            f" request {statistics.median(r['cpu_request'] for r in runs):.2f},"
            f" in all {statistics.median(cpu_all(r) for r in runs):.2f}"
        )
    if len(sizes) > 1:
        small, big = min(sizes), max(sizes)
        a = max(r["peak"] for r in results[small])
        b = max(r["peak"] for r in results[big])
        above_a = a - min(r["idle"] for r in results[small])
        above_b = b - min(r["idle"] for r in results[big])
        print(
            f"memory, {big // small}x the annotations: peak RSS ×{b / a:.2f} ({a:.0f} → {b:.0f} MiB);"
            f" above the idle worker ×{above_b / max(above_a, 1):.2f} ({above_a:.0f} → {above_b:.0f} MiB)"
        )
        ta = min(r["seconds"] for r in results[small])
        tb = min(r["seconds"] for r in results[big])
        print(f"time, {big // small}x the annotations: ×{tb / ta:.2f} ({ta:.2f} → {tb:.2f} s)")
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
