"""PostgreSQL restarted under load: gunicorn (kept connections, CONN_HEALTH_CHECKS on) and a real Celery worker
keep serving and working afterwards without restarting themselves; requests while it is down answer 503 with a
retry message and leave nothing half-written; requests after it work.

The server restarted is a private one: a throwaway cluster made with initdb in a temporary folder, on a free
port, set up as production sets one up (`ensure_db_roles`, then migrations as the owner role). The machine's
shared PostgreSQL is never touched. Redis is the test's own redis-server too."""

import contextlib
import glob
import http.client
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.faults.workers import ROOT, PrivateRedis, free_port, kill, wait_for

# PostgreSQL-only like the other fault tests: CI runs it with the rest of the PostgreSQL suite.
pytestmark = [pytest.mark.postgres]

# The suite's own database, broker and role settings stay out of the stack's processes.
SUITE_SETTINGS = ("GOLDSET_", "DATABASE_URL", "OWNER_DATABASE_URL", "TRAINER_DATABASE_URL", "REDIS_URL", "CONN_MAX_AGE")
MESSAGE = "nothing of it was saved. Try again."
PASSWORD = "restart-password-1"
SLUG = "restart"
REVIEWERS = 4
LEASE_RE = re.compile(r'id="queue-current".*?data-lease="(\d+)"', re.S)
CSRF_INPUT_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _pg_bin(name: str) -> str | None:
    """The newest installed server binary (Debian keeps them out of PATH, under /usr/lib/postgresql/<v>/bin)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own. initdb and the server refuse to run as root: as root they run
    as the ``postgres`` system user, in a folder that user owns."""

    def __init__(self):
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="goldset-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *argv: str) -> None:
        out = subprocess.run(argv, user=self.user.pw_uid if self.user else None, capture_output=True, text=True)
        assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}\n{self._log_tail()}"

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-2000:]
        return ""

    def init(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        # "fast": the way a restart goes (systemd, a failover): open transactions are rolled back, clients cut off.
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                user=self.user.pw_uid if self.user else None,
                capture_output=True,
            )
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, role: str = "goldset", password: str = "goldset", db: str = "goldset_restart") -> str:
        return f"postgres://{role}:{password}@127.0.0.1:{self.port}/{db}"


SEED = f"""
from django.contrib.auth import get_user_model
from annotate.models import Item
from annotate.services.projects import project_add_members, project_create, roles_ensure, user_grant_role
roles_ensure()
User = get_user_model()
admin = User.objects.create_superuser("admin", password={PASSWORD!r})
user_grant_role(user=admin, role="admin")
reviewers = [User.objects.create_user(f"reviewer{{i}}", password={PASSWORD!r}) for i in range({REVIEWERS})]
for user in reviewers:
    user_grant_role(user=user, role="reviewer")
project = project_create(name="Restart", slug={SLUG!r}, task_kinds=["gold"], overlap_k=2)
project_add_members(project=project, users=[admin, *reviewers])
Item.objects.bulk_create(
    Item(project=project, kind="gold", prompt=f"Question {{n}}?", content_hash=f"restart-{{n:06d}}", split="train",
         responses=[{{"text": f"Answer {{n}}.", "model": "a"}}])
    for n in range(2000)
)
"""


class Session:
    """A browser-like client with one kept-alive connection, its cookies and CSRF token."""

    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, str] = {}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if isinstance(body, dict):
            body = urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            # The server closed the kept connection: a browser opens a new one and sends again.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        text = response.read().decode()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0]
        return response, text

    def login(self, username: str) -> None:
        _, page = self.request("GET", "/login/")
        token = CSRF_INPUT_RE.search(page).group(1)
        response, _ = self.request(
            "POST", "/login/", {"csrfmiddlewaretoken": token, "username": username, "password": PASSWORD}
        )
        assert response.status == 302 and "sessionid" in self.cookies, f"login of {username}: HTTP {response.status}"

    def hx(self) -> dict:
        return {"HX-Request": "true", "X-CSRFToken": self.cookies["csrftoken"]}

    def upload(self, rows: list[dict]) -> tuple[http.client.HTTPResponse, str]:
        boundary = uuid.uuid4().hex
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        parts = [
            *(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                for k, v in {"mode": "all_or_nothing", "provenance": "human"}.items()
            ),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="rows.jsonl"\r\n'
            "Content-Type: application/x-ndjson\r\n\r\n".encode()
            + data
            + b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
        return self.request(
            "POST",
            f"/projects/{SLUG}/imports/",
            b"".join(parts),
            {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-CSRFToken": self.cookies["csrftoken"]},
        )


def _reviewer_loop(session: Session, stop: threading.Event, log: list) -> None:
    """GET next, then submit it, until told to stop; every answer is logged as
    (sent at, what, status, lease, served or failed cleanly, acknowledged)."""
    while not stop.is_set():
        sent = time.monotonic()
        response, html = session.request("GET", f"/projects/{SLUG}/queue/next/", headers=session.hx())
        log.append((sent, "next", response.status, None, _clean_failure(response, html), False))
        match = LEASE_RE.search(html) if response.status == 200 else None
        if match is None:
            time.sleep(0.1)
            continue
        lease = int(match.group(1))
        sent = time.monotonic()
        response, html = session.request(
            "POST",
            f"/projects/{SLUG}/queue/leases/{lease}/submit/",
            {"action": "write", "answer": f"Answer for lease {lease}.", "duration_ms": "900"},
            session.hx(),
        )
        acknowledged = response.status == 200 and "goldset:submitted" in (response.getheader("HX-Trigger") or "")
        # A 200 without the acknowledgement is no clean answer: the page would not move on.
        clean = acknowledged if response.status == 200 else _clean_failure(response, html)
        log.append((sent, "submit", response.status, lease, clean, acknowledged))
        time.sleep(0.02)


def _work(reviewers: list[Session], seconds: float, during=None) -> list[list]:
    """The reviewers work until ``seconds`` after ``during()`` (if given) returns; each one's log."""
    stop, logs = threading.Event(), [[] for _ in reviewers]
    pairs = zip(reviewers, logs, strict=True)
    threads = [threading.Thread(target=_reviewer_loop, args=(s, stop, log)) for s, log in pairs]
    for thread in threads:
        thread.start()
    try:
        if during is not None:
            during()
        time.sleep(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    return logs


def _served_since(logs: list[list], since: float, when: str) -> None:
    """Every request each reviewer sent after ``since`` was answered 200, and each stored something."""
    for n, log in enumerate(logs):
        after = [entry for entry in log if entry[0] > since]
        assert after and all(entry[2] == 200 and entry[4] for entry in after), f"reviewer{n} {when}: {after[:5]}"
        assert any(entry[5] for entry in after), f"reviewer{n} stored nothing {when}"


def _clean_failure(response, body: str) -> bool:
    """A 200, or the 503 the app gives while its database is gone: Retry-After and the retry message."""
    if response.status == 200:
        return True
    return response.status == 503 and response.getheader("Retry-After") == "2" and body.endswith(MESSAGE)


def _pids(root: int) -> set[int]:
    import psutil

    return {root, *(c.pid for c in psutil.Process(root).children(recursive=True))}


@pytest.fixture
def stack(tmp_path):
    """The private PostgreSQL and Redis, migrated and seeded, with gunicorn and a Celery worker on them."""
    pg = PrivatePostgres()
    if not (pg.initdb and pg.pg_ctl):
        shutil.rmtree(pg.dir, ignore_errors=True)
        pytest.skip("needs PostgreSQL's server binaries (initdb, pg_ctl): apt-get install postgresql")
    redis = PrivateRedis(tmp_path)
    procs: list[subprocess.Popen] = []
    try:
        pg.init()
        pg.start()
        redis.start()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(SUITE_SETTINGS)},
            "DATABASE_URL": pg.url(),
            "REDIS_URL": redis.url,
            "SECRET_KEY": "restart-test-secret",
            "GOLDSET_DEBUG": "0",
            "GOLDSET_HTTPS": "0",
            "GOLDSET_VAR_DIR": str(tmp_path / "var"),
            "GOLDSET_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
            # Every upload goes to the worker, as a big one does.
            "GOLDSET_IMPORT_INLINE_MAX_BYTES": "1",
            # Connections kept for the whole test: the restart must be noticed, not outlived.
            "CONN_MAX_AGE": "600",
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "config.settings",
        }
        (tmp_path / "var" / "staticfiles").mkdir(parents=True)
        manage = [sys.executable, "manage.py"]
        admin_url = f"postgres://postgres@127.0.0.1:{pg.port}/postgres"
        for argv in (
            [*manage, "ensure_db_roles", "--admin-url", admin_url],
            [*manage, "migrate", "--database", "owner", "--noinput"],
            [*manage, "shell", "-c", SEED],
        ):
            out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
            assert out.returncode == 0, f"{' '.join(argv[:3])} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        port = free_port()
        web_log, worker_log = tmp_path / "gunicorn.log", tmp_path / "worker.log"
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2", "--threads", "2"],
            cwd=ROOT,
            env=env,
            stdout=web_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(web)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "-l", "info"]
            + ["--concurrency", "1", "--without-mingle", "--without-gossip"],
            cwd=ROOT,
            env=env,
            stdout=worker_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(worker)

        def up():
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                return conn.getresponse().status == 200
            return False

        wait_for(up, timeout=90, what="gunicorn", log_path=web_log, every=0.2)
        wait_for(lambda: "ready." in worker_log.read_text(), timeout=90, what="the worker", log_path=worker_log)
        yield {"pg": pg, "port": port, "web": web, "worker": worker, "web_log": web_log, "worker_log": worker_log}
    finally:
        for proc in procs:
            kill(proc)
        redis.stop()
        pg.destroy()


def _db(pg: PrivatePostgres, sql: str, params=()) -> list[tuple]:
    import psycopg

    with psycopg.connect(pg.url(), connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def _import_succeeds(stack, admin: Session, rows: list[dict]) -> int:
    response, body = admin.upload(rows)
    assert response.status == 302, f"upload: HTTP {response.status} {body[:300]}"
    batch = int(re.search(r"/imports/(\d+)/", response.getheader("Location")).group(1))
    wait_for(
        lambda: (
            _db(stack["pg"], "SELECT status FROM annotate_importbatch WHERE id = %s", (batch,))[0][0]
            in {"succeeded", "failed"}
        ),
        timeout=120,
        what=f"import batch {batch}",
        log_path=stack["worker_log"],
        every=0.2,
    )
    status, message = _db(stack["pg"], "SELECT status, message FROM annotate_importbatch WHERE id = %s", (batch,))[0]
    assert status == "succeeded", f"import {batch} ended {status}: {message}\n{stack['worker_log'].read_text()[-3000:]}"
    return batch


def test_web_and_worker_keep_working_across_a_postgres_restart_under_load(stack):
    pg, port = stack["pg"], stack["port"]
    admin = Session(port)
    admin.login("admin")
    reviewers = [Session(port) for _ in range(REVIEWERS)]
    for n, session in enumerate(reviewers):
        session.login(f"reviewer{n}")
    # Before: the worker has run an import and holds its connection; every gunicorn thread holds one too.
    _import_succeeds(stack, admin, [{"prompt": f"Before {n}?", "response": "Yes."} for n in range(30)])
    web_pids, worker_pids = _pids(stack["web"].pid), _pids(stack["worker"].pid)
    assert len(web_pids) == 3 and len(worker_pids) == 2  # gunicorn's master and 2 workers; celery's and 1 child

    up_at = 0.0

    def outage():
        nonlocal up_at
        time.sleep(2)
        pg.stop()
        down_at = time.monotonic()
        # While it is down: a page, a fragment, the API and an upload each get the 503 and its message.
        response, body = admin.request("GET", f"/projects/{SLUG}/")
        assert response.status == 503 and response.getheader("Retry-After") == "2" and MESSAGE in body, body[:300]
        assert "Traceback" not in body and 'data-status="503"' in body
        response, body = admin.request("GET", f"/projects/{SLUG}/queue/next/", headers=admin.hx())
        assert response.status == 503 and body.endswith(MESSAGE)
        response, body = admin.request("GET", "/api/v1/projects", headers={"Accept": "application/json"})
        assert response.status == 503 and json.loads(body)["detail"].endswith(MESSAGE)
        response, body = admin.upload([{"prompt": "During the outage?", "response": "No."}])
        assert response.status == 503 and MESSAGE in body
        time.sleep(max(0.0, 2 - (time.monotonic() - down_at)))
        pg.start()
        up_at = time.monotonic()

    # Reviewers work straight through a restart: requests while it is down fail cleanly; every request sent
    # once it accepts connections again is served.
    logs = _work(reviewers, 4, during=outage)
    answers = [entry for log in logs for entry in log]
    unclean = [entry for entry in answers if not entry[4]]
    assert not unclean, f"answers neither 200 nor a clean 503: {unclean[:5]}\n{stack['web_log'].read_text()[-3000:]}"
    assert any(entry[2] == 503 for entry in answers), "no reviewer's request fell into the outage"
    _served_since(logs, up_at, "after the restart")

    # Restarted again while nobody works: every gunicorn thread and the worker now hold a connection the server
    # dropped, and the first request on each is served all the same (CONN_HEALTH_CHECKS replaces it).
    pg.stop()
    pg.start()
    quiet = _work(reviewers, 3)
    _served_since(quiet, 0, "after a restart while idle")
    answers += [entry for log in quiet for entry in log]

    # The worker, still the same process, runs an import uploaded after the restart.
    _import_succeeds(stack, admin, [{"prompt": f"After {n}?", "response": "Yes."} for n in range(30)])
    assert _pids(stack["web"].pid) == web_pids, "gunicorn replaced a worker"
    assert _pids(stack["worker"].pid) == worker_pids, "the Celery worker replaced its process"

    # Nothing half-written: every acknowledged submission is stored once, with its one revision and its lease
    # submitted; a submission answered 503 is not stored (it is stored only once a later retry is acknowledged).
    acknowledged = {entry[3] for entry in answers if entry[5]}
    assert len(acknowledged) == sum(1 for entry in answers if entry[5]), "a lease was acknowledged twice"
    submitted = {
        row[0]
        for row in _db(
            pg,
            "SELECT l.id FROM annotate_lease l JOIN annotate_item i ON i.id = l.item_id JOIN annotate_project p "
            "ON p.id = i.project_id WHERE p.slug = %s AND l.status = 'submitted'",
            (SLUG,),
        )
    }
    assert submitted == acknowledged
    ((stored, revisions, over_k),) = _db(
        pg,
        "SELECT (SELECT count(*) FROM annotate_annotation), (SELECT count(*) FROM annotate_annotationrevision), "
        "(SELECT count(*) FROM (SELECT item_id FROM annotate_lease WHERE status IN ('active', 'submitted') "
        "GROUP BY item_id HAVING count(*) > 2) x)",
    )
    assert stored == revisions == len(acknowledged) and over_k == 0
    assert _db(pg, "SELECT count(*) FROM annotate_item WHERE prompt = 'During the outage?'")[0][0] == 0
    assert _db(pg, "SELECT count(*) FROM annotate_importbatch")[0][0] == 2
