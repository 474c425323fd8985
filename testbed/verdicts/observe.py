"""Observed verdicts from what the guest tool reported and what dmesg said.

Facts this encodes (observed on QEMU 10.0 with the 7.x kernel):

- A refused mapping fails the I/O with EINVAL and logs "cannot be used for
  peer-to-peer DMA ... (provider) do not share an upstream bridge ..." against
  the client, but only the first time: the kernel caches its decision per pair,
  so later refusals are silent.  Hence the whole boot's refusal lines are
  searched for this client and provider.
- Under a translating vIOMMU, QEMU completes a faulting DMA *successfully*: the
  I/O returns no error, no NVMe timeout happens, but the data never moved.  The
  verdict comes from the failed data check plus the fault lines (DMAR "PTE ...
  access is not set", virtio_iommu "page fault", AMD-Vi "Event logged
  [IO_PAGE_FAULT ...]", arm-smmu-v3 "event: F_TRANSLATION client: BDF ..."), which
  are rate-limited, so callers space transfers out
  (see :data:`FAULT_QUIET_SECONDS`).
- QEMU 11.1's amd-iommu (dma-remap=on) logs its fault events against device
  0000:00:00.0, domain 0, address 0, whatever device and address faulted: the line
  says a fault happened, not whose (:func:`fault_detail` says so).

    >>> observe({"steps": {"p2p_read": {"ok": True}, "p2p_write": {"ok": True}},
    ...          "data_verified": True}, {}, timed_out=False)
    ('ok', 'both directions completed and every block verified')
"""

from __future__ import annotations

import re
from typing import Any

from ..guest_tool import schema
from .record import Record

# dmesg lines worth pulling out of a workload's delta
FAULT_PATTERNS = {
    "iommu-fault": re.compile(r"DMAR: \[DMA (Read|Write)|PTE (Read|Write) access is not set|"
                              r"virtio_iommu.*(page )?fault|AMD-Vi: Event logged \[IO_PAGE_FAULT|"
                              r"iommu.*(fault|Unhandled)|"
                              # arm64's SMMUv3 driver decodes each event it reads: "event:
                              # F_TRANSLATION client: 0000:04:00.0 sid: 0x400 ... iova: ..."
                              r"arm-smmu-v3 \S+: event: F_\w+ client", re.I),
    "rejected": re.compile(r"cannot be used for peer-to-peer DMA|do not share an upstream "
                           r"bridge or whitelisted host bridge|ACS redirect is set", re.I),
    "oops": re.compile(r"Oops|BUG:|WARNING: CPU|Call Trace|Kernel panic", re.I),
    "p2pdma": re.compile(r"p2pdma|p2pmem|peer-to-peer", re.I),
    "nvme": re.compile(r"nvme.*(timeout|reset|abort|I/O error|Data Transfer Error)", re.I),
}

# Lines that say the kernel itself is in trouble, whatever the workload: any of them in a
# workload's dmesg delta makes its record an ``error`` naming the line.  Case matters
# ("WARNING:" is __warn()'s prefix; "Warning" lines are ordinary driver chatter), and a
# ``traps:`` line is a user process's fault (fio killed by SIGBUS/GP), not the kernel's.
KERNEL_TROUBLE = re.compile(
    r"\bOops\b|\bBUG:|kernel BUG at|\bWARNING:|KASAN|UBSAN:|Kernel panic|"
    r"INFO: task \S+ blocked for more than|Unable to handle kernel|"
    r"list_(?:add|del) corruption|refcount_t: ")
USER_TRAP = re.compile(r"\btraps: \S+\[\d+\]")

FAULT_QUIET_SECONDS = 5.5  # printk ratelimit interval (5 s) plus a margin

REFUSAL = re.compile(r"(?P<client>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]): cannot be used for "
                     r"peer-to-peer DMA as the client and provider \((?P<provider>[0-9a-f:.]+)\)")


def kernel_trouble(delta: str) -> list[str]:
    """The lines of a dmesg delta that show an oops, ``BUG:``, ``WARNING:``, KASAN/UBSAN
    report, panic or hung task, in order (the first one is what a record names).

    >>> kernel_trouble("[ 1.0] nvme nvme1: 2/0/0 default/read/poll queues\\n"
    ...                "[ 2.5] WARNING: CPU: 0 PID: 7 at drivers/pci/p2pdma.c:1 x+0x1/0x2")
    ['[ 2.5] WARNING: CPU: 0 PID: 7 at drivers/pci/p2pdma.c:1 x+0x1/0x2']
    """
    return [line.strip() for line in delta.splitlines()
            if KERNEL_TROUBLE.search(line) and not USER_TRAP.search(line)]


AMD_ANONYMOUS_FAULT = re.compile(r"0000:00:00\.0: AMD-Vi: Event logged \[IO_PAGE_FAULT "
                                 r"domain=0x0+ address=0x0 ")
SUPPRESSED = re.compile(r"callbacks suppressed")


def fault_detail(lines: list[str]) -> str:
    """The fault line a record names: the first real event (not printk's "callbacks
    suppressed"), with a note when it is one of QEMU's anonymous AMD-Vi events.

    >>> fault_detail(["[5.1] amd_iommu_report_page_fault: 9 callbacks suppressed",
    ...               "[5.1] pci 0000:00:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT "
    ...               "domain=0x0000 address=0x0 flags=0x000a]"]).split("] (")[-1]
    "QEMU's amd-iommu names no device or address in its fault events; this transfer's by its timing and the failed data check)"
    """
    line = next((x for x in lines if not SUPPRESSED.search(x)), lines[0])
    if AMD_ANONYMOUS_FAULT.search(line):
        line += (" (QEMU's amd-iommu names no device or address in its fault events; this "
                 "transfer's by its timing and the failed data check)")
    return line


def trouble_verdict(delta_or_lines: str | list[str]) -> tuple[str, str] | None:
    """("error", detail naming the first trouble line) when the kernel logged trouble."""
    lines = (kernel_trouble(delta_or_lines) if isinstance(delta_or_lines, str)
             else delta_or_lines)
    if not lines:
        return None
    more = f" (and {len(lines) - 1} more line(s))" if len(lines) > 1 else ""
    return "error", f"the kernel logged trouble during the workload: {lines[0]}{more}"


BOOT_TROUBLE = "kernel-log"  # the record of trouble the kernel logged before the workloads


def boot_trouble_record(delta: str) -> Record | None:
    """A judged ``error`` record when the kernel logged trouble (an oops, ``BUG:``,
    ``WARNING:``, a KASAN/KFENCE report, a lockdep or DMA-API debug splat, a hung task)
    between its boot and the first workload: no workload's own delta holds those lines,
    yet a kernel that splatted while probing the fabric must not pass.  None when clean.

    >>> boot_trouble_record("[ 0.5] pci 0000:00:01.0: [8086:29c0] type 00") is None
    True
    >>> r = boot_trouble_record("[ 1.0] WARNING: possible circular locking dependency "
    ...                         "detected\\n[ 1.1] BUG: KASAN: slab-out-of-bounds in x+0x1/0x2")
    >>> r.observed, r.predicted, r.detail
    ('error', 'ok', 'the kernel logged trouble before the workloads: [ 1.0] WARNING: possible circular locking dependency detected (and 1 more line(s))')
    """
    lines = kernel_trouble(delta)
    if not lines:
        return None
    more = f" (and {len(lines) - 1} more line(s))" if len(lines) > 1 else ""
    return Record(name=BOOT_TROUBLE, predicted="ok", observed="error",
                  detail=f"the kernel logged trouble before the workloads: {lines[0]}{more}",
                  dmesg={"trouble": lines[:50]})


def refusals(dmesg_text: str) -> set[tuple[str, str]]:
    """(provider BDF, client BDF) pairs the kernel logged as refused."""
    return {(m["provider"], m["client"]) for m in REFUSAL.finditer(dmesg_text)}


def observe(result: dict[str, Any] | None, dmesg: dict[str, list[str]], timed_out: bool,
            kernel_p2pdma: bool | None = True, refused_earlier: bool = False) -> tuple[str, str]:
    """(verdict, detail) for one transfer."""
    if kernel_p2pdma is False:
        return "unsupported", "the guest kernel has no CONFIG_PCI_P2PDMA"
    trouble = trouble_verdict(dmesg.get("trouble", []))
    if trouble:
        return trouble
    if timed_out:
        if dmesg.get("iommu-fault"):
            return "iommu-fault", ("timed out after IOMMU faults: "
                                   f"{fault_detail(dmesg['iommu-fault'])}")
        return "error", "the workload timed out"
    if not result:
        return "error", "the guest tool produced no result"
    if result.get("stage") == schema.STAGE_ALLOCATE:
        err = str(result.get("error", ""))
        if err == schema.NO_P2PMEM:
            return "unsupported", f"no p2pmem provider: {err}"
        return "error", f"p2pmem allocation failed: {err}"
    if result.get("stage"):
        return "error", f"the guest tool failed at {result['stage']}: {result.get('error')}"
    steps = result.get("steps", {})
    failed = [k for k in schema.TRANSFER_STEPS
              if k in steps and not steps[k].get("ok") and not steps[k].get("skipped")]
    errnos = {steps[k].get("errno") for k in failed}
    if dmesg.get("rejected"):
        return "rejected", dmesg["rejected"][0]
    if failed and refused_earlier and errnos <= {22}:
        return "rejected", ("EINVAL; the kernel refused this pair earlier in this boot and "
                            "caches the decision, so it logged nothing new")
    if dmesg.get("iommu-fault") and (failed or result.get("data_verified") is False):
        return "iommu-fault", fault_detail(dmesg["iommu-fault"])
    if failed:
        errs = "; ".join(f"{k}: {steps[k].get('error') or 'failed'}" for k in failed)
        return "error", f"I/O failed without a P2PDMA or IOMMU message: {errs}"
    if result.get("data_verified") is False:
        return "error", (f"data corruption: blocks {result.get('mismatched_blocks', [])[:10]} "
                         "differ from the pattern, with no IOMMU fault logged")
    return "ok", "both directions completed and every block verified"


def pull_dmesg(delta: str) -> dict[str, list[str]]:
    """The interesting lines of a dmesg delta, by category."""
    out: dict[str, list[str]] = {}
    for line in delta.splitlines():
        for cat, rx in FAULT_PATTERNS.items():
            if rx.search(line):
                out.setdefault(cat, []).append(line.strip())
    trouble = kernel_trouble(delta)
    if trouble:
        out["trouble"] = trouble
    return {k: v[:50] for k, v in out.items()}
