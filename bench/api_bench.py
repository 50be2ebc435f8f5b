"""REST API throughput and memory: import rows/s (API vs the import_items command on the same file) and
annotation export records/s, with the server's peak memory, at 100k and 1M.

    python bench/api_bench.py [--sizes 100000,1000000] [--backend sqlite|postgresql] [--skip-import|--skip-export]
                              [--keep-db]

``--sizes 2000`` makes a CI-sized run of a minute or so.

End to end: a real server (gunicorn, one worker process, as ``config.wsgi`` runs in production) on a scratch
database (a temporary SQLite file, or a scratch PostgreSQL database when DATABASE_URL is set and
``--backend postgresql``), driven by the Python client (``goldset_client``) over HTTP.

- import: ``items.import_file`` streams a generated JSONL file (the rows of ``bench/import_bench.py``) to
  ``/imports/rows``; the import runs inside the request (inline limit raised), so the time is the API's
  whole path. Beside it, ``manage.py import_items`` on the same file into another project.
- export: items (filled with COPY on PostgreSQL) with two reviewers' annotations, a revision each, a result,
  and an adjudication on every tenth; the client reads ``/annotations/export`` line by line and parses every
  record. Beside it, labelled "in-process", ``export_jsonl`` without HTTP, with the records per CPU-second of
  the database backend (which writes the JSON lines on PostgreSQL) and of the Python process: on a machine
  where other work competes for the cores, those say more than the wall clock.

Memory: the peak RSS of the gunicorn worker during the call (the kernel's VmHWM, reset before it: nothing
samples meanwhile, so the bench takes no CPU from the server), and its growth above the worker's RSS just
before. Flat memory means the same peak at 100k and 1M.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "bench"))
# Named after the app's database, so benchmarks of two checkouts on one server never share a scratch database.
from _worker import ServedProcesses  # noqa: E402

SCRATCH_DB = (urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "goldset") + "_api_bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = free_port()


class ServerPeak(ServedProcesses):
    """The gunicorn worker's peak RSS while a block runs: the kernel's VmHWM, reset on entry. Nothing samples
    meanwhile, so the bench takes no CPU from the server it measures."""

    def __init__(self, server: subprocess.Popen):
        self.proc = server

    def __enter__(self):
        self.reset_peaks()
        self.start = self.idle_mib()
        return self

    def __exit__(self, *exc):
        self.peak = self.peak_mib()


def scratch_env(backend: str, tmp: Path) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench"),
    }
    env.pop("REDIS_URL", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "bench")])
    env["GOLDSET_VAR_DIR"] = str(tmp / "var")
    env["GOLDSET_IMPORT_INLINE_MAX_BYTES"] = str(10**12)  # the import runs inside the request
    if backend == "sqlite":
        env.pop("DATABASE_URL", None)
    else:
        env["GOLDSET_DB_NAME"] = SCRATCH_DB
    return env


def pg_scratch(create: bool) -> None:
    from _roles import scratch_database

    scratch_database(os.environ["DATABASE_URL"], SCRATCH_DB, create=create)


SETUP = """
import django, json, sys
django.setup()
from django.core.management import call_command
from _roles import migrate_alias
call_command("migrate", database=migrate_alias(), verbosity=0)
from django.contrib.auth import get_user_model
from annotate.services.projects import project_create, user_grant_role, roles_ensure
from annotate.services.tokens import api_token_create
roles_ensure()
user = get_user_model().objects.create_user("bench-admin")
user_grant_role(user=user, role="admin")
for slug in ("api", "cli", "cli-2", "api-2", "export"):
    project_create(name=slug, slug=slug, task_kinds=["gold", "preference", "rubric"], created_by=user)
print(json.dumps({"token": api_token_create(user=user, name="bench", scope="admin")[1]}))
"""

FILL = """
import django, json, sys
django.setup()
from django.db import connection, transaction
from django.utils import timezone
from django.contrib.auth import get_user_model
from annotate.models import Adjudication, Annotation, AnnotationRevision, Item, ItemResult, Project
size = int(sys.argv[1])
project = Project.objects.get(slug="export")
users = [get_user_model().objects.create_user(f"r{i}") for i in range(2)]
admin = get_user_model().objects.get(username="bench-admin")
now = timezone.now()
pick = {"choice": "response", "chosen": 0, "rejected": 1, "strength": "clear", "rationale": ""}
decided = {"choice": "response", "chosen": 0, "rejected": 1}
CHUNK = 20000


def insert(model, columns, rows):
    # COPY on PostgreSQL (the ORM's INSERTs would take longer than the export measured), bulk_create elsewhere.
    rows = list(rows)
    if connection.vendor != "postgresql":
        fields = {f.column: f.attname for f in model._meta.concrete_fields}
        model.objects.bulk_create([model(**{fields[c]: v for c, v in zip(columns, row)}) for row in rows], 2000)
        return
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([json.dumps(v) if isinstance(v, (dict, list)) else v for v in row])


def new_ids(model, column, after):
    return list(model.objects.filter(**{column + "__gt": after}).order_by("id").values_list("id", flat=True))


item_after = Item.objects.order_by("-id").values_list("id", flat=True).first() or 0
for lo in range(0, size, CHUNK):
    n = min(CHUNK, size - lo)
    with transaction.atomic():
        insert(Item, ["project_id", "kind", "prompt", "responses", "rubric_response", "metadata", "provenance",
                      "content_hash", "split", "is_check", "is_calibration", "unusable_reason", "review_count",
                      "created_at"],
               ((project.pk, "preference", f"Question {lo + i}: how do I get a refund for order {lo + i}?",
                 [{"text": f"Open Orders, pick order {lo + i}, press Refund.", "model": "big"},
                  {"text": "Wait.", "model": "small"}], 0, {"pipeline": "bench"}, "distilled", f"bench-{lo + i}",
                 "train", False, False, "", 2, now) for i in range(n)))
        ids = Item.objects.filter(project=project, id__gt=item_after).order_by("id").values_list("id", flat=True)
        ids = list(ids)
        item_after = ids[-1]
        annotation_after = Annotation.objects.order_by("-id").values_list("id", flat=True).first() or 0
        insert(Annotation, ["item_id", "reviewer_id", "kind", "payload", "revision", "display_order", "duration_ms",
                            "created_at", "updated_at"],
               ((item, u.pk, "preference", pick, 1, [1, 0], 4200, now, now) for item in ids for u in users))
        insert(AnnotationRevision, ["annotation_id", "number", "payload", "created_at"],
               ((a, 1, pick, now) for a in new_ids(Annotation, "id", annotation_after)))
        insert(ItemResult, ["item_id", "kind", "status", "payload", "agreement", "reviewer_ids", "decided_at",
                            "updated_at"],
               ((item, "preference", "adjudicated" if (lo + i) % 10 == 0 else "consensus", pick, 1.0,
                 [u.pk for u in users], now, now) for i, item in enumerate(ids)))
        insert(Adjudication, ["item_id", "adjudicator_id", "payload", "reason", "created_at"],
               ((item, admin.pk, decided, "bench", now) for i, item in enumerate(ids) if (lo + i) % 10 == 0))
if connection.vendor == "postgresql":
    with connection.cursor() as cursor:
        for model in (Item, Annotation, AnnotationRevision, ItemResult, Adjudication):
            cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
print("ok")
"""

REFRESH = """
import django, os, time
django.setup()
from annotate.export_cache import refresh
t0, p0 = time.perf_counter(), time.process_time()
done = refresh(budget_s=None)
print(done["items"], time.perf_counter() - t0, time.process_time() - p0)
"""

IN_PROCESS = """
import django, os, sys, time
django.setup()
from django.db import connection
from annotate.exports import export_jsonl
from annotate.models import Project
project = Project.objects.get(slug="export")
backend = None
if connection.vendor == "postgresql":
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]


def backend_cpu():
    # The database backend's CPU seconds (on this machine): where the JSON lines are built.
    if backend is None:
        return 0.0
    fields = open(f"/proc/{backend}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


t0, c0, p0 = time.perf_counter(), backend_cpu(), time.process_time()
n = size = 0
for chunk in export_jsonl(project=project):
    size += len(chunk)
    n += chunk.count(b"\\n")
print(n, time.perf_counter() - t0, size, backend_cpu() - c0, time.process_time() - p0)
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


def timed_export(gs, server, size: int):
    with ServerPeak(server) as mem:
        t0 = time.perf_counter()
        n = sum(1 for record in gs.annotations.export("export") if record["annotations"])
        seconds = time.perf_counter() - t0
    assert n == size, n
    return seconds, mem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--keep-db", action="store_true", help="Keep the scratch PostgreSQL database (to profile).")
    parser.add_argument(
        "--cold-max", type=int, default=100_000,
        help="Also time the export before the worker built the lines, up to this many items (it is slow).",
    )  # fmt: skip
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
                    # In the order API, command, command, API (each into its own project), so that neither
                    # side gains from going second on a table that grows.
                    seconds = {"api": [], "cli": []}
                    peaks, client_cpu = [], 0.0
                    for slug in ("api", "cli", "cli-2", "api-2"):
                        t0, c0 = time.perf_counter(), time.process_time()
                        if slug.startswith("api"):
                            with ServerPeak(server) as mem:
                                result = gs.items.import_file(slug, path)
                            assert result["rows_imported"] == size, result["message"]
                            peaks.append(mem)
                            client_cpu += time.process_time() - c0
                        else:
                            subprocess.run(
                                [sys.executable, "manage.py", "import_items", slug, str(path)],
                                cwd=ROOT, env=env, check=True, capture_output=True,
                            )  # fmt: skip
                        seconds[slug[:3]].append(time.perf_counter() - t0)
                    mem = max(peaks, key=lambda m: m.peak)
                    api = ", ".join(f"{size / s:,.0f}" for s in seconds["api"])
                    cli = ", ".join(f"{size / s:,.0f}" for s in seconds["cli"])
                    row = f"{2 * size / sum(seconds['api']):>10,.0f} rows/s"
                    print(f"{'import via API (client → gunicorn)':<34} {args.backend:<10} {size:>9,} {row:>16} "
                          f"{mem.peak:>12.0f} MiB {(mem.peak - mem.start):>6.0f} MiB"
                          f"   (runs 1 and 4: {api} rows/s; client CPU {client_cpu / 2:.1f} s a run)")  # fmt: skip
                    row = f"{2 * size / sum(seconds['cli']):>10,.0f} rows/s"
                    print(f"{'  import_items command (same file)':<34} {args.backend:<10} {size:>9,} {row:>16}"
                          f"{'':>29}   (runs 2 and 3: {cli} rows/s)")  # fmt: skip
                if not args.skip_export:
                    t0 = time.perf_counter()
                    django_child(FILL, env, str(size))
                    print(f"  (filled {size:,} items, {2 * size:,} annotations in {time.perf_counter() - t0:.0f} s)")
                    if args.backend == "postgresql" and size <= args.cold_max:
                        # Right after a bulk load, before the worker has built the lines: each is built on the spot.
                        export_s, mem = timed_export(gs, server, size)
                        row = f"{size / export_s:>8,.0f} records/s"
                        print(f"{'  the same, lines not yet built':<34} {args.backend:<10} {size:>9,} {row:>16} "
                              f"{mem.peak:>12.0f} MiB {(mem.peak - mem.start):>6.0f} MiB")  # fmt: skip
                    if args.backend == "postgresql":
                        n, seconds, _ = django_child(REFRESH, env).split()
                        row = f"{int(n) / float(seconds):>8,.0f} lines/s"
                        print(f"{'  worker builds the lines (beat)':<34} {args.backend:<10} {int(n):>9,} {row:>16}")
                    export_s, mem = timed_export(gs, server, size)
                    row = f"{size / export_s:>8,.0f} records/s"
                    print(f"{'export via API (client parses all)':<34} {args.backend:<10} {size:>9,} {row:>16} "
                          f"{mem.peak:>12.0f} MiB {(mem.peak - mem.start):>6.0f} MiB")  # fmt: skip
                    n, seconds, nbytes, db_cpu, py_cpu = django_child(IN_PROCESS, env).split()
                    row = f"{int(n) / float(seconds):>8,.0f} records/s"
                    print(f"{'  in-process export_jsonl':<34} {args.backend:<10} {int(n):>9,} {row:>16} "
                          f"{int(nbytes) / 2**20:>9.0f} MiB of JSONL")  # fmt: skip
                    for label, cpu in (("database backend CPU", db_cpu), ("Python (web process) CPU", py_cpu)):
                        if float(cpu):
                            print(f"{'    ' + label:<34} {'':<10} {'':>9} {int(n) / float(cpu):>8,.0f} records/cpu-s")
                gs.close()
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(timeout=30)
                if args.backend == "postgresql" and not args.keep_db:
                    pg_scratch(create=False)


if __name__ == "__main__":
    main()
