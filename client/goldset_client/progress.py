"""Progress display: tqdm's (a bar in a terminal, a widget in a notebook) when tqdm is installed, else one
line on stderr rewritten in place; nothing when turned off."""

from __future__ import annotations

import sys
import time
from typing import Any


class _Line:
    def __init__(self, total: float | None, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0.0
        self._shown = 0.0

    def update(self, n: float) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._shown >= 0.5:
            self._shown = now
            self._draw()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def _draw(self) -> None:
        done = f"{self.n:,.0f}" + (f"/{self.total:,.0f}" if self.total else "")
        sys.stderr.write(f"\r{self.desc}: {done} {self.unit}")
        sys.stderr.flush()

    def close(self) -> None:
        self._draw()
        sys.stderr.write("\n")


class _Silent:
    n = 0

    def update(self, n: float) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress(enabled: bool, *, total: float | None = None, desc: str = "", unit: str = "") -> Any:
    """A progress display with ``update(n)``, ``set_description(text)`` and ``close()``."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Line(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=True)
