"""Soak run: 32 reviewers for 10 minutes on PostgreSQL through gunicorn, with imports and agreement reports
running alongside in a real Celery worker.

It makes a scratch database (``goldset_bench_soak``, created, migrated and dropped by the owner role), seeds
one project (overlap k=2) with ``--items`` items, ``--reviewers`` reviewers and an admin, and starts gunicorn
and a Celery worker the way docker-compose does (``gunicorn -w 4 --threads 4``; ``celery worker -Q default
--concurrency 2``). Every reviewer logs in through the login form and loops GET next -> POST submit with
``--pause`` seconds after each item. Meanwhile the admin, through the same pages, uploads an import of
``--import-rows`` rows, waits for the worker to finish it, asks for a fresh agreement report, waits for it, and
starts over, until the end.

Each minute it prints a line: annotations, annotations/s, next and submit p95, errors, imports and reports
finished, web (gunicorn master + workers) and worker (Celery parent + children) RSS, load average. At the end:
zero errors, exact reconciliation (acknowledged = stored = revisions = submitted leases), the overlap cap,
and RSS at the start vs the end.

    python bench/soak_bench.py                 # 32 reviewers, 10 minutes
    python bench/soak_bench.py --minutes 1     # a quick check of the bench itself
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from _roles import owner_sql
from _worker import Worker
from queue_bench import (
    LEASE_RE,
    PASSWORD,
    PREFETCH_RE,
    SLUG,
    Reviewer,
    free_port,
    percentile,
    run_child,
    wait_for_server,
)

ROOT = Path(__file__).resolve().parent.parent
BATCH_RE = re.compile(r"/imports/(\d+)/")


def child_admin() -> None:
    """The admin who uploads and asks for reports (run after queue_bench's seed, in the scratch database)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from annotate.models import Project
    from annotate.services.projects import project_add_members, user_grant_role

    admin = get_user_model().objects.create_user("soakadmin", password=PASSWORD)
    user_grant_role(user=admin, role="admin")
    project_add_members(project=Project.objects.get(slug=SLUG), users=[admin])
    print(json.dumps({"admin": admin.pk}))


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 2**20


class Timeline:
    """Everything the threads report, under one lock, bucketed by minute for the progress lines."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next_ms: list[tuple[float, float]] = []
        self.submit_ms: list[tuple[float, float]] = []
        self.acknowledged = 0
        self.errors: list[tuple[float, str]] = []
        self.imports: list[tuple[float, float, int]] = []  # (finished at, seconds, rows)
        self.reports: list[tuple[float, float]] = []

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append((time.monotonic(), text))


def reviewer_loop(reviewer: Reviewer, stop_at: float, pause: float, tl: Timeline) -> None:
    next_path = f"/projects/{SLUG}/queue/next/"
    time.sleep(pause * (hash(reviewer.username) % 1000) / 1000)
    while time.monotonic() < stop_at:
        try:
            t0 = time.perf_counter()
            response, html = reviewer.request("GET", next_path, headers=reviewer.hx_headers())
            with tl.lock:
                tl.next_ms.append((time.monotonic(), (time.perf_counter() - t0) * 1000))
            match = LEASE_RE.search(html) if response.status == 200 else None
            if match is None:
                tl.error(f"next: HTTP {response.status} {html[:120]!r}" if response.status != 200 else "queue empty")
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
            elapsed = (time.perf_counter() - t0) * 1000
            ok = response.status == 200 and "goldset:submitted" in (response.getheader("HX-Trigger") or "")
            with tl.lock:
                tl.submit_ms.append((time.monotonic(), elapsed))
                tl.acknowledged += ok
            if not ok:
                tl.error(f"submit: HTTP {response.status} {html[:120]!r}")
        except Exception as exc:  # noqa: BLE001 - a load test reports failures, it does not stop on them
            tl.error(f"{type(exc).__name__}: {exc}")
        if pause:
            time.sleep(pause)


class Uploader(Reviewer):
    """A reviewer client that can also send a prepared body (a multipart upload)."""

    def request(self, method: str, path: str, body=None, headers: dict | None = None):
        if not isinstance(body, bytes):
            return super().request(method, path, body, headers)
        headers = dict(headers or {})
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        # An upload follows a long wait on the worker: gunicorn has closed the kept connection by then.
        self.conn.close()
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response, response.read().decode()


def multipart(fields: dict, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: application/x-ndjson\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def background_loop(admin: Reviewer, db_url: str, rows: int, stop_at: float, tl: Timeline) -> None:
    """Upload an import, wait for it, ask for a fresh report, wait for it; again until the end."""
    import psycopg

    def wait(table: str, pk: int, what: str) -> bool:
        while True:
            with psycopg.connect(db_url) as conn:
                status, message = conn.execute(f"SELECT status, message FROM {table} WHERE id = %s", (pk,)).fetchone()
            if status == "succeeded":
                return True
            if status in ("failed", "cancelled"):
                tl.error(f"{what} {pk} {status}: {message}")
                return False
            time.sleep(0.5)

    cycle = 0
    while time.monotonic() < stop_at:
        cycle += 1
        try:
            data = "".join(
                json.dumps({"prompt": f"Soak import {cycle} row {n}: what changed?", "response": f"Row {n}."}) + "\n"
                for n in range(rows)
            ).encode()
            body, content_type = multipart({"mode": "all_or_nothing", "provenance": "human"}, "soak.jsonl", data)
            t0 = time.monotonic()
            response, html = admin.request(
                "POST",
                f"/projects/{SLUG}/imports/",
                body,
                {"Content-Type": content_type, "X-CSRFToken": admin.cookies.get("csrftoken", "")},
            )
            if response.status != 302:
                tl.error(f"import upload: HTTP {response.status} {html[:200]!r}")
                time.sleep(5)
                continue
            batch = int(BATCH_RE.search(response.getheader("Location")).group(1))
            if wait("annotate_importbatch", batch, "import"):
                with tl.lock:
                    tl.imports.append((time.monotonic(), time.monotonic() - t0, rows))
            t0 = time.monotonic()
            response, html = admin.request("POST", f"/projects/{SLUG}/report/refresh/", headers=admin.hx_headers())
            if response.status not in (200, 302):
                tl.error(f"report request: HTTP {response.status} {html[:200]!r}")
                time.sleep(5)
                continue
            with psycopg.connect(db_url) as conn:
                (report,) = conn.execute("SELECT max(id) FROM annotate_agreementreport").fetchone()
            if wait("annotate_agreementreport", report, "report"):
                with tl.lock:
                    tl.reports.append((time.monotonic(), time.monotonic() - t0))
        except Exception as exc:  # noqa: BLE001
            tl.error(f"background: {type(exc).__name__}: {exc}")
            time.sleep(5)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-admin":
        child_admin()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--reviewers", type=int, default=32)
    parser.add_argument("--pause", type=float, default=1.0, help="Seconds a reviewer pauses after each item.")
    parser.add_argument("--items", type=int, default=60_000)
    parser.add_argument("--import-rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (compose uses 4).")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (compose uses 4).")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://goldset:goldset@127.0.0.1:5432/goldset_bench_soak"),
        help="Scratch PostgreSQL database; it is dropped and recreated.",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), help="The Celery broker."
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="goldset-soak-"))
    (tmp / "staticfiles").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"GOLDSET_DB_NAME"} and not k.startswith("GOLDSET_")}
    env.update(
        DATABASE_URL=args.pg_url,
        REDIS_URL=args.redis_url,
        SECRET_KEY="bench-secret-key",
        GOLDSET_DEBUG="0",
        GOLDSET_VAR_DIR=str(tmp),
        GOLDSET_ARTIFACTS_DIR=str(tmp / "artifacts"),
        DJANGO_SETTINGS_MODULE="config.settings",
        # Every upload and every report goes to the worker, as big ones do.
        GOLDSET_IMPORT_INLINE_MAX_BYTES="1",
        GOLDSET_REPORT_INLINE_MAX="1",
    )
    db_name = urlsplit(args.pg_url).path.lstrip("/")
    owner_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)', f'CREATE DATABASE "{db_name}"')
    server = worker = None
    try:
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "--database", "owner"],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        os.environ.update(env)  # run_child and the worker take the scratch database from here
        seeded = run_child(env, "--child-seed", str(args.items), str(args.reviewers))
        out = subprocess.run(
            [sys.executable, __file__, "--child-admin"], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert "admin" in out.stdout
        print(
            f"Soak: {args.reviewers} reviewers for {args.minutes:g} min, pause {args.pause:g} s, overlap k=2, "
            f"{seeded['items']} items seeded in {time.monotonic() - t0:.0f} s; imports of {args.import_rows} rows and "
            f"agreement reports alongside; gunicorn -w {args.workers} --threads {args.threads}, Celery worker "
            f"--concurrency 2; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the start",
            flush=True,
        )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}"]
            + ["-w", str(args.workers), "--threads", str(args.threads), "--log-level", "warning", "--timeout", "120"],
            env=env,
            cwd=ROOT,
        )
        wait_for_server(port, server)
        worker = Worker(tmp / "worker.log", name="soak", env=env)
        clients = [Reviewer(port, f"reviewer{i:02d}") for i in range(args.reviewers)]
        admin = Uploader(port, "soakadmin")
        for client in [*clients, admin]:
            client.login()

        tl = Timeline()
        start = time.monotonic()
        stop_at = start + args.minutes * 60
        web_start, worker_start = rss_mib(server.pid), rss_mib(worker.proc.pid)
        threads = [threading.Thread(target=reviewer_loop, args=(c, stop_at, args.pause, tl)) for c in clients]
        background = (admin, args.pg_url, args.import_rows, stop_at, tl)
        threads.append(threading.Thread(target=background_loop, args=background))
        for t in threads:
            t.start()
        print(
            f"{'min':>4} {'annots':>7} {'ann/s':>6} {'next p95':>9} {'submit p95':>11} {'errors':>6} {'imports':>8} "
            f"{'reports':>8} {'web RSS':>9} {'worker RSS':>11} {'load':>5}",
            flush=True,
        )
        print(
            f"{0:>4} {'':>7} {'':>6} {'':>9} {'':>11} {'':>6} {'':>8} {'':>8} {web_start:>5.0f} MiB "
            f"{worker_start:>7.0f} MiB {os.getloadavg()[0]:>5.1f}",
            flush=True,
        )
        minute, seen = 1, 0
        while any(t.is_alive() for t in threads):
            boundary = start + minute * 60
            while time.monotonic() < min(boundary, stop_at) and any(t.is_alive() for t in threads):
                time.sleep(0.5)
            if time.monotonic() < boundary and time.monotonic() < stop_at:
                break
            lo, hi = start + (minute - 1) * 60, min(boundary, time.monotonic())
            with tl.lock:
                nxt = [ms for at, ms in tl.next_ms if lo <= at < hi]
                sub = [ms for at, ms in tl.submit_ms if lo <= at < hi]
                errors = sum(1 for at, _ in tl.errors if lo <= at < hi)
                imports = sum(1 for at, _, _ in tl.imports if lo <= at < hi)
                reports = sum(1 for at, _ in tl.reports if lo <= at < hi)
                acknowledged, seen = tl.acknowledged - seen, tl.acknowledged
            rate = acknowledged / max(hi - lo, 1e-9)
            print(
                f"{minute:>4} {acknowledged:>7} {rate:>6.1f} {percentile(nxt, 95):>6.0f} ms "
                f"{percentile(sub, 95):>8.0f} ms {errors:>6} {imports:>8} {reports:>8} {rss_mib(server.pid):>5.0f} MiB "
                f"{rss_mib(worker.proc.pid):>7.0f} MiB {os.getloadavg()[0]:>5.1f}",
                flush=True,
            )
            if hi >= stop_at:
                break
            minute += 1
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        web_end, worker_end = rss_mib(server.pid), rss_mib(worker.proc.pid)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        if worker is not None:
            worker.stop()
    try:
        check = run_child(env, "--child-check", str(tl.acknowledged))
    finally:
        owner_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)

    violations = check["items_over_k"] + check["annotations_over_k"] + check["duplicate_leases"]
    reconciled = check["acknowledged"] == check["stored"] == check["revisions"] == check["submitted_leases"]
    all_next = [ms for _, ms in tl.next_ms]
    all_submit = [ms for _, ms in tl.submit_ms]
    print()
    print(f"Summary (load average now: {'/'.join(f'{x:.1f}' for x in os.getloadavg())})")
    print(
        f"  {tl.acknowledged} annotations in {elapsed:.0f} s = {tl.acknowledged / elapsed:.1f}/s; next p50/p95/p99 "
        f"{'/'.join(f'{percentile(all_next, p):.0f}' for p in (50, 95, 99))} ms, submit p50/p95/p99 "
        f"{'/'.join(f'{percentile(all_submit, p):.0f}' for p in (50, 95, 99))} ms"
    )
    imports_s = [s for _, s, _ in tl.imports]
    reports_s = [s for _, s in tl.reports]
    print(
        f"  alongside: {len(tl.imports)} imports of {args.import_rows} rows (upload -> worker -> stored, "
        f"median {percentile(imports_s, 50):.1f} s), {len(tl.reports)} agreement reports (request -> stored, "
        f"median {percentile(reports_s, 50):.1f} s)"
    )
    print(f"  errors: {len(tl.errors)}")
    kinds: dict[str, int] = {}
    for _, text in tl.errors:
        kinds[text[:160]] = kinds.get(text[:160], 0) + 1
    for text, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    {count} x {text}")
    print(
        f"  reconciliation {'exact' if reconciled else 'BROKEN'}: acknowledged={check['acknowledged']}, "
        f"stored={check['stored']}, revisions={check['revisions']}, submitted leases={check['submitted_leases']}"
    )
    print(
        f"  overlap cap {'held' if violations == 0 and check['counter_mismatches'] == 0 else 'BROKEN'}: items over k="
        f"{check['items_over_k']}, annotations over k={check['annotations_over_k']}, duplicate leases="
        f"{check['duplicate_leases']}, counter mismatches={check['counter_mismatches']}"
    )
    print(
        f"  RSS start -> end: web (gunicorn, {args.workers} workers) {web_start:.0f} -> {web_end:.0f} MiB, "
        f"worker (Celery, 2 children) {worker_start:.0f} -> {worker_end:.0f} MiB"
    )
    ok = not tl.errors and reconciled and violations == 0 and check["counter_mismatches"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
