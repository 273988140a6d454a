"""The measured window of one load process, kept the same way by both
drivers (driver.py's native one, tls.py's): time slices of SLICE seconds,
between which progress and per-slice rate samples are taken.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from . import cpu

SLICE = 0.1


class Window:
    """The measured window of one process: its edges (reported to
    `on_window`, where the server's CPU is sampled), this process's CPU over
    it, and the requests/s of each slice. Both drivers keep it the same way."""

    def __init__(self, duration: float, on_window: Callable[[str], None] | None) -> None:
        self._on_window = on_window
        if on_window:
            on_window("before")
        self.t0 = self._last_t = time.monotonic_ns()
        self.end = self.t0 + round(duration * 1e9)
        self._cpu0 = cpu.process_ns(os.getpid())
        self._last = 0
        self.samples: list[float] = []

    def sample(self, responses: int) -> None:
        t = time.monotonic_ns()
        if t > self._last_t:
            self.samples.append((responses - self._last) * 1e9 / (t - self._last_t))
        self._last, self._last_t = responses, t

    def close(self) -> dict[str, Any]:
        elapsed = time.monotonic_ns() - self.t0
        cpu_used = cpu.process_ns(os.getpid()) - self._cpu0
        if self._on_window:
            self._on_window("after")
        return {"elapsed_ns": elapsed, "cpu_ns": cpu_used, "samples": self.samples}
