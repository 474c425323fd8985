"""Signals that end the orchestrator unwind through every ``finally``, so QEMU is shut
down and run directories are removed on SIGTERM and SIGHUP as on a normal exit."""

from __future__ import annotations

import signal
from types import FrameType


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit so every ``finally`` cleans up."""
    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_IGN)  # one cleanup, not two
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
