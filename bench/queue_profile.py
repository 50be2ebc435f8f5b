"""Review-queue cost per annotation, in one process: SQL queries per request and where the CPU goes.

Seeds a scratch SQLite database (or the PostgreSQL one in ``--pg-url``) with one project and a few
thousand items, logs one reviewer in (a real session row, as in production), and runs ``--cycles``
GET next -> POST submit cycles the way queue.js does (htmx headers, CSRF header), calling the WSGI
application the way gunicorn does (not the test client, whose template signals cost more than the
views). It prints the queries of one steady-state cycle, grouped by request, the Django CPU time per
cycle and, on PostgreSQL, the CPU its server process spent; with ``--profile`` also the top functions
by cumulative time (cProfile).

    python bench/queue_profile.py                       # SQLite, 2000 items, 200 cycles
    python bench/queue_profile.py --profile --cycles 300 --reviewers 32   # the bench's mix of reviewers
    python bench/queue_profile.py --pg-url postgres://goldset:goldset@127.0.0.1:5432/goldset_bench_profile
"""

import argparse
import cProfile
import io
import itertools
import os
import pstats
import re
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
LEASE_RE = re.compile(r'id="queue-current".*?data-lease="(\d+)"', re.S)
PREFETCH_RE = re.compile(r'id="queue-prefetch".*?data-lease="(\d+)"', re.S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument(
        "--reviewers", type=int, default=1, help="Reviewers taking turns, one cycle each (the bench's mix is 32)."
    )
    parser.add_argument("--profile", action="store_true", help="Print the top functions by cumulative time.")
    parser.add_argument("--pg-url", default="", help="Scratch PostgreSQL database (dropped and recreated).")
    parser.add_argument(
        "--sessions",
        choices=["goldset", "db", "cached_db"],
        default="goldset",
        help="Session and user reads: Goldset's (settings), Django's database sessions with the stock backend, "
        "or Django's cached_db sessions (Redis cache in --cache-url) with the stock backend.",
    )
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/9", help="Redis for --sessions cached_db.")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="goldset-profile-"))
    # One connection for the whole run, so the CPU of its server process can be read off it.
    os.environ.update(
        GOLDSET_VAR_DIR=str(tmp), SECRET_KEY="profile-secret-key", GOLDSET_DEBUG="0", CONN_MAX_AGE="86400"
    )
    os.environ.pop("REDIS_URL", None)
    if args.pg_url:
        import psycopg
        from _roles import owner_url

        name = urlsplit(args.pg_url).path.lstrip("/")
        admin = owner_url(args.pg_url)  # the owner creates, owns and migrates the database
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
    _sessions(args)
    from _roles import migrate_alias
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotate.models import Item
    from annotate.services.projects import project_add_members, project_create, roles_ensure, user_grant_role

    call_command("migrate", database=migrate_alias(), verbosity=0)
    roles_ensure()
    users = [
        get_user_model().objects.create_user(username=f"profiler{n}", password="profile-password-1")
        for n in range(args.reviewers)
    ]
    for user in users:
        user_grant_role(user=user, role="reviewer")
    project = project_create(name="Profile", slug="profile", task_kinds=["gold"], overlap_k=2)
    project_add_members(project=project, users=users)
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
    callers = []
    for user in users:
        client = Client()
        # Logged in as the login form leaves a session (its backend: the last one, which checks passwords);
        # django-axes' backend needs the request that a test client's login() does not pass.
        client.force_login(user, backend=settings.AUTHENTICATION_BACKENDS[-1])
        callers.append(wsgi_caller(session=client.cookies["sessionid"].value))
    turns = itertools.cycle(callers)
    next_url = f"/projects/{project.slug}/queue/next/"

    def cycle(capture: dict | None = None):
        # Queries are captured only when asked: the debug cursor that records them costs CPU of its own.
        call = next(turns)
        with CaptureQueriesContext(connection) if capture is not None else nullcontext() as q_next:
            status, html = call("GET", next_url)
        lease = LEASE_RE.search(html).group(1)
        prefetch = PREFETCH_RE.search(html)
        body = {"action": "write", "answer": f"answer {lease}", "duration_ms": "1500"}
        body["have"] = prefetch.group(1) if prefetch else ""
        with CaptureQueriesContext(connection) if capture is not None else nullcontext() as q_submit:
            status, submitted = call("POST", f"/projects/{project.slug}/queue/leases/{lease}/submit/", body)
        assert status.startswith("200"), submitted[:300]
        if capture is not None:
            capture["next"] = [q["sql"] for q in q_next.captured_queries]
            capture["submit"] = [q["sql"] for q in q_submit.captured_queries]
            capture["bytes"] = (len(html), len(submitted))

    for _ in range(20 * len(users)):  # warm up: templates, url resolvers, first leases
        cycle()
    sample: dict = {}
    cycle(sample)
    print(f"{connection.vendor}: one steady-state cycle")
    for name in ("next", "submit"):
        print(f"  {name}: {len(sample[name])} queries")
        for sql in sample[name]:
            print(f"    {sql[:150]}")
    print(f"  response bytes: next {sample['bytes'][0]}, submit {sample['bytes'][1]}")

    backend = postgres_backend_cpu(connection)
    profiler = cProfile.Profile() if args.profile else None
    b0 = backend()
    t0, c0 = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for _ in range(args.cycles):
        cycle()
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    database = backend() - b0
    print(
        f"{args.cycles} cycles (next + submit): {1000 * cpu / args.cycles:.2f} ms Django CPU and "
        f"{1000 * wall / args.cycles:.2f} ms wall per annotation"
        + (f"; PostgreSQL's server process {1000 * database / args.cycles:.2f} ms CPU" if database else "")
    )
    if profiler:
        out = io.StringIO()
        rows = int(os.environ.get("PROFILE_ROWS", "45"))
        if os.environ.get("PROFILE_DUMP"):
            profiler.dump_stats(os.environ["PROFILE_DUMP"])
        pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(rows)
        print(out.getvalue())
    return 0


def _sessions(args) -> None:
    """Swap the session engine and auth backend before any request or login uses them."""
    from django.conf import settings

    if args.sessions == "goldset":
        return
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
    settings.SESSION_ENGINE = f"django.contrib.sessions.backends.{args.sessions}"
    if args.sessions == "cached_db":
        settings.CACHES = {
            "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": args.cache_url}
        }
    print(f"sessions: {settings.SESSION_ENGINE}, backend {settings.AUTHENTICATION_BACKENDS[0]}")


def wsgi_caller(*, session: str):
    """Call the WSGI application the way gunicorn does, as one logged-in browser tab using htmx."""
    from django.core.wsgi import get_wsgi_application
    from django.middleware.csrf import _get_new_csrf_string

    app = get_wsgi_application()
    token = _get_new_csrf_string()
    cookie = f"sessionid={session}; csrftoken={token}"

    def call(method: str, path: str, body: dict | None = None) -> tuple[str, str]:
        data = urlencode(body or {}).encode()
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "127.0.0.1:8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_COOKIE": cookie,
            "HTTP_HX_REQUEST": "true",
            "HTTP_X_CSRFTOKEN": token,
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": str(len(data)),
            "wsgi.input": io.BytesIO(data),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }
        started: list[str] = []
        chunks = app(environ, lambda status, headers, exc_info=None: started.append(status))
        try:
            payload = b"".join(chunks).decode()
        finally:
            getattr(chunks, "close", lambda: None)()
        return started[0], payload

    return call


def postgres_backend_cpu(connection):
    """A function returning the CPU seconds this connection's PostgreSQL server process has used (0 elsewhere)."""
    if connection.vendor != "postgresql":
        return lambda: 0.0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():  # a server on another machine
        return lambda: 0.0
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    return read


if __name__ == "__main__":
    sys.exit(main())
