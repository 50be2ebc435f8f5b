"""A Celery worker process for benchmarks, started as docker-compose starts it, with its memory readable."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ServedProcesses:
    """A server process (``proc``) whose children do the work, with their memory readable from /proc."""

    proc: subprocess.Popen

    def children(self) -> list[int]:
        import psutil

        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def reset_peaks(self) -> None:
        for pid in self.children():
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def status(self, pid: int, field: str) -> float:
        """A /proc status field of a child in MiB (VmHWM: peak RSS since the last reset; VmRSS: now)."""
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return 0.0

    def peak_mib(self) -> float:
        return max(self.status(pid, "VmHWM") for pid in self.children())

    def cpu_seconds(self) -> tuple[float, float]:
        """User plus system CPU time the child processes have used, and that of the processes they started and
        waited for (from /proc/<pid>/stat)."""
        tick = os.sysconf("SC_CLK_TCK")
        own = helpers = 0
        for pid in self.children():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])  # utime, stime
            helpers += int(fields[13]) + int(fields[14])  # cutime, cstime
        return own / tick, helpers / tick

    def helper_peak_mib(self) -> float:
        """The largest peak RSS among the processes the children have started and that run now (0 if none)."""
        import psutil

        peak = 0.0
        for pid in self.children():
            try:
                for helper in psutil.Process(pid).children(recursive=True):
                    peak = max(peak, self.status(helper.pid, "VmHWM"))
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                continue  # it ended meanwhile
        return peak

    def idle_mib(self) -> float:
        return max(self.status(pid, "VmRSS") for pid in self.children())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Worker(ServedProcesses):
    """``celery -A config worker -Q <queues> -l info --concurrency 2``, logging to a file."""

    def __init__(self, log: Path, *, name: str, queues: str = "default", env: dict | None = None):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-l", "info"]
            + ["--concurrency", "2", "-n", f"{name}-{os.getpid()}@%h"],
            cwd=ROOT,
            env={**os.environ, "GOLDSET_LOG_LEVEL": "INFO", **(env or {})},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"The worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
