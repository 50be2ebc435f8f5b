"""REST API throughput and memory: import rows/s (API vs the import_items command on the same file) and
annotation export records/s, with the server's peak memory, at 100k and 1M.

    python bench/api_bench.py [--sizes 100000,1000000] [--backend sqlite|postgresql] [--skip-import|--skip-export]

End to end: a real server (gunicorn, one worker process, as ``config.wsgi`` runs in production) on a scratch
database (a temporary SQLite file, or a scratch PostgreSQL database when DATABASE_URL is set and
``--backend postgresql``), driven by the Python client (``goldset_client``) over HTTP.

- import: ``items.import_file`` streams a generated JSONL file (the rows of ``bench/import_bench.py``) to
  ``/imports/rows``; the import runs inside the request (inline limit raised), so the time is the API's
  whole path. Beside it, ``manage.py import_items`` on the same file into another project.
- export: items with two reviewers' annotations (one revised), a result, and an adjudication on every
  tenth; the client reads ``/annotations/export`` line by line and parses every record. Beside it, labelled
  "in-process", the same export generator without HTTP.

Memory: the peak RSS of the gunicorn worker during the call (sampled every 10 ms), and its growth above
the worker's RSS just before. Flat memory means the same peak at 100k and 1M.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "bench"))
SCRATCH_DB = "goldset_bench_api"
PORT = 8765


class ServerPeak:
    """Peak RSS of a process and its children (the gunicorn worker) while a block runs."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)

    def _rss(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        return max(p.memory_info().rss for p in procs if p.is_running())

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def scratch_env(backend: str, tmp: Path) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench"),
    }
    env.pop("REDIS_URL", None)
    env["GOLDSET_VAR_DIR"] = str(tmp / "var")
    env["GOLDSET_IMPORT_INLINE_MAX_BYTES"] = str(10**12)  # the import runs inside the request
    if backend == "sqlite":
        env.pop("DATABASE_URL", None)
    else:
        env["GOLDSET_DB_NAME"] = SCRATCH_DB
    return env


def pg_scratch(create: bool) -> None:
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], dbname="postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB}")
        if create:
            conn.execute(f"CREATE DATABASE {SCRATCH_DB}")


SETUP = """
import django, json, sys
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model
from annotate.services.projects import project_create, user_grant_role, roles_ensure
from annotate.services.tokens import api_token_create
roles_ensure()
user = get_user_model().objects.create_user("bench-admin")
user_grant_role(user=user, role="admin")
for slug in ("api", "cli", "export"):
    project_create(name=slug, slug=slug, task_kinds=["gold", "preference", "rubric"], created_by=user)
print(json.dumps({"token": api_token_create(user=user, name="bench", scope="admin")[1]}))
"""

FILL = """
import django, sys, random
django.setup()
from django.db import transaction
from django.utils import timezone
from django.contrib.auth import get_user_model
from annotate.models import Adjudication, Annotation, AnnotationRevision, Item, ItemResult, Project
size = int(sys.argv[1])
project = Project.objects.get(slug="export")
users = [get_user_model().objects.create_user(f"r{i}") for i in range(2)]
admin = get_user_model().objects.get(username="bench-admin")
rng = random.Random(1)
now = timezone.now()
start = Item.objects.order_by("-id").values_list("id", flat=True).first() or 0
for lo in range(0, size, 5000):
    n = min(5000, size - lo)
    with transaction.atomic():
        items = Item.objects.bulk_create(
            Item(project=project, kind="preference",
                 prompt=f"Question {lo + i}: how do I get a refund for order {rng.randint(1, 10**9)}?",
                 responses=[{"text": f"Open Orders, pick order {lo + i}, press Refund.", "model": "big"},
                            {"text": "Wait.", "model": "small"}],
                 metadata={"pipeline": "bench"}, provenance="distilled", content_hash=f"bench-{lo + i}", split="train")
            for i in range(n))
        anns = Annotation.objects.bulk_create(
            Annotation(item=item, reviewer=u, kind="preference", revision=1,
                       payload={"choice": "response", "chosen": 0, "rejected": 1, "strength": "clear", "rationale": ""},
                       display_order=[1, 0], duration_ms=4200)
            for item in items for u in users)
        AnnotationRevision.objects.bulk_create(
            AnnotationRevision(annotation=a, number=1, payload=a.payload) for a in anns)
        ItemResult.objects.bulk_create(
            ItemResult(item=item, kind="preference", status="adjudicated" if (lo + i) % 10 == 0 else "consensus",
                       payload={"choice": "response", "chosen": 0, "rejected": 1, "strength": "clear", "rationale": ""},
                       agreement=1.0, reviewer_ids=[u.pk for u in users], decided_at=now)
            for i, item in enumerate(items))
        Adjudication.objects.bulk_create(
            Adjudication(item=item, adjudicator=admin, reason="bench",
                         payload={"choice": "response", "chosen": 0, "rejected": 1})
            for i, item in enumerate(items) if (lo + i) % 10 == 0)
print("ok")
"""

IN_PROCESS = """
import django, sys, time
django.setup()
from annotate.exports import export_records, jsonl_chunks
from annotate.models import Project
project = Project.objects.get(slug="export")
t0 = time.perf_counter(); n = 0; size = 0
for chunk in jsonl_chunks(export_records(project=project)):
    size += len(chunk); n += chunk.count(b"\\n")
print(n, time.perf_counter() - t0, size)
"""


def django_child(code: str, env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return result.stdout.strip().splitlines()[-1]


def start_server(env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gunicorn", "config.wsgi", "-w", "1", "--threads", "2", "-b", f"127.0.0.1:{PORT}",
           "--timeout", "3600", "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=ROOT, env=env)
    import httpx

    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=1)
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()
    from goldset_client import Goldset
    from import_bench import generate

    print(f"{'what':<34} {'backend':<10} {'size':>9} {'rate':>16} {'server peak RSS':>16} {'growth':>10}")
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="goldset-api-bench-") as tmpdir:
            tmp = Path(tmpdir)
            if args.backend == "postgresql":
                pg_scratch(create=True)
            env = scratch_env(args.backend, tmp)
            server = None
            try:
                token = json.loads(django_child(SETUP, env))["token"]
                server = start_server(env)
                gs = Goldset(f"http://127.0.0.1:{PORT}", token, progress=False, timeout=3600)
                if not args.skip_import:
                    path = tmp / f"rows-{size}.jsonl"
                    generate(path, size, "jsonl")
                    with ServerPeak(server.pid) as mem:
                        t0 = time.perf_counter()
                        result = gs.items.import_file("api", path)
                        api_s = time.perf_counter() - t0
                    assert result["rows_imported"] == size, result["message"]
                    t0 = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "manage.py", "import_items", "cli", str(path)],
                        cwd=ROOT, env=env, check=True, capture_output=True,
                    )  # fmt: skip
                    cli_s = time.perf_counter() - t0
                    row = f"{size / api_s:>10,.0f} rows/s"
                    print(f"{'import via API (client → gunicorn)':<34} {args.backend:<10} {size:>9,} {row:>16} "
                          f"{mem.peak / 2**20:>12.0f} MiB {(mem.peak - mem.start) / 2**20:>6.0f} MiB")  # fmt: skip
                    row = f"{size / cli_s:>10,.0f} rows/s"
                    print(f"{'  import_items command (same file)':<34} {args.backend:<10} {size:>9,} {row:>16}")
                if not args.skip_export:
                    t0 = time.perf_counter()
                    django_child(FILL, env, str(size))
                    print(f"  (filled {size:,} items, {2 * size:,} annotations in {time.perf_counter() - t0:.0f} s)")
                    with ServerPeak(server.pid) as mem:
                        t0 = time.perf_counter()
                        n = sum(1 for record in gs.annotations.export("export") if record["annotations"])
                        export_s = time.perf_counter() - t0
                    assert n == size, n
                    row = f"{size / export_s:>8,.0f} records/s"
                    print(f"{'export via API (client parses all)':<34} {args.backend:<10} {size:>9,} {row:>16} "
                          f"{mem.peak / 2**20:>12.0f} MiB {(mem.peak - mem.start) / 2**20:>6.0f} MiB")  # fmt: skip
                    n, seconds, nbytes = django_child(IN_PROCESS, env).split()
                    row = f"{int(n) / float(seconds):>8,.0f} records/s"
                    print(f"{'  in-process export generator':<34} {args.backend:<10} {int(n):>9,} {row:>16} "
                          f"{int(nbytes) / 2**20:>9.0f} MiB of JSONL")  # fmt: skip
                gs.close()
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(timeout=30)
                if args.backend == "postgresql":
                    pg_scratch(create=False)


if __name__ == "__main__":
    main()
