"""Observed verdicts from what the guest tool reported and what dmesg said.

    >>> observe({"steps": {"p2p_read": {"ok": True}, "p2p_write": {"ok": True}},
    ...          "data_verified": True}, {}, timed_out=False)
    ('ok', 'both directions completed and every block verified')
"""

from __future__ import annotations


def observe(result: dict | None, dmesg: dict[str, list[str]], timed_out: bool,
            kernel_p2pdma: bool | None = True) -> tuple[str, str]:
    """(verdict, detail) for one transfer."""
    if kernel_p2pdma is False:
        return "unsupported", "the guest kernel has no CONFIG_PCI_P2PDMA"
    if timed_out:
        if dmesg.get("iommu-fault"):
            return "iommu-fault", f"timed out after IOMMU faults: {dmesg['iommu-fault'][0]}"
        return "error", "the workload timed out"
    if not result:
        return "error", "the guest tool produced no result"
    if result.get("stage") == "allocate":
        err = str(result.get("error", ""))
        if "no p2pmem" in err:
            return "unsupported", f"no p2pmem provider: {err}"
        return "error", f"p2pmem allocation failed: {err}"
    steps = result.get("steps", {})
    failed = [k for k in ("p2p_read", "p2p_write", "write", "read")
              if k in steps and not steps[k].get("ok")]
    if dmesg.get("rejected"):
        return "rejected", dmesg["rejected"][0]
    if dmesg.get("iommu-fault"):
        return "iommu-fault", dmesg["iommu-fault"][0]
    if failed:
        errs = "; ".join(f"{k}: {steps[k].get('error') or 'failed'}" for k in failed)
        return "error", f"I/O failed without a P2PDMA or IOMMU message: {errs}"
    if result.get("data_verified") is False:
        return "error", (f"data corruption: blocks {result.get('mismatched_blocks', [])[:10]} "
                         "differ from the pattern")
    return "ok", "both directions completed and every block verified"
