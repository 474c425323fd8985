"""The guest's serial console log: failure detection and tails for error messages.

    >>> c = Console(Path("/nonexistent"))
    >>> c.failure() is None
    True
    >>> classify("[   64.1] nvme 0000:03:00.0: probe with driver nvme failed with error -4")
    ConsoleFailure(kind='driver-probe', line='[   64.1] nvme 0000:03:00.0: probe with driver nvme failed with error -4')
    >>> classify("[    1.8] Oops: int3: 0000 [#1] SMP NOPTI\\n[    1.9] Kernel panic - not syncing").kind
    'int3'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Lines that mean the boot has failed for good, not "keep waiting".
FATAL = re.compile(r"Kernel panic - not syncing|end Kernel panic|BUG: kernel NULL pointer|"
                   r"Oops: |Unable to mount root fs|switch_root: |testbed-initramfs: FATAL")
# An int3 trap the kernel did not place: on an x86 guest under multi-threaded TCG, a vCPU
# now and then still executes the int3 of a text-poke batch another vCPU has finished
# (seen once in ~200 boots, early in boot, on a loaded 2-core host). Not the kernel under
# test: the caller boots the guest once more (see launch.Stalled).
INT3 = re.compile(r"Oops: int3\b")
# The NVMe driver gave up on a controller: the topology's devices will not all be there
# (seen with amd-iommu in strict mode on a QEMU without dma-remap).
PROBE_FAILED = re.compile(r"probe with driver nvme failed|nvme\S* \S+: Identify Controller "
                          r"failed")


@dataclass(frozen=True)
class ConsoleFailure:
    kind: str  # "int3" (see INT3), "fatal" (panic, oops, no root) or "driver-probe"
    line: str


def classify(text: str) -> ConsoleFailure | None:
    """The first failure line in ``text``, fatal ones first."""
    for kind, rx in (("int3", INT3), ("fatal", FATAL), ("driver-probe", PROBE_FAILED)):
        m = rx.search(text)
        if m:
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.end())
            return ConsoleFailure(kind, text[start:end if end >= 0 else None].strip())
    return None


class Console:
    def __init__(self, path: Path):
        self.path = Path(path)

    def text(self) -> str:
        try:
            return self.path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        out = [ln.rstrip("\r") for ln in self.text().splitlines()]
        return "\n".join(out[-lines:])

    def failure(self) -> ConsoleFailure | None:
        """The first fatal line (panic, oops, no root fs), or a driver's failed probe."""
        return classify(self.text())
