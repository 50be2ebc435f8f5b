"""Review-queue load test: N reviewers as separate HTTP clients against gunicorn, on PostgreSQL and SQLite.

For each database it creates a scratch database (PostgreSQL: a fresh ``goldset_bench_queue``, dropped
at the end; SQLite: a file in a temp dir), migrates it, seeds one project with ``--items`` items
(overlap k=2) and ``max(--reviewers)`` reviewers, and starts gunicorn the way docker-compose does
(``-w 4 --threads 4``). Every simulated reviewer logs in through the login form with its own
session, then loops GET next -> POST submit, in two modes:

- closed: no pause between items (saturation throughput);
- paced:  a 1 s pause after each submission (a realistic load); reviewers start at random
          offsets within the first second instead of in lockstep.

It prints p50/p95/p99 latency of next and submit, annotations/s, the CPU per annotation of the web
server, of PostgreSQL (its server processes, when it runs on this machine) and of the load generator,
and at the end checks the
k-invariant in the database (no item above k active+submitted leases, counters equal to the rows,
every acknowledged submission stored exactly once).

    python bench/queue_bench.py                      # both databases, 100k items, 1/8/32 reviewers
    python bench/queue_bench.py --db sqlite --items 5000 --seconds 5 --reviewers 1,8
"""

import argparse
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
SLUG = "bench"
PASSWORD = "bench-password-1"
LEASE_RE = re.compile(r'id="queue-current".*?data-lease="(\d+)"', re.S)
PREFETCH_RE = re.compile(r'id="queue-prefetch".*?data-lease="(\d+)"', re.S)
CSRF_INPUT_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


# --- Child-process helpers (run with the scratch database's environment) -------------------------


def _django():
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def child_seed(items: int, reviewers: int) -> None:
    _django()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from annotate.models import Item
    from annotate.services.projects import project_add_members, project_create, roles_ensure, user_grant_role

    roles_ensure()
    user_model = get_user_model()
    hashed = make_password(PASSWORD)
    users = user_model.objects.bulk_create(
        [user_model(username=f"reviewer{i:02d}", password=hashed) for i in range(reviewers)]
    )
    for user in users:
        user_grant_role(user=user, role="reviewer")
    project = project_create(name="Bench", slug=SLUG, task_kinds=["gold"], overlap_k=2)
    project_add_members(project=project, users=users)
    batch = []
    for n in range(items):
        batch.append(
            Item(
                project=project,
                kind="gold",
                prompt=f"Bench prompt {n}: how do I reset my password on device {n % 97}?",
                responses=[
                    {"text": f"Open settings ({n})", "model": "a"},
                    {"text": f"Ask support ({n})", "model": "b"},
                ],
                content_hash=f"bench-{n:08d}",
                split="train",
            )
        )
        if len(batch) == 5000:
            Item.objects.bulk_create(batch)
            batch = []
    if batch:
        Item.objects.bulk_create(batch)
    print(json.dumps({"items": Item.objects.filter(project=project).count(), "reviewers": len(users)}))


def child_check(acknowledged: int) -> None:
    _django()
    from django.db.models import Count, Q

    from annotate.models import Annotation, AnnotationRevision, Item, Lease, Project

    project = Project.objects.get(slug=SLUG)
    k = project.overlap_k
    live = Q(leases__status__in=["active", "submitted"])
    per_item = (
        Item.objects.filter(project=project)
        .annotate(
            live=Count("leases", filter=live, distinct=True),
            submitted=Count("leases", filter=Q(leases__status="submitted"), distinct=True),
        )
        .filter(Q(live__gt=0) | Q(review_count__gt=0))
    )
    over_k = sum(1 for i in per_item if i.live > k or i.submitted > k)
    counter_mismatch = sum(1 for i in per_item if i.live != i.review_count)
    annotations_over_k = (
        Annotation.objects.filter(item__project=project)
        .values("item_id")
        .annotate(n=Count("id"))
        .filter(n__gt=k)
        .count()
    )
    duplicates = (
        Lease.objects.filter(project=project)
        .values("item_id", "reviewer_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    stored = Annotation.objects.filter(item__project=project).count()
    print(
        json.dumps(
            {
                "items_over_k": over_k,
                "annotations_over_k": annotations_over_k,
                "counter_mismatches": counter_mismatch,
                "duplicate_leases": duplicates,
                "acknowledged": acknowledged,
                "stored": stored,
                "revisions": AnnotationRevision.objects.filter(annotation__item__project=project).count(),
                "submitted_leases": Lease.objects.filter(project=project, status="submitted").count(),
            }
        )
    )


# --- HTTP clients ---------------------------------------------------------------------------------


class Reviewer:
    """One browser-like client: its own connection, cookies and CSRF token."""

    def __init__(self, port: int, username: str):
        self.port = port
        self.username = username
        self.cookies: dict[str, str] = {}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                payload = response.read().decode()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response, payload

    def login(self) -> None:
        _, page = self.request("GET", "/login/")
        token = CSRF_INPUT_RE.search(page).group(1)
        response, _ = self.request(
            "POST",
            "/login/",
            {"csrfmiddlewaretoken": token, "username": self.username, "password": PASSWORD, "next": ""},
            {"Referer": f"http://127.0.0.1:{self.port}/login/"},
        )
        if response.status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"login of {self.username} failed with HTTP {response.status}")

    def hx_headers(self) -> dict:
        return {"HX-Request": "true", "X-CSRFToken": self.cookies.get("csrftoken", "")}


@dataclass
class Stats:
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    acknowledged: int = 0
    errors: list[str] = field(default_factory=list)
    exhausted: int = 0


def reviewer_loop(reviewer: Reviewer, stop_at: float, pause: float, stats: Stats, lock: threading.Lock) -> None:
    next_path = f"/projects/{SLUG}/queue/next/"
    local = Stats()
    if pause:
        # Real reviewers do not start in lockstep: spread the first request over one pause.
        time.sleep(random.Random(reviewer.username).uniform(0, pause))
    while time.monotonic() < stop_at:
        try:
            t0 = time.perf_counter()
            response, html = reviewer.request("GET", next_path, headers=reviewer.hx_headers())
            local.next_ms.append((time.perf_counter() - t0) * 1000)
            match = LEASE_RE.search(html) if response.status == 200 else None
            if match is None:
                if response.status != 200:
                    local.errors.append(f"next: HTTP {response.status}")
                local.exhausted += 1
                time.sleep(0.5)
                continue
            lease_id = match.group(1)
            prefetch = PREFETCH_RE.search(html)
            body = {
                "action": "write",
                "answer": f"{reviewer.username} answers lease {lease_id}",
                "duration_ms": "1500",
                "have": prefetch.group(1) if prefetch else "",
            }
            t0 = time.perf_counter()
            response, html = reviewer.request(
                "POST", f"/projects/{SLUG}/queue/leases/{lease_id}/submit/", body, reviewer.hx_headers()
            )
            local.submit_ms.append((time.perf_counter() - t0) * 1000)
            if response.status == 200 and "goldset:submitted" in (response.getheader("HX-Trigger") or ""):
                local.acknowledged += 1
            else:
                local.errors.append(f"submit: HTTP {response.status} {html[:120]!r}")
        except Exception as exc:  # noqa: BLE001 - a load test reports failures, it does not stop on them
            local.errors.append(f"{type(exc).__name__}: {exc}")
        if pause:
            time.sleep(pause)
    with lock:
        stats.next_ms += local.next_ms
        stats.submit_ms += local.submit_ms
        stats.acknowledged += local.acknowledged
        stats.errors += local.errors
        stats.exhausted += local.exhausted


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- Orchestration ----------------------------------------------------------------------------------


def cpu_seconds(root_pid: int) -> float:
    """CPU time (user+system) of a process and its descendants so far, from /proc (0.0 where there is none).

    Children that have exited count too (the root's cutime/cstime), so a PostgreSQL backend or a
    gunicorn worker that ends during a run does not take its CPU time out of the tally."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(entry.parent.name)] = (
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]),
        )
    wanted, total, changed = {root_pid}, 0, True
    while changed:
        changed = False
        for pid, (ppid, _, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    for pid in wanted:
        total += stats.get(pid, (0, 0, 0))[1]
    total += stats.get(root_pid, (0, 0, 0))[2]
    return total / tick


def postgres_server_pid(url: str) -> int | None:
    """The PostgreSQL postmaster's pid when the server runs on this machine (its backends are its children)."""
    import psycopg

    with psycopg.connect(url) as conn:  # read while the backend lives: it exits with the connection
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        stat = Path(f"/proc/{backend}/stat")
        try:
            return int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(env: dict, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pg_admin(url: str, sql: str) -> None:
    """CREATE/DROP DATABASE as the owner role, which owns and migrates the database (as in production)."""
    from _roles import owner_sql

    owner_sql(url, sql)


def wait_for_server(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("gunicorn did not come up")


def bench_database(name: str, env: dict, args, rows: list, checks: dict) -> None:
    max_reviewers = max(args.reviewers)
    # Static files are served from the finders; an existing STATIC_ROOT keeps whitenoise quiet.
    (Path(env["GOLDSET_VAR_DIR"]) / "staticfiles").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    database = "owner" if "DATABASE_URL" in env else "default"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--database", database],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seeded = run_child(env, "--child-seed", str(args.items), str(max_reviewers))
    print(
        f"[{name}] migrated and seeded {seeded['items']} items, {seeded['reviewers']} reviewers "
        f"in {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    db_pid = postgres_server_pid(env["DATABASE_URL"]) if "DATABASE_URL" in env else None
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(args.workers),
            "--threads",
            str(args.threads),
            "--log-level",
            "warning",
            "--timeout",
            "120",
        ],
        env=env,
        cwd=ROOT,
    )
    acknowledged = 0
    try:
        wait_for_server(port, server)
        clients = [Reviewer(port, f"reviewer{i:02d}") for i in range(max_reviewers)]
        logins = [threading.Thread(target=c.login) for c in clients]
        for t in logins:
            t.start()
        for t in logins:
            t.join()
        for n in args.reviewers:
            for mode, pause in (("closed", 0.0), ("paced 1s", 1.0)):
                stats, lock = Stats(), threading.Lock()
                start = time.monotonic()
                stop_at = start + args.seconds
                threads = [
                    threading.Thread(target=reviewer_loop, args=(c, stop_at, pause, stats, lock)) for c in clients[:n]
                ]
                web_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
                db_cpu = cpu_seconds(db_pid) if db_pid else 0.0
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                elapsed = time.monotonic() - start
                web_cpu, client_cpu = cpu_seconds(server.pid) - web_cpu, time.process_time() - client_cpu
                db_cpu = (cpu_seconds(db_pid) - db_cpu) if db_pid else float("nan")
                acknowledged += stats.acknowledged
                rows.append(
                    {
                        "db": name,
                        "reviewers": n,
                        "mode": mode,
                        "annotations": stats.acknowledged,
                        "per_s": stats.acknowledged / elapsed,
                        "next": [percentile(stats.next_ms, p) for p in (50, 95, 99)],
                        "submit": [percentile(stats.submit_ms, p) for p in (50, 95, 99)],
                        "web_cpu_ms": 1000 * web_cpu / max(stats.acknowledged, 1),
                        "client_cpu_ms": 1000 * client_cpu / max(stats.acknowledged, 1),
                        "db_cpu_ms": 1000 * db_cpu / max(stats.acknowledged, 1),
                        "errors": len(stats.errors),
                        "first_error": stats.errors[0] if stats.errors else "",
                    }
                )
                print_row(rows[-1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    checks[name] = run_child(env, "--child-check", str(acknowledged))


HEADER = (
    f"{'db':<10} {'revs':>4} {'mode':<9} {'annots':>7} {'ann/s':>7} "
    f"{'next p50/p95/p99 ms':>22} {'submit p50/p95/p99 ms':>24} {'web CPU ms/ann':>15} {'PG CPU':>7} "
    f"{'client CPU':>10} {'errors':>6}"
)


def print_row(row: dict) -> None:
    def fmt(values):
        return "/".join(f"{v:.0f}" if v == v else "-" for v in values)

    print(
        f"{row['db']:<10} {row['reviewers']:>4} {row['mode']:<9} {row['annotations']:>7} {row['per_s']:>7.1f} "
        f"{fmt(row['next']):>22} {fmt(row['submit']):>24} {row['web_cpu_ms']:>15.1f} "
        f"{row['db_cpu_ms']:>7.1f} {row['client_cpu_ms']:>10.1f} "
        f"{row['errors']:>6}",
        flush=True,
    )
    if row["first_error"]:
        print(f"           first error: {row['first_error'][:200]}", flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-seed":
        child_seed(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--child-check":
        child_check(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--reviewers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=15.0, help="Length of each run.")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (compose uses 4).")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (compose uses 4).")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://goldset:goldset@127.0.0.1:5432/goldset_bench_queue"),
        help="Scratch PostgreSQL database; it is dropped and recreated.",
    )
    args = parser.parse_args()

    base_env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "GOLDSET_DB_NAME", "REDIS_URL"}}
    base_env.update(SECRET_KEY="bench-secret-key", GOLDSET_DEBUG="0", DJANGO_SETTINGS_MODULE="config.settings")
    rows: list = []
    checks: dict = {}
    print(
        f"{args.items} items, overlap k=2, {args.seconds:.0f} s per run, gunicorn -w {args.workers} "
        f"--threads {args.threads}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the start"
    )
    print(HEADER, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="goldset-bench-"))
    try:
        if args.db in ("sqlite", "both"):
            env = {**base_env, "GOLDSET_VAR_DIR": str(tmp / "sqlite")}
            bench_database("sqlite", env, args, rows, checks)
        if args.db in ("postgres", "both"):
            db_name = urlsplit(args.pg_url).path.lstrip("/")
            pg_admin(args.pg_url, f'DROP DATABASE IF EXISTS "{db_name}"')
            pg_admin(args.pg_url, f'CREATE DATABASE "{db_name}"')
            env = {**base_env, "GOLDSET_VAR_DIR": str(tmp / "pg"), "DATABASE_URL": args.pg_url, "CONN_MAX_AGE": "60"}
            try:
                bench_database("postgres", env, args, rows, checks)
            finally:
                pg_admin(args.pg_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("Summary (load average now: {:.1f} {:.1f} {:.1f})".format(*os.getloadavg()))
    print(HEADER)
    for row in rows:
        print_row(row)
    ok = True
    print()
    for name, check in checks.items():
        violations = check["items_over_k"] + check["annotations_over_k"] + check["duplicate_leases"]
        reconciled = check["acknowledged"] == check["stored"] == check["revisions"] == check["submitted_leases"]
        good = violations == 0 and check["counter_mismatches"] == 0 and reconciled
        ok &= good
        print(
            f"[{name}] k-invariant {'OK' if good else 'VIOLATED'}: items over k={check['items_over_k']}, "
            f"annotations over k={check['annotations_over_k']}, duplicate leases={check['duplicate_leases']}, "
            f"counter mismatches={check['counter_mismatches']}; submissions acknowledged={check['acknowledged']}, "
            f"stored={check['stored']}, revisions={check['revisions']}, submitted leases={check['submitted_leases']}"
        )
    saturated = {r["db"]: r["per_s"] for r in rows if r["mode"] == "closed" and r["reviewers"] == max(args.reviewers)}
    paced = {r["db"]: r["next"][1] for r in rows if r["mode"] == "paced 1s" and r["reviewers"] == max(args.reviewers)}
    for name in saturated:
        print(
            f"[{name}] saturation at {max(args.reviewers)} reviewers: {saturated[name]:.1f} annotations/s "
            f"(aim >= 100); next p95 paced at {max(args.reviewers)} reviewers: {paced.get(name, float('nan')):.0f} ms "
            f"(aim <= 50)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
