"""Where a run's wall time goes: named phases, and how long this process has existed.

    >>> p = Phases()
    >>> with p.phase("probe"):
    ...     pass
    >>> list(p.to_json())
    ['probe']
    >>> process_age() > 0
    True
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator


class Phases:
    """Seconds per named phase, in the order they ran (a repeated name adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


def process_age() -> float:
    """Seconds since this process started (interpreter start-up and imports included)."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0
