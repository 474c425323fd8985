"""The ``vfio-p2p`` family: P2P DMA to another device's BAR from a device assigned to
userspace, through VFIO type1 and iommufd (see :mod:`testbed.verdicts.vfio`).

Per (provider, client) pair the guest tool hands both functions to vfio-pci, drives the
client with its userspace NVMe driver and puts the provider's CMB into the client's IO
address space one way per method; each method is a judged record named after it:

- ``vfio-type1``   VFIO_IOMMU_MAP_DMA of the BAR's mmap (the legacy path);
- ``vfio-pfnmap``  IOMMU_IOAS_MAP of that mmap: iommufd must refuse it (EFAULT);
- ``vfio-dmabuf``  the BAR exported as a dma-buf and mapped with IOMMU_IOAS_MAP_FILE;
- ``vfio-p2p``     all of them (one hand-over per pair), then the revocations
                   (:mod:`.vfiorevoke`).

The devices go back to nvme after each pair, and the host asks the guest to give back
anything still bound (``vfio-restore``) when a call failed or timed out.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..guest_tool import schema
from ..verdicts.fabric import complete_names, from_topology, machine_devices
from ..verdicts.isolation import predict_isolation
from ..verdicts.vfio import (
    METHODS,
    GroupView,
    VfioKernel,
    VfioPrediction,
    predict_vfio,
    record_name,
)
from ..verdicts.vfio_observe import observe_method, observe_mechanism
from .base import Context, Record, Workload
from .judged import error_record, selected_pairs, tool_step

TIMEOUT = 240.0  # one pair, every method: bind, transfers, restore (TCG)
RESTORE_TIMEOUT = 120.0
MAX_SIZE = 1 << 20  # the CMB is written and read through MMIO by the CPU: keep it small
OFFSET = 64 << 20
BRIDGES = ("root_port", "upstream", "downstream", "pci")


def group_view(ctx: Context, pair: tuple[str, str]) -> GroupView:
    """The oracle's IOMMU groups of the pair's devices and what in them is foreign."""
    topo = ctx.topology
    inv = ctx.guest.inventory
    names = complete_names(topo, inv, ctx.guest.names)
    fabric = from_topology(topo, machine_devices(topo, inv, names), names)
    iso = predict_isolation(topo, fabric, (inv.get("kernel") or {}).get("grouping_symbols"))
    own = {n.name for n in topo.nvmes()}
    groups, foreign = {}, {}
    for dev in pair:
        i = iso.group_of(dev)
        members = tuple(iso.groups[i]) if i is not None else ()
        groups[dev] = members
        foreign[dev] = tuple(m for m in members if m not in own and m in fabric.d
                             and fabric.d[m].kind not in BRIDGES)
    return GroupView(groups, foreign)


def restore(ctx: Context) -> dict[str, Any]:
    """The safety net: whatever the tool left bound to vfio-pci goes back."""
    data, res = ctx.tool(["vfio-restore"], timeout=RESTORE_TIMEOUT)
    return data or {"problems": [f"vfio-restore: {res.describe()[:300]}"]}


class VfioWorkload(Workload):
    """Runs ``methods`` per pair in one hand-over of the two functions."""

    judged = True
    observed = True
    methods: ClassVar[tuple[str, ...]] = METHODS

    def __init__(self) -> None:
        self.kernel: VfioKernel | None = None
        self.probe_problem = ""

    def probe(self, ctx: Context) -> VfioKernel:
        if self.kernel is None:
            data, res = ctx.tool(["vfio-p2p", "--probe"], timeout=60)
            if not data:
                self.probe_problem = f"vfio-p2p --probe: {res.describe()[:300]}"
            self.kernel = VfioKernel.from_probe((data or {}).get("kernel") or {})
        return self.kernel

    def run(self, ctx: Context) -> list[Record]:
        ctx.start_observing()
        kernel = self.probe(ctx)
        records: list[Record] = []
        for provider, client in selected_pairs(ctx):
            records += self.pair(ctx, kernel, provider, client)
        return records

    def pair(self, ctx: Context, kernel: VfioKernel, provider: str, client: str
             ) -> list[Record]:
        groups = group_view(ctx, (provider, client))
        preds = {m: predict_vfio(ctx.topology, provider, client, m, kernel, groups)
                 for m in self.methods}
        records = {m: Record(name=record_name(m), provider=provider, client=client,
                             predicted=p.verdict, reason=p.reason, qemu_limit=p.qemu_limit)
                   for m, p in preds.items()}
        pbdf, cbdf = ctx.guest.names.get(provider), ctx.guest.names.get(client)
        if not pbdf or not cbdf:
            missing = provider if not pbdf else client
            return [error_record(r, f"{missing}: not found in the guest")
                    for r in records.values()]
        if self.probe_problem:
            return [error_record(r, self.probe_problem) for r in records.values()]
        args = ["vfio-p2p", "--provider", pbdf, "--client", cbdf,
                "--size", str(min(ctx.size, MAX_SIZE)), "--offset", str(OFFSET),
                "--seed", str(ctx.seed)]
        for m in self.methods:
            args += ["--method", m]
        if ctx.observing:
            args.append("--observe")
        if any(p.unsafe_interrupts for p in preds.values()):
            args.append("--allow-unsafe-interrupts")
        nothing = all(p.verdict == "unsupported" for p in preds.values())
        step = tool_step(ctx, args, timeout=TIMEOUT, quiet=not nothing)
        doc = step.data or {}
        back = doc.get("restore") or {}
        if step.result.timed_out or not step.data or back.get("problems"):
            back = {"by_tool": back, "safety_net": restore(ctx)}
        out = []
        for m, rec in records.items():
            mdoc = (doc.get(schema.METHODS) or {}).get(m)
            self.judge(ctx, rec, preds[m], mdoc, step.dmesg, step.result.timed_out, pbdf)
            rec.seconds = round(step.result.seconds, 3)
            rec.data = {"method": m, **{k: v for k, v in (mdoc or {}).items()
                                        if k != schema.MECHANISM},
                        "seed_write": doc.get("seed"), "restore": back}
            if not step.data:
                rec.data["stdout"] = step.result.stdout[-500:]
                rec.data["stderr"] = step.result.stderr[-500:]
            out.append(rec)
        problems = (back.get("safety_net") or back).get("problems") or []
        if problems:  # a device not given back is this pair's failure, whatever the verdicts
            for rec in out:
                rec.observed, rec.detail = "error", (f"devices not given back to their "
                                                     f"drivers: {'; '.join(problems)}")
        return out

    def judge(self, ctx: Context, rec: Record, pred: VfioPrediction,
              mdoc: dict[str, Any] | None, dmesg: dict[str, list[str]], timed_out: bool,
              provider_bdf: str) -> None:
        rec.observed, rec.detail = observe_method(mdoc, dmesg, timed_out, pred)
        rec.dmesg = dmesg
        rec.data_verified = bool(mdoc and mdoc.get("data_verified")) if \
            pred.map_type == "iommu-mmio" else None
        rates = [v for v in ((mdoc or {}).get("mb_per_s") or {}).values() if v]
        rec.mb_per_s = round(sum(rates) / len(rates), 2) if rates else None
        rec.predicted_map_type = pred.map_type
        if pred.map_type is None:
            return
        observed, mech, problem = observe_mechanism(mdoc, provider_bdf)
        rec.observed_map_type, rec.mechanism, rec.mechanism_problem = observed, mech, problem


class VfioType1(VfioWorkload):
    name = "vfio-type1"
    methods = ("type1",)


class VfioPfnmap(VfioWorkload):
    name = "vfio-pfnmap"
    methods = ("pfnmap",)


class VfioDmabuf(VfioWorkload):
    name = "vfio-dmabuf"
    methods = ("dmabuf",)

