"""Peak resident memory of this process while a block runs, sampled from a thread."""

import threading
import time

import psutil


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.peak_mib`` (peak RSS) and ``m.delta_mib`` (peak above the start)."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self._proc = psutil.Process()

    def __enter__(self):
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def run_watched(argv: list[str], *, env: dict, cwd=None) -> dict:
    """Run a command to its end: seconds, its own peak RSS and CPU seconds, exit code, stdout, stderr.

    The peak is the process's VmHWM, read every few milliseconds while it runs: the ru_maxrss that
    wait4 reports for a child starts from the parent's RSS at fork (Linux keeps the larger of the
    two across exec), so a benchmark that has grown would inflate every command it runs."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err)
        peak_kib = 0
        while True:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                pass
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "seconds": seconds,
            "peak_mib": peak_kib / 1024,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "returncode": proc.returncode,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }
