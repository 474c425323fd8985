"""Who a PID is: its start time and command line, so a recorded PID is never signalled
after it has been reused by another process (after a reboot, say).

    >>> import os
    >>> me = identify(os.getpid())
    >>> me is not None and is_same(me)
    True
    >>> is_same(ProcessIdentity(os.getpid(), me.start_ticks + 1, me.cmdline))
    False
"""

from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_ticks: int  # /proc/PID/stat field 22: start time since boot, in clock ticks
    cmdline: str      # /proc/PID/cmdline, NULs as spaces

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "ProcessIdentity | None":
        try:
            return cls(int(data["pid"]), int(data["start_ticks"]), str(data["cmdline"]))
        except (KeyError, TypeError, ValueError):
            return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    return text[text.rfind(")") + 2:].split()


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of a live process, or None (no such process, or a zombie)."""
    if pid <= 0:
        return None
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return None
    return ProcessIdentity(pid, int(fields[19]), cmdline)


def is_same(recorded: ProcessIdentity | None) -> bool:
    """True only if the recorded process is still alive and still the same process."""
    if recorded is None:
        return False
    now = identify(recorded.pid)
    return now is not None and now.start_ticks == recorded.start_ticks and \
        now.cmdline == recorded.cmdline


def signal_if_same(recorded: ProcessIdentity | None, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to the recorded process only if it is still that process."""
    if recorded is None or not is_same(recorded):
        return False
    try:
        os.kill(recorded.pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
