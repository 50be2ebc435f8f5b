"""Crowd run: 500 reviewers, each pausing 5 s between items (about 100 annotations/s offered), on PostgreSQL
through the docker-compose web settings.

The web server is started as docker-compose.yml's ``web`` service starts it: its gunicorn command (workers,
threads) and its environment, with the defaults compose fills in, except that it listens on a free local port,
talks to a scratch database and Redis here, and is served over plain http (``GOLDSET_HTTPS=0``; compose
defaults to 1 behind a TLS proxy). The scratch database (``goldset_bench_crowd``) is created, migrated and
dropped by the owner role.

Each reviewer has its own session (made in the database, as a login would: 500 password hashes would cost
more CPU than the run) and its own connection, and loops GET next -> POST submit -> 5 s pause; they start at
random offsets within the first pause. One asyncio loop holds all 500, so the client costs little CPU.

It prints next and submit latency, annotations/s, errors and the exact reconciliation (acknowledged = stored =
revisions = submitted leases), and, when ``next`` p95 misses 100 ms, what limits it: the machine's CPU (and
who used it), gunicorn's threads (requests in flight against the threads there are), PostgreSQL connections.

    python bench/crowd_bench.py                        # 500 reviewers, 5 s pause, 3 minutes
    python bench/crowd_bench.py --reviewers 50 --minutes 0.5
"""

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shlex
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from _roles import owner_sql
from queue_bench import (
    LEASE_RE,
    PREFETCH_RE,
    SLUG,
    cpu_seconds,
    free_port,
    percentile,
    postgres_server_pid,
    run_child,
    wait_for_server,
)

ROOT = Path(__file__).resolve().parent.parent
VAR_RE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def child_sessions(count: int) -> None:
    """A logged-in session for each seeded reviewer, as ``login()`` makes one; prints the session keys."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.utils.module_loading import import_string

    store = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
    keys = []
    for user in get_user_model().objects.filter(username__startswith="reviewer").order_by("username")[:count]:
        session = store()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[-1]
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(session.session_key)
    print(json.dumps(keys))


def compose_web(port: int) -> tuple[list[str], dict]:
    """docker-compose.yml's web command and environment, with the defaults compose would fill in."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    web = compose["services"]["web"]
    argv = shlex.split(web["command"])
    argv[argv.index("-b") + 1] = f"127.0.0.1:{port}"
    env = {
        k: VAR_RE.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), str(v))
        for k, v in web["environment"].items()
    }
    return [sys.executable, "-m", *argv], env


# --- The client: one asyncio loop, one connection per reviewer ------------------------------------


class Connection:
    """HTTP/1.1 with keep-alive on asyncio streams; reconnects when gunicorn has dropped an idle connection."""

    IDLE_S = 1.5  # gunicorn closes a kept connection after 2 s idle (--keep-alive)

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None
        self.used = 0.0

    async def _open(self):
        self.close()
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, str]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        for attempt in range(2):
            fresh = self.writer is None or time.monotonic() - self.used > self.IDLE_S
            if fresh:
                await self._open()
            try:
                self.writer.write(head.encode() + body)
                await self.writer.drain()
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed before the answer")
                break
            except (ConnectionError, OSError):
                self.close()
                if fresh or attempt:
                    raise
        status = int(status_line.split()[1])
        answer: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            answer.setdefault(name.strip().lower(), value.strip())
        if answer.get("transfer-encoding") == "chunked":
            data = b""
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                data += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
        else:
            data = await self.reader.readexactly(int(answer.get("content-length", 0)))
        self.used = time.monotonic()
        if answer.get("connection", "").lower() == "close":
            self.close()
        return status, answer, data.decode()


@dataclass
class Stats:
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    acknowledged: int = 0
    errors: list[str] = field(default_factory=list)
    in_flight: int = 0
    in_flight_samples: list[int] = field(default_factory=list)


async def reviewer(n: int, port: int, session_key: str, stop_at: float, pause: float, stats: Stats) -> None:
    csrf = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    headers = {"Cookie": f"sessionid={session_key}; csrftoken={csrf}", "HX-Request": "true", "X-CSRFToken": csrf}
    conn = Connection(port)
    await asyncio.sleep(random.Random(n).uniform(0, pause))
    while time.monotonic() < stop_at:
        try:
            stats.in_flight += 1
            t0 = time.perf_counter()
            try:
                status, _, html = await conn.request("GET", f"/projects/{SLUG}/queue/next/", headers)
            finally:
                stats.in_flight -= 1
            stats.next_ms.append((time.perf_counter() - t0) * 1000)
            match = LEASE_RE.search(html) if status == 200 else None
            if match is None:
                stats.errors.append(f"next: HTTP {status} {html[:120]!r}" if status != 200 else "next: queue empty")
            else:
                lease = match.group(1)
                prefetch = PREFETCH_RE.search(html)
                body = urlencode(
                    {
                        "action": "write",
                        "answer": f"reviewer {n} answers lease {lease}",
                        "duration_ms": "5000",
                        "have": prefetch.group(1) if prefetch else "",
                    }
                ).encode()
                stats.in_flight += 1
                t0 = time.perf_counter()
                try:
                    status, answer, html = await conn.request(
                        "POST",
                        f"/projects/{SLUG}/queue/leases/{lease}/submit/",
                        {**headers, "Content-Type": "application/x-www-form-urlencoded"},
                        body,
                    )
                finally:
                    stats.in_flight -= 1
                stats.submit_ms.append((time.perf_counter() - t0) * 1000)
                if status == 200 and "goldset:submitted" in answer.get("hx-trigger", ""):
                    stats.acknowledged += 1
                else:
                    stats.errors.append(f"submit: HTTP {status} {html[:120]!r}")
        except Exception as exc:  # noqa: BLE001 - a load test reports failures, it does not stop on them
            stats.errors.append(f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(pause)
    conn.close()


async def sample_in_flight(stop_at: float, stats: Stats) -> None:
    while time.monotonic() < stop_at:
        stats.in_flight_samples.append(stats.in_flight)
        await asyncio.sleep(0.1)


async def warm_up(port: int, keys: list[str]) -> None:
    """One item for each of the first 32 reviewers at once, not counted: gunicorn's workers load the app on
    their first request, and each thread opens its database connection on its first query."""

    async def one(key: str) -> None:
        conn = Connection(port)
        await conn.request("GET", f"/projects/{SLUG}/queue/next/", {"Cookie": f"sessionid={key}", "HX-Request": "true"})
        conn.close()

    await asyncio.gather(*(one(key) for key in keys[:32]))


async def crowd(port: int, keys: list[str], stop_at: float, pause: float, stats: Stats) -> None:
    await asyncio.gather(
        sample_in_flight(stop_at, stats),
        *(reviewer(n, port, key, stop_at, pause, stats) for n, key in enumerate(keys)),
    )


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def watch_connections(db_url: str, db_name: str, stop: threading.Event, seen: list) -> None:
    """The largest number of server connections to the database while the run lasts, sampled each second."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        while not stop.is_set():
            (count,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db_name,)).fetchone()
            seen.append(count)
            stop.wait(1)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-sessions":
        child_sessions(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviewers", type=int, default=500)
    parser.add_argument("--pause", type=float, default=5.0, help="Seconds a reviewer pauses after each item.")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--items", type=int, default=30_000)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://goldset:goldset@127.0.0.1:5432/goldset_bench_crowd"),
        help="Scratch PostgreSQL database; it is dropped and recreated.",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), help="The Celery broker."
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="goldset-crowd-"))
    (tmp / "staticfiles").mkdir()
    port = free_port()
    log = tmp / "gunicorn.log"
    argv, compose_env = compose_web(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOLDSET_") and k != "DATABASE_URL"}
    env.update(compose_env)
    env.update(
        DATABASE_URL=args.pg_url,
        REDIS_URL=args.redis_url,
        SECRET_KEY="bench-secret-key-" + "x" * 40,
        GOLDSET_HTTPS="0",
        GOLDSET_VAR_DIR=str(tmp),
        GOLDSET_ARTIFACTS_DIR=str(tmp / "artifacts"),
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    db_name = urlsplit(args.pg_url).path.lstrip("/")
    owner_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)', f'CREATE DATABASE "{db_name}"')
    server = None
    stats = Stats()
    try:
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "--database", "owner"],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seeded = run_child(env, "--child-seed", str(args.items), str(args.reviewers))
        out = subprocess.run(
            [sys.executable, __file__, "--child-sessions", str(args.reviewers)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        keys = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"Crowd: {len(keys)} reviewers pausing {args.pause:g} s (about {len(keys) / args.pause:.0f} annotations/s "
            f"offered) for {args.minutes:g} min, overlap k=2, {seeded['items']} items, set up in "
            f"{time.monotonic() - t0:.0f} s; web as docker-compose runs it: {' '.join(argv[2:])}, GOLDSET_HTTPS=0; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the start",
            flush=True,
        )
        db_pid = postgres_server_pid(args.pg_url)
        server = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        wait_for_server(port, server)
        asyncio.run(warm_up(port, keys))
        max_connections = 0
        import psycopg

        with psycopg.connect(args.pg_url) as conn:
            max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
        stop, connections = threading.Event(), []
        watcher = threading.Thread(target=watch_connections, args=(args.pg_url, db_name, stop, connections))
        watcher.start()
        web0, db0, client0, cpu0 = (
            cpu_seconds(server.pid),
            cpu_seconds(db_pid) if db_pid else 0.0,
            time.process_time(),
            machine_cpu(),
        )
        start = time.monotonic()
        asyncio.run(crowd(port, keys, start + args.minutes * 60, args.pause, stats))
        elapsed = time.monotonic() - start
        web_cpu = cpu_seconds(server.pid) - web0
        db_cpu = (cpu_seconds(db_pid) - db0) if db_pid else float("nan")
        client_cpu = time.process_time() - client0
        cpu1 = machine_cpu()
        stop.set()
        watcher.join()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    if stats.errors and log.exists():
        print(f"gunicorn's log, last lines:\n{log.read_text()[-3000:]}")
    try:
        check = run_child(env, "--child-check", str(stats.acknowledged))
    finally:
        owner_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)

    tick = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    busy = (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1)
    machine_s = (cpu1[0] - cpu0[0]) / tick
    others = machine_s - web_cpu - (db_cpu if db_cpu == db_cpu else 0) - client_cpu
    requests = len(stats.next_ms) + len(stats.submit_ms)
    mean_in_flight = sum(stats.in_flight_samples) / max(len(stats.in_flight_samples), 1)
    p95 = percentile(stats.next_ms, 95)
    reconciled = check["acknowledged"] == check["stored"] == check["revisions"] == check["submitted_leases"]
    violations = check["items_over_k"] + check["annotations_over_k"] + check["duplicate_leases"]
    threads = int(argv[argv.index("-w") + 1]) * int(argv[argv.index("--threads") + 1])

    print()
    print(f"Summary (load average now: {'/'.join(f'{x:.1f}' for x in os.getloadavg())})")
    print(
        f"  {stats.acknowledged} annotations in {elapsed:.0f} s = {stats.acknowledged / elapsed:.1f}/s "
        f"(offered {len(keys) / args.pause:.0f}/s); next p50/p95/p99 "
        f"{'/'.join(f'{percentile(stats.next_ms, p):.0f}' for p in (50, 95, 99))} ms (aim p95 <= 100), submit "
        f"p50/p95/p99 {'/'.join(f'{percentile(stats.submit_ms, p):.0f}' for p in (50, 95, 99))} ms"
    )
    print(f"  errors: {len(stats.errors)}")
    kinds: dict[str, int] = {}
    for text in stats.errors:
        kinds[text[:160]] = kinds.get(text[:160], 0) + 1
    for text, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    {count} x {text}")
    print(
        f"  reconciliation {'exact' if reconciled else 'BROKEN'}: acknowledged={check['acknowledged']}, "
        f"stored={check['stored']}, revisions={check['revisions']}, submitted leases={check['submitted_leases']}; "
        f"overlap cap {'held' if violations == 0 else 'BROKEN'}"
    )
    print(
        f"  CPU: the machine's {cores} cores {100 * busy:.0f}% busy; per annotation: web "
        f"{1000 * web_cpu / max(stats.acknowledged, 1):.0f} ms, "
        f"the PostgreSQL server (all its databases) {1000 * db_cpu / max(stats.acknowledged, 1):.0f} ms, "
        f"this client {1000 * client_cpu / max(stats.acknowledged, 1):.1f} ms; of the run's CPU time: web "
        f"{web_cpu:.0f} s, PostgreSQL {db_cpu:.0f} s, client {client_cpu:.0f} s, other processes {others:.0f} s"
    )
    print(
        f"  gunicorn: {threads} threads; requests in flight at the client: mean {mean_in_flight:.1f}, max "
        f"{max(stats.in_flight_samples, default=0)}; {requests / elapsed:.0f} requests/s"
    )
    print(
        f"  PostgreSQL connections to the database: max {max(connections, default=0)} "
        f"of max_connections {max_connections}"
    )
    if p95 <= 100:
        print(f"  next p95 {p95:.0f} ms: aim met")
    else:
        limits = []
        web_needed = (web_cpu / max(stats.acknowledged, 1)) * len(keys) / args.pause
        if busy > 0.9:
            limits.append(
                f"CPU: the cores were {100 * busy:.0f}% busy; the offered rate needs about {web_needed:.1f} cores for "
                f"the web alone at {1000 * web_cpu / max(stats.acknowledged, 1):.0f} ms per annotation, and there are "
                f"{cores} (shared with {others:.0f} s of other processes' CPU)"
            )
        if mean_in_flight > threads:
            limits.append(
                f"gunicorn threads: {mean_in_flight:.0f} requests in flight on average for {threads} threads, so "
                f"requests queue for a thread{' (the threads wait on CPU, not the database)' if busy > 0.9 else ''}"
            )
        if max(connections, default=0) >= 0.9 * max_connections:
            limits.append(f"PostgreSQL connections: {max(connections)} of {max_connections}")
        print(
            f"  next p95 {p95:.0f} ms misses the 100 ms aim; what limits it: "
            + ("; ".join(limits) or "nothing measured here saturated")
        )
    return 0 if not stats.errors and reconciled and violations == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
