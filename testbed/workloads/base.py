"""What every workload shares: the context it runs in and the record it returns.

A :class:`Record` is one judged (or informational) result; ``testbed run``
writes them to results.json unchanged and the pytest plugin returns them from
``guest.workload(...)``.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..errors import WorkloadError

GUEST_TOOL = "/usr/local/bin/p2pdma-guest"
DEFAULT_TIMEOUT = 120.0

# dmesg lines worth pulling out of a workload's delta
FAULT_PATTERNS = {
    "iommu-fault": re.compile(r"DMAR: \[DMA (Read|Write)|PTE (Read|Write) access is not set|"
                              r"virtio_iommu.*(page )?fault|AMD-Vi: Event logged \[IO_PAGE_FAULT|"
                              r"iommu.*(fault|Unhandled)", re.I),
    "rejected": re.compile(r"cannot be used for peer-to-peer DMA|do not share an upstream "
                           r"bridge or whitelisted host bridge|ACS redirect is set", re.I),
    "oops": re.compile(r"Oops|BUG:|WARNING: CPU|Call Trace|Kernel panic", re.I),
    "p2pdma": re.compile(r"p2pdma|p2pmem|peer-to-peer", re.I),
    "nvme": re.compile(r"nvme.*(timeout|reset|abort|I/O error|Data Transfer Error)", re.I),
}


@dataclass
class Record:
    """One result.  ``predicted``/``observed`` are verdicts when the record is judged."""

    name: str
    provider: str | None = None
    client: str | None = None
    predicted: str | None = None
    reason: str | None = None
    observed: str | None = None
    data_verified: bool | None = None
    mb_per_s: float | None = None
    detail: str = ""
    qemu_limit: bool = False
    seconds: float = 0.0
    dmesg: dict[str, list[str]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    # exec workload
    command: str | None = None
    exit_status: int | None = None
    stdout: str | None = None
    stderr: str | None = None

    @property
    def judged(self) -> bool:
        return self.predicted is not None and self.observed is not None

    @property
    def passed(self) -> bool:
        return not self.judged or self.predicted == self.observed

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None and v != {}}
        d["name"] = self.name
        if self.judged:
            d["passed"] = self.passed
        return d


@dataclass
class Context:
    """Everything a workload may use."""

    guest: Any  # testbed.guest.boot.Guest
    topology: Any
    cpu: Any  # testbed.qemu.probe.CpuInfo
    timeout: float = DEFAULT_TIMEOUT
    size: int = 1 << 20
    seed: int = 1
    execs: list[str] = field(default_factory=list)
    dmesg_log: list[str] = field(default_factory=list)  # every delta, for dmesg.txt
    last_transfer: float = 0.0  # monotonic end of the previous transfer

    def quiet_gap(self) -> None:
        """Under a vIOMMU, let the fault printk ratelimit recover between transfers so
        each transfer's faults are logged (see classify.FAULT_QUIET_SECONDS)."""
        from .classify import FAULT_QUIET_SECONDS
        if self.topology.iommu.model == "none" or not self.last_transfer:
            return
        wait = self.last_transfer + FAULT_QUIET_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def refused_earlier(self, provider: str, client: str) -> bool:
        """Did this boot's dmesg log a refusal for this pair (by BDF)?"""
        from .classify import refusals
        try:
            text = self.guest.dmesg()
        except Exception:
            return False
        names = self.guest.names
        return (names.get(provider), names.get(client)) in refusals(text)

    @property
    def kernel_p2pdma(self) -> bool | None:
        return self.guest.inventory.get("kernel", {}).get("p2pdma")

    def tool(self, args: list[str], timeout: float | None = None):
        """Run the guest tool; returns (parsed JSON or None, CommandResult)."""
        res = self.guest.run(" ".join(shlex.quote(a) for a in [GUEST_TOOL, *args]),
                             timeout=timeout or self.timeout)
        data = None
        if res.stdout.strip():
            try:
                data = json.loads(res.stdout)
            except ValueError:
                data = None
        return data, res

    def dmesg_delta(self) -> str:
        try:
            delta = self.guest.dmesg_delta()
        except Exception as exc:  # a wedged guest must not stop the collection
            delta = f"(dmesg unavailable: {exc})"
        self.dmesg_log.append(delta)
        return delta

    def block_devices(self) -> dict[str, dict]:
        """NVMe serial -> {"block": "nvme1n1", "generic": "ng1n1", "ctrl": "nvme1", "lbs": 512}
        for the first namespace (block names follow the subsystem, not the controller)."""
        script = ("for b in /sys/block/nvme*n1; do [ -e \"$b\" ] || continue; "
                  "echo \"$(basename $b) $(cat $b/device/serial 2>/dev/null || cat "
                  "$b/device/device/serial) $(cat $b/queue/logical_block_size)\"; done")
        res = self.guest.run(script, timeout=30)
        out: dict[str, dict] = {}
        ctrl_by_serial = {c.get("serial"): name for name, c in
                          self.guest.inventory.get("nvme", {}).items()}
        for line in res.stdout.splitlines():
            parts = line.split()
            # nvmeXcYnZ are the hidden per-path devices of native multipath: skip them
            if len(parts) == 3 and re.fullmatch(r"nvme\d+n\d+", parts[0]) and parts[1] not in out:
                out[parts[1]] = {"block": parts[0], "generic": "ng" + parts[0][len("nvme"):],
                                 "ctrl": ctrl_by_serial.get(parts[1]), "lbs": int(parts[2])}
        return out


def pull_dmesg(delta: str) -> dict[str, list[str]]:
    """The interesting lines of a dmesg delta, by category."""
    out: dict[str, list[str]] = {}
    for line in delta.splitlines():
        for cat, rx in FAULT_PATTERNS.items():
            if rx.search(line):
                out.setdefault(cat, []).append(line.strip())
    return {k: v[:50] for k, v in out.items()}


class Workload:
    """Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    judged: ClassVar[bool] = False

    def run(self, ctx: Context) -> list[Record]:  # pragma: no cover - interface
        raise NotImplementedError


def need_bdf(ctx: Context, name: str) -> str:
    bdf = ctx.guest.names.get(name)
    if not bdf:
        raise WorkloadError(f"{name}: not found in the guest (no BDF mapped)")
    return bdf
