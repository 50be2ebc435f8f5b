"""Review-queue cost per annotation, in one process: SQL queries per request and where the CPU goes.

Seeds a scratch SQLite database (or the PostgreSQL one in ``--pg-url``) with one project and a few
thousand items, logs one reviewer in through the test client (a real session row, as in production),
and runs ``--cycles`` GET next -> POST submit cycles the way queue.js does (htmx headers). It prints
the queries of one steady-state cycle, grouped by request, and the CPU time per cycle; with
``--profile`` also the top functions by cumulative time (cProfile).

    python bench/queue_profile.py                       # SQLite, 2000 items, 200 cycles
    python bench/queue_profile.py --profile --cycles 300
    python bench/queue_profile.py --pg-url postgres://goldset:goldset@127.0.0.1:5432/goldset_bench_profile
"""

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
LEASE_RE = re.compile(r'id="queue-current".*?data-lease="(\d+)"', re.S)
PREFETCH_RE = re.compile(r'id="queue-prefetch".*?data-lease="(\d+)"', re.S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="Print the top functions by cumulative time.")
    parser.add_argument("--pg-url", default="", help="Scratch PostgreSQL database (dropped and recreated).")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="goldset-profile-"))
    os.environ.update(GOLDSET_VAR_DIR=str(tmp), SECRET_KEY="profile-secret-key", GOLDSET_DEBUG="0")
    os.environ.pop("REDIS_URL", None)
    if args.pg_url:
        import psycopg

        name = urlsplit(args.pg_url).path.lstrip("/")
        admin = urlsplit(args.pg_url)._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        os.environ["DATABASE_URL"] = args.pg_url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    sys.path.insert(0, str(ROOT))
    try:
        return run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if args.pg_url:
            import psycopg

            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def run(args) -> int:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    from annotate.models import Item
    from annotate.services.projects import project_add_members, project_create, roles_ensure, user_grant_role

    setup_test_environment()
    call_command("migrate", verbosity=0)
    roles_ensure()
    user = get_user_model().objects.create_user(username="profiler", password="profile-password-1")
    user_grant_role(user=user, role="reviewer")
    project = project_create(name="Profile", slug="profile", task_kinds=["gold"], overlap_k=2)
    project_add_members(project=project, users=[user])
    Item.objects.bulk_create(
        Item(
            project=project,
            kind="gold",
            prompt=f"Profile prompt {n}: how do I reset my password?",
            responses=[{"text": f"Open settings ({n})", "model": "a"}, {"text": f"Ask support ({n})", "model": "b"}],
            content_hash=f"profile-{n:08d}",
            split="train",
        )
        for n in range(args.items)
    )
    client = Client(enforce_csrf_checks=False)
    assert client.login(username="profiler", password="profile-password-1")
    hx = {"HTTP_HX_REQUEST": "true"}
    next_url = f"/projects/{project.slug}/queue/next/"

    def cycle(capture: dict | None = None):
        with CaptureQueriesContext(connection) as q_next:
            html = client.get(next_url, **hx).content.decode()
        lease = LEASE_RE.search(html).group(1)
        prefetch = PREFETCH_RE.search(html)
        body = {"action": "write", "answer": f"answer {lease}", "duration_ms": "1500"}
        body["have"] = prefetch.group(1) if prefetch else ""
        with CaptureQueriesContext(connection) as q_submit:
            response = client.post(f"/projects/{project.slug}/queue/leases/{lease}/submit/", body, **hx)
        assert response.status_code == 200, response.content[:300]
        if capture is not None:
            capture["next"] = [q["sql"] for q in q_next.captured_queries]
            capture["submit"] = [q["sql"] for q in q_submit.captured_queries]
            capture["bytes"] = (len(html), len(response.content))

    for _ in range(20):  # warm up: templates, url resolvers, first leases
        cycle()
    sample: dict = {}
    cycle(sample)
    print(f"{connection.vendor}: one steady-state cycle")
    for name in ("next", "submit"):
        print(f"  {name}: {len(sample[name])} queries")
        for sql in sample[name]:
            print(f"    {sql[:150]}")
    print(f"  response bytes: next {sample['bytes'][0]}, submit {sample['bytes'][1]}")

    profiler = cProfile.Profile() if args.profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for _ in range(args.cycles):
        cycle()
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{args.cycles} cycles (next + submit): {1000 * cpu / args.cycles:.2f} ms CPU and "
        f"{1000 * wall / args.cycles:.2f} ms wall per annotation (client and server in one process)"
    )
    if profiler:
        out = io.StringIO()
        rows = int(os.environ.get("PROFILE_ROWS", "45"))
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(rows)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
