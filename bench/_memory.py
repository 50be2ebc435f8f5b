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
