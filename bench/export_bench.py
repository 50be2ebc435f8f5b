"""Eval set export end to end: the download a browser gets from the web server, and the export command.

    python bench/export_bench.py                     # 100k and 1M records
    python bench/export_bench.py --sizes 20000       # a quick run

The records go into a scratch database (eval tables are write-once, so a benchmark must never fill
a real one): with DATABASE_URL set, a PostgreSQL database named after it plus "_export_bench";
otherwise (or with ``--backend sqlite``) a temporary SQLite file. Both are removed at the end. Each
size gets its own frozen version, and each layout is measured three ways:

- download (end to end): gunicorn serves the app as docker-compose runs it (``-w 4 --threads 4``);
  an HTTP client logged in as an admin GETs the version's export URL and reads the streamed body
  to its last byte. Printed: seconds from the request to the last byte, and the peak RSS of the
  gunicorn worker that served it (its VmHWM, reset before). The canonical layout's body must hash
  to the version's sha256.
- command (end to end): ``manage.py export_evalset <version> --format <layout>`` in a fresh
  process, from start to exit, with the process's own peak RSS (VmHWM). Run twice: the files must
  be byte-identical.
- inner, labelled: ``write_export`` over the selector's records in a fresh process, timed around
  the call (no Django start): what this benchmark measured before it timed the user's wait.
"""

import argparse
import hashlib
import http.client
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
CHILD = sys.argv[1:2] == ["--child"]
BACKEND = os.environ.get("GOLDSET_EXPORT_BENCH_BACKEND") or (
    "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
)
if "--backend" in sys.argv:
    BACKEND = sys.argv[sys.argv.index("--backend") + 1]
    os.environ["GOLDSET_EXPORT_BENCH_BACKEND"] = BACKEND
SCRATCH = Path(os.environ["GOLDSET_VAR_DIR"]) if CHILD else Path(tempfile.mkdtemp(prefix="goldset-export-bench-"))
SCRATCH_DB = (urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "goldset") + "_export_bench"
os.environ.pop("REDIS_URL", None)
if BACKEND == "sqlite":
    os.environ.pop("DATABASE_URL", None)
else:
    os.environ["GOLDSET_DB_NAME"] = SCRATCH_DB
os.environ["GOLDSET_VAR_DIR"] = str(SCRATCH)
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
os.environ.setdefault("SECRET_KEY", "bench")


def pg_scratch(create: bool) -> None:
    from _roles import scratch_database

    scratch_database(os.environ["DATABASE_URL"], SCRATCH_DB, create=create)


if BACKEND == "postgresql" and not CHILD:
    pg_scratch(create=True)

import django  # noqa: E402

django.setup()

from _memory import PeakRSS, run_watched  # noqa: E402
from _roles import migrate_alias  # noqa: E402
from _worker import ServedProcesses  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from annotate.models import Project  # noqa: E402
from annotate.services.projects import project_add_members, roles_ensure, user_grant_role  # noqa: E402
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


@transaction.atomic
def make_version(project, user, size: int, number: int) -> EvalSetVersion:
    # Two passes (hash, then insert) so a 1M-record version never sits in memory: the version row
    # is write-once, so its sha256 must be known before it is inserted. One transaction, as a
    # freeze: PostgreSQL refuses a version whose records are not all there at commit.
    sha = hashlib.sha256()
    counts: dict[str, int] = {}
    for record in generate(size, number):
        sha.update((canonical_line(record) + "\n").encode())
        counts[record["kind"]] = counts.get(record["kind"], 0) + 1
    version = EvalSetVersion.objects.create(
        project=project,
        number=number,
        sha256=sha.hexdigest(),
        record_count=size,
        counts=counts,
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
    """The inner figure: write_export in a fresh process, so its peak RSS is the export's own."""
    # ru_maxrss would carry the parent's peak across fork/exec; sample this process instead.
    version = EvalSetVersion.objects.select_related("project", "frozen_by").get(pk=version_id)
    info = evalset_version_info(version=version)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        data, _ = write_export(evalset_records_iter(version=version), version_info=info, fmt=fmt, directory=out)
        elapsed = time.perf_counter() - t0
    print(f"{elapsed} {mem.peak_mib} {data}")


def run_inner(version_id: int, fmt: str, out: Path) -> tuple[float, float, Path]:
    cmd = [sys.executable, __file__, "--child", str(version_id), fmt, str(out)]
    line = subprocess.run(cmd, env=os.environ, check=True, capture_output=True, text=True).stdout.split()
    return float(line[0]), float(line[1]), Path(line[2])


def run_command(version_id: int, fmt: str, out: Path) -> tuple[float, float, Path]:
    """manage.py export_evalset in a fresh process: seconds to exit and its own peak RSS."""
    argv = [sys.executable, "manage.py", "export_evalset", str(version_id), "--format", fmt, "--out", str(out)]
    run = run_watched(argv, env=os.environ, cwd=ROOT)
    if run["returncode"] != 0:
        raise SystemExit(f"export_evalset failed:\n{run['stderr'][-3000:]}")
    (data,) = [p for p in out.iterdir() if p.name.endswith(f".{fmt}.jsonl")]
    return run["seconds"], run["peak_mib"], data


class WebServer(ServedProcesses):
    """gunicorn serving the app as docker-compose runs it, on a free local port."""

    def __init__(self, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{self.port}", "-w", "4"]
            + ["--threads", "4", "--timeout", "600"],
            cwd=ROOT,
            env=os.environ,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/accounts/login/")
                conn.getresponse().read()
                if len(self.children()) == 4:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"gunicorn did not start:\n{log.read_text()[-3000:]}")

    def warm_up(self, path: str, session: str) -> None:
        """A few requests through every worker first: the first request a worker serves loads code."""
        for _ in range(16):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.request("GET", path, headers={"Cookie": f"sessionid={session}"})
            conn.getresponse().read()
            conn.close()

    def download(self, path: str, session: str) -> tuple[float, int, str]:
        """GET ``path`` and read the body to its last byte: seconds, bytes, sha256."""
        self.reset_peaks()
        sha, size = hashlib.sha256(), 0
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request("GET", path, headers={"Cookie": f"sessionid={session}"})
        response = conn.getresponse()
        if response.status != 200:
            body = response.read()
            if os.environ.get("BENCH_DUMP"):
                Path(os.environ["BENCH_DUMP"]).write_bytes(body)
            raise SystemExit(f"GET {path}: {response.status} {body[:300]!r}")
        while chunk := response.read(1 << 16):
            sha.update(chunk)
            size += len(chunk)
        seconds = time.perf_counter() - start
        conn.close()
        return seconds, size, sha.hexdigest()


def main() -> None:
    if CHILD:
        return child(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="Record counts, comma-separated.")
    parser.add_argument("--formats", default="goldset,prompt-completion,openai-dpo")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], help="Default: postgresql with DATABASE_URL.")
    args = parser.parse_args()
    call_command("migrate", database=migrate_alias(), verbosity=0)
    roles_ensure()
    user = get_user_model().objects.create_user("bench", password="bench")
    user_grant_role(user=user, role="admin")
    project = Project.objects.create(name="Bench", slug="bench", task_kinds=["gold", "preference", "rubric"])
    project_add_members(project=project, users=[user])
    client = Client()
    client.force_login(user)
    session = client.cookies["sessionid"].value
    where = f"scratch PostgreSQL database {SCRATCH_DB}" if BACKEND == "postgresql" else "scratch SQLite database"
    print(f"{where} (removed afterwards); load average {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
    web = WebServer(SCRATCH / "gunicorn.log")
    rates = {}
    try:
        for number, size in enumerate([int(s) for s in args.sizes.split(",")], start=1):
            t0 = time.perf_counter()
            version = make_version(project, user, size, number)
            print(f"{size:>9,} records: inserted in {time.perf_counter() - t0:.0f} s")
            web.warm_up(reverse("evalsets:version-detail", kwargs={"version_id": version.pk}), session)
            print(
                f"  {'layout':<18} {'download (end to end)':>36}   {'command (end to end)':>26}"
                f"   {'inner: write_export':>28}"
            )
            for fmt in args.formats.split(","):
                url = reverse("evalsets:version-export", kwargs={"version_id": version.pk, "fmt": fmt})
                seconds, size_bytes, sha = web.download(url, session)
                served_peak = web.peak_mib()
                out = SCRATCH / f"out-{size}"
                cmd_s, cmd_peak, data = run_command(version.pk, fmt, out / "a")
                _, _, again = run_command(version.pk, fmt, out / "b")
                inner_s, inner_peak, _ = run_inner(version.pk, fmt, out / "c")
                identical = data.read_bytes() == again.read_bytes()
                if not identical:
                    raise SystemExit("FAILED: re-export differs")
                if hashlib.sha256(data.read_bytes()).hexdigest() != sha:
                    raise SystemExit("FAILED: the download and the command's file differ")
                if fmt == "goldset" and sha != version.sha256:
                    raise SystemExit("FAILED: the canonical export does not hash to the version's sha256")
                rates[(size, fmt)] = (size / seconds, served_peak, size / cmd_s, cmd_peak)
                print(
                    f"  {fmt:<18} {seconds:6.1f} s {size / seconds:>8,.0f}/s {size_bytes / 2**20 / seconds:5.1f} MiB/s"
                    f" {served_peak:4.0f} MiB   {cmd_s:6.1f} s {size / cmd_s:>8,.0f}/s {cmd_peak:4.0f} MiB"
                    f"   {inner_s:6.1f} s {size / inner_s:>8,.0f}/s {inner_peak:4.0f} MiB"
                )
                shutil.rmtree(out, ignore_errors=True)
            print("  (records/s; MiB: peak RSS of the gunicorn worker / the command / the inner process; each")
            print("   download equals the command's file, re-exports are byte-identical, goldset = version's sha256)")
    finally:
        web.stop()
    sizes = sorted({s for s, _ in rates})
    if len(sizes) > 1:
        for fmt in args.formats.split(","):
            (r0, m0, c0, cm0), (r1, m1, c1, cm1) = rates[(sizes[0], fmt)], rates[(sizes[-1], fmt)]
            print(
                f"{fmt}: {sizes[-1] // sizes[0]}x the records: download throughput ratio {r1 / r0:.2f}, served"
                f" peak RSS ratio {m1 / m0:.2f} ({m0:.0f} → {m1:.0f} MiB); command {c1 / c0:.2f}, {cm1 / cm0:.2f}"
            )
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if CHILD:
        main()
    else:
        try:
            main()
        finally:
            from django.db import connections

            connections.close_all()
            shutil.rmtree(SCRATCH, ignore_errors=True)
            if BACKEND == "postgresql":
                pg_scratch(create=False)
