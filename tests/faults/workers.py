"""Real processes for the fault tests: a Celery worker on the default queue, and a private redis-server."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connections

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_default_worker(log_path: Path, *, env: dict | None = None, queues: str = "default") -> subprocess.Popen:
    """A worker process logged in to the test database as the app role, sharing this process's var dir."""
    env = {
        **os.environ,
        "GOLDSET_DB_NAME": connections["default"].settings_dict["NAME"],
        "GOLDSET_VAR_DIR": str(settings.VAR_DIR),
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    log = log_path.open("a")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queues,
            "--pool=solo",
            "-l",
            "info",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate, *, timeout: float, what: str, log_path: Path | None = None, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}.\nWorker log tail:\n{tail}")


class PrivateRedis:
    """A redis-server of the test's own on a free port (never the machine's shared one), that it may stop."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (apt-get install redis-server; .ci/run installs it)"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self.ping, timeout=10, what="the private redis-server")

    def ping(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.proc is not None:
            kill(self.proc, signal.SIGTERM)
            self.proc = None
