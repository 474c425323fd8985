"""What a workload (or a test) may use of a guest, booted or attached: small protocols in
labgrid's manner, so a piece of code asks only for what it uses.

- :class:`Commands`: run commands (and the topology, inventory and names they refer to);
- :class:`Files`: copy files in and out;
- :class:`Logs`: the serial console, dmesg;
- :class:`Power`: restart, shut down;
- :class:`Qmp`: QEMU's monitor (``qmp(cmd, **args)``, ``event_wait(...)``): a guest this
  process booted has it, and so does an attached one whose supervisor's QEMU serves a
  second monitor (:class:`testbed.guest.attach.QmpAttachedGuest`); code that needs it
  asks :func:`qmp_of` and says what it cannot do without it.

:class:`GuestLike` is all but QMP: what both :class:`testbed.guest.guest.Guest` (booted
by this process) and :class:`testbed.guest.attach.AttachedGuest` (a detached instance)
offer.

    >>> from testbed.guest.guest import Guest
    >>> from testbed.guest.attach import AttachedGuest
    >>> methods = [m for m in dir(GuestLike) if not m.startswith("_")]
    >>> all(hasattr(cls, m) for cls in (Guest, AttachedGuest) for m in methods)
    True
    >>> [m for m in ("qmp", "event_wait") if hasattr(Guest, m) and not hasattr(AttachedGuest, m)]
    ['qmp', 'event_wait']
    >>> from testbed.guest.attach import QmpAttachedGuest
    >>> all(hasattr(QmpAttachedGuest, m) for m in dir(Qmp) if not m.startswith("_"))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..qemu.accel import Accel
from ..qemu.machine import QmpLike
from ..spec.model import Topology
from ..util.timing import Phases
from .console import Console
from .result import CommandResult


@dataclass(frozen=True)
class Seen:
    """What the guest showed of itself: the guest tool's inventory and the spec-name ->
    BDF map made from it (a boot's tree check, an attach, a restart, a re-inventory)."""

    inventory: dict[str, Any]
    names: dict[str, str]


class Runs(Protocol):
    """Anything that runs a command in the guest (a guest, its SSH connection)."""

    def run(self, command: str | list[str], timeout: float = 60.0,
            stdin: bytes | None = None) -> CommandResult: ...


@runtime_checkable
class Commands(Runs, Protocol):
    topology: Topology
    names: dict[str, str]       # spec device name -> guest PCI address (BDF)
    inventory: dict[str, Any]   # the guest tool's inventory document

    def check(self, command: str | list[str], timeout: float = 60.0,
              stdin: bytes | None = None) -> CommandResult: ...


@runtime_checkable
class Files(Protocol):
    def put(self, local: str | Path, remote: str, mode: int | None = None) -> None: ...

    def get(self, remote: str, local: str | Path) -> None: ...


@runtime_checkable
class Logs(Protocol):
    console: Console

    def dmesg(self) -> str: ...

    def dmesg_delta(self) -> str: ...


@runtime_checkable
class Power(Protocol):
    @property
    def can_restart(self) -> bool: ...

    def restart(self) -> float: ...

    def shutdown(self, graceful: bool = True) -> int | None: ...


Qmp = QmpLike  # QEMU's monitor of the guest's machine: qmp(), event_wait(), clear_events()


@runtime_checkable
class GuestLike(Commands, Files, Logs, Power, Protocol):
    """Every guest: commands, files, logs, power, and what its boot recorded."""

    boot_seconds: float
    accel: Accel
    kernel_description: str | None
    phases: Phases
    run_path: Path

    @property
    def argv(self) -> list[str]: ...

    def update(self, seen: Seen) -> None: ...

    def script(self) -> str | None: ...


def qmp_of(guest: object) -> Qmp | None:
    """The guest's QMP, when this process has one."""
    return guest if isinstance(guest, Qmp) else None
