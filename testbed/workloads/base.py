"""What every workload shares: the context it runs in and the record it returns.

A workload gets a :class:`Context` (the guest, as
:class:`~testbed.guest.protocol.GuestLike`, the topology, the CPU model) and
returns :class:`~testbed.verdicts.record.Record` objects.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..coverage.session import CoverageSession
from ..errors import GuestError, TestbedError, WorkloadError
from ..guest.tool import GUEST_TOOL
from ..guest.protocol import GuestLike
from ..guest.result import CommandResult
from ..qemu.probe import CpuInfo
from ..spec.model import Topology
from ..guest_tool import schema
from ..kernel.resolve import KernelSpec
from ..verdicts.mechanism import JUDGED_MAP_TYPES, judge, observe_mechanism
from ..verdicts.observe import FAULT_PATTERNS, FAULT_QUIET_SECONDS, refusals
from ..verdicts.predict import Prediction, pairs
from ..verdicts.record import Record

DEFAULT_TIMEOUT = 120.0
# what the fault printk ratelimit has been spent on: the fault lines, the DMAR fault
# interrupt's own line, printk's count of what it dropped
RATELIMITED = re.compile(FAULT_PATTERNS["iommu-fault"].pattern +
                         r"|DRHD: handling fault|callbacks suppressed", re.I)


def spends_fault_ratelimit(delta: str) -> bool:
    """A dmesg delta that may have used the IOMMU fault ratelimit (or was not read)."""
    return delta.startswith("(dmesg unavailable") or RATELIMITED.search(delta) is not None


@dataclass(frozen=True)
class WorkloadOptions:
    """What a run tells its workloads (a run's own options are these and more:
    :class:`testbed.run.runner.RunOptions` is one, handed to the Context as it is)."""

    size: int = 1 << 20
    seed: int = 1
    timeout: float = DEFAULT_TIMEOUT
    kernel: KernelSpec | None = None  # the kernel under test (None: the image's)
    execs: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()  # (provider, client) to run; empty: every pair
    copy_extra: tuple[str, ...] = ()  # extra args for p2p-copy (tests)
    fio_args: tuple[str, ...] = ()  # --fio-arg: fio options or a job file in the guest
    inject: tuple[str, ...] = ()  # self-checks: "corrupt" (fio, mixed-iovec), "warning"


INJECTIONS = ("corrupt", "warning")


class GuestHung(GuestError):
    """A guest command did not come back within its bound (the thing it ran had a bound of
    its own inside the guest, plus a margin): the guest is wedged, e.g. a task stuck in
    the kernel.  ``records`` are the workload's records so far, the last one the error
    naming what hung.  The run stops there and the guest is shut down, never reused."""

    kind = "guest-hung"

    def __init__(self, message: str, records: list[Record]):
        super().__init__(message)
        self.records = records


@dataclass
class Context:
    """Everything a workload may use: the guest, the topology, the CPU model, the run's
    options, and what the workloads of one run share (dmesg deltas, the tracing)."""

    guest: GuestLike
    topology: Topology
    cpu: CpuInfo
    options: WorkloadOptions = WorkloadOptions()
    dmesg_log: list[str] = field(default_factory=list)  # every delta, for dmesg.txt
    last_transfer: float = 0.0  # monotonic end of the previous transfer
    quiet_mark: int = 0  # dmesg_log entries the last quiet_gap looked at
    # the kernel's own tracing of its P2P decisions (see observe_mechanism below)
    observing: bool = False
    observe_why: str = "tracing was not set up for this run"
    tracing: dict[str, Any] = field(default_factory=dict)  # what `trace setup` reported
    coverage: CoverageSession | None = None  # --coverage: counts survive a restart
    workload: str = ""  # the workload running now
    hung: GuestHung | None = None  # set by the runner: the guest is wedged, the run stopped

    def restart_guest(self) -> float:
        """Restart the guest (``guest.restart()``) without losing the coverage counted so
        far; returns the boot seconds."""
        if self.coverage is not None:
            self.coverage.suspend(self.workload)
        seconds = self.guest.restart()
        if self.coverage is not None:
            self.coverage.resume()
        return seconds

    @property
    def kernel(self) -> KernelSpec | None:
        return self.options.kernel

    @property
    def size(self) -> int:
        return self.options.size

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return self.options.pairs

    @property
    def execs(self) -> tuple[str, ...]:
        return self.options.execs

    @property
    def fio_args(self) -> tuple[str, ...]:
        return self.options.fio_args

    @property
    def inject(self) -> tuple[str, ...]:
        return self.options.inject

    def start_observing(self) -> None:
        """Set up the guest kernel's P2P tracing once (about a second under TCG)."""
        if self.observing or self.tracing:
            return
        done = self.guest.inventory.get("tracing")  # set up with the boot's inventory
        if isinstance(done, dict):
            self.tracing = done
        else:
            data, res = self.tool(["trace", "setup"], timeout=60)
            self.tracing = data or {"ok": False, "problems": [res.describe()[:500]]}
        self.observing = bool(self.tracing.get("ok"))
        if not self.observing:
            self.observe_why = "; ".join(self.tracing.get("problems") or []) or \
                "the kernel's P2P functions cannot be traced"

    def observe_flags(self) -> list[str]:
        """Extra guest tool arguments for a transfer whose mechanism is to be observed."""
        return ["--observe"] if self.observing else []

    def judge_mechanism(self, rec: Record, pred: Prediction, data: dict[str, Any] | None
                        ) -> None:
        """Fill in the record's predicted and observed mechanism (see verdicts.mechanism)."""
        rec.predicted_map_type = pred.map_type if pred.map_type in JUDGED_MAP_TYPES else None
        if rec.predicted_map_type is None:
            return
        if not self.observing:
            rec.mechanism = {"unobserved": self.observe_why}
            return
        names = self.guest.names
        obs = observe_mechanism((data or {}).get(schema.MECHANISM),
                                names.get(rec.provider or ""), names.get(rec.client or ""))
        rec.observed_map_type = obs.map_type
        rec.mechanism = obs.to_json()
        if obs.why:
            rec.mechanism["unobserved"] = obs.why
        rec.mechanism_problem = judge(obs, rec.predicted_map_type, pred.translating)

    def quiet_gap(self) -> None:
        """Under a vIOMMU, let the fault printk ratelimit recover between transfers so
        each transfer's faults are logged (see observe.FAULT_QUIET_SECONDS): wait only when
        the kernel logged something that spends the ratelimit (an IOMMU fault line, a
        "callbacks suppressed" line) since the last wait, or when a delta could not be read.
        A transfer that logged no fault left the ratelimit as it found it."""
        logged, self.quiet_mark = self.dmesg_log[self.quiet_mark:], len(self.dmesg_log)
        if self.topology.iommu.model == "none" or not self.last_transfer:
            return
        if not any(spends_fault_ratelimit(delta) for delta in logged):
            return
        wait = self.last_transfer + FAULT_QUIET_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def refused_earlier(self, provider: str, client: str) -> bool:
        """Did this boot's dmesg log a refusal for this pair (by BDF)?"""
        try:
            text = self.guest.dmesg()
        except TestbedError:
            return False
        names = self.guest.names
        return (names.get(provider), names.get(client)) in refusals(text)

    @property
    def kernel_p2pdma(self) -> bool | None:
        return self.guest.inventory.get("kernel", {}).get("p2pdma")

    def tool(self, args: list[str], timeout: float | None = None
             ) -> tuple[dict[str, Any] | None, CommandResult]:
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
        except (TestbedError, OSError) as exc:  # a wedged guest must not stop the collection
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


class Workload:
    """Subclasses set ``name`` and the facts below, and implement :meth:`run`.

    What a workload is lives on its class: whether its records are judged, whether they
    carry the kernel's P2P mechanism (``observed``: the run sets up the kernel's tracing
    before it), whether it is in the default set, what a topology must have for it
    (:meth:`missing`), and whether naming it for a topology that lacks that is bad input
    (``insists``) or merely runs nothing."""

    name: ClassVar[str] = ""
    judged: ClassVar[bool] = False
    observed: ClassVar[bool] = False  # records carry the mechanism: tracing is set up first
    default: ClassVar[bool] = False  # in the default set (when the topology has its things)
    insists: ClassVar[bool] = False  # -w NAME on a topology without its things: bad input
    # it drives QEMU's monitor (QMP): only a guest whose QMP this process can reach
    needs_qmp: ClassVar[bool] = False

    @classmethod
    def missing(cls, topo: Topology) -> str | None:
        """What ``topo`` lacks for this workload ("no NVMe with a PMR"); None: nothing."""
        return None

    def run(self, ctx: Context) -> list[Record]:  # pragma: no cover - interface
        raise NotImplementedError


class PairWorkload(Workload):
    """A workload over (provider, client) pairs: the topology needs one."""

    @classmethod
    def missing(cls, topo: Topology) -> str | None:
        return None if pairs(topo) else ("no (provider, client) pair: it needs an NVMe with a "
                                         "CMB and another NVMe")


__all__ = ["Context", "Record", "Workload", "PairWorkload", "WorkloadOptions", "need_bdf",
           "GUEST_TOOL"]


def need_bdf(ctx: Context, name: str) -> str:
    bdf = ctx.guest.names.get(name)
    if not bdf:
        raise WorkloadError(f"{name}: not found in the guest (no BDF mapped)")
    return bdf
