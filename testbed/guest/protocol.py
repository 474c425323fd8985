"""What a workload (or a test) may use of a guest, booted or attached.

Both :class:`testbed.guest.guest.Guest` (booted by this process) and
:class:`testbed.guest.attach.AttachedGuest` (a detached instance) implement it.

    >>> from testbed.guest.guest import Guest
    >>> from testbed.guest.attach import AttachedGuest
    >>> methods = [m for m in dir(GuestLike) if not m.startswith("_")]
    >>> all(hasattr(cls, m) for cls in (Guest, AttachedGuest) for m in methods)
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..qemu.accel import Accel
from ..qemu.machine import QemuMachine
from ..spec.model import Topology
from ..util.timing import Phases
from .console import Console
from .result import CommandResult


@runtime_checkable
class GuestLike(Protocol):
    topology: Topology
    names: dict[str, str]       # spec device name -> guest PCI address (BDF)
    inventory: dict[str, Any]   # the guest tool's inventory document
    console: Console
    boot_seconds: float
    accel: Accel
    kernel_description: str | None
    argv: list[str]
    phases: Phases

    @property
    def can_restart(self) -> bool: ...

    @property
    def qemu(self) -> QemuMachine | None: ...

    def run(self, command: str | list[str], timeout: float = 60.0,
            stdin: bytes | None = None) -> CommandResult: ...

    def check(self, command: str | list[str], timeout: float = 60.0,
              stdin: bytes | None = None) -> CommandResult: ...

    def put(self, local: str | Path, remote: str, mode: int | None = None) -> None: ...

    def get(self, remote: str, local: str | Path) -> None: ...

    def dmesg(self) -> str: ...

    def dmesg_delta(self) -> str: ...

    def restart(self) -> float: ...

    def script(self) -> str | None: ...

    def shutdown(self, graceful: bool = True) -> int | None: ...
