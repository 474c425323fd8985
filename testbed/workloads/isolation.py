"""isolation: the IOMMU groups the guest kernel formed, judged against the oracle's, and an
``isolation-hole`` finding for every pair of devices that reach each other below the
IOMMU but sit in different groups.  No I/O: one inventory (with the kallsyms lookup).

Records (all named ``isolation``):

- one for the groups, with neither provider nor client: predicted is the grouping
  algorithm the kernel should follow (``upstream-walk`` for Linux up to 7.3.4, ``acs-v3``
  for a kernel with the 2025 series; ``no-groups`` without a vIOMMU), observed is the
  algorithm whose groups equal the guest's (``other`` when none does).  It passes when the
  guest formed exactly the predicted groups.  ``data`` holds both partitions, the group
  numbers and domain types, every algorithm's groups and the ACS registers.
- one per (provider, client) pair where the client's DMA reaches the provider's BARs below
  the IOMMU (under a vIOMMU): predicted and observed are ``ok`` (one group) or
  ``isolation-hole`` (two groups).  On 7.3.4 a switch without ACS gives a predicted hole,
  so the record passes and carries the finding (``Record.finding``), like a predicted
  ``iommu-fault`` carries its QEMU limit.
"""

from __future__ import annotations

from ..verdicts.cmdline import kernel_view
from ..verdicts.fabric import complete_names, from_inventory, from_topology, machine_devices
from ..verdicts.grouping import ALGORITHMS, NO_GROUPS, UPSTREAM_WALK
from ..verdicts.isolation import (
    HOLE,
    IsolationPrediction,
    ObservedGroups,
    Reach,
    acs_differences,
    classify,
    differences,
    observe_groups,
    predict_isolation,
    show,
)
from ..guest.protocol import Seen
from ..spec.model import Topology
from .base import Context, Record, Workload

KERNEL_PROBLEM = "kernel grouping problem (not a QEMU limit)"


class Isolation(Workload):
    name = "isolation"
    judged = True
    default = True  # cheap: one inventory, no I/O

    @classmethod
    def missing(cls, topo: Topology) -> str | None:
        return "no vIOMMU (no IOMMU groups to judge)" if topo.iommu.model == "none" else None

    def run(self, ctx: Context) -> list[Record]:
        data, res = ctx.tool(["inventory", "--grouping-symbols"], timeout=120)
        if not data:
            expected = NO_GROUPS if kernel_view(ctx.topology).iommu == "none" else UPSTREAM_WALK
            return [Record(name=self.name, predicted=expected, observed="error",
                           detail=f"the guest tool gave no inventory: {res.describe()[:500]}",
                           seconds=res.seconds)]
        # keep the boot's tracing
        ctx.guest.update(Seen({**ctx.guest.inventory, **data}, ctx.guest.names))
        topo = ctx.topology
        kernel = data.get("kernel", {})
        names = complete_names(topo, data, ctx.guest.names)
        fabric = from_topology(topo, machine_devices(topo, data, names), names)
        pred = predict_isolation(topo, fabric, kernel.get("grouping_symbols"))
        obs = observe_groups(data, names, fabric.probe_order())
        acs_diffs = acs_differences(fabric, from_inventory(data, names))
        records = [self.groups_record(pred, obs, acs_diffs, kernel.get("release"), names)]
        if pred.algorithm != NO_GROUPS:
            records += [self.pair_record(pred, obs, r, names) for r in pred.reach]
        for r in records:
            r.seconds = round(res.seconds, 3)
        return records

    def groups_record(self, pred: IsolationPrediction, obs: ObservedGroups,
                      acs_diffs: list[str], release: str | None,
                      names: dict[str, str]) -> Record:
        observed = classify(obs, pred)
        order = [m for g in obs.groups for m in g]
        if pred.algorithm == NO_GROUPS:
            reason = pred.why
        else:
            reason = (f"{release or 'the kernel'}: {pred.why}, so it groups as "
                      f"{ALGORITHMS[pred.algorithm].title}; with the fabric's ACS that gives "
                      f"{show(pred.groups)} ({pred.domain_type} domains)")
        types = sorted({t or "?" for t in obs.types.values()})
        detail = (f"the guest formed {show(obs.groups)} ({', '.join(types)} domains)"
                  if obs.groups else "the guest has no IOMMU groups")
        diffs = differences(pred.groups, obs.groups)
        if diffs:
            detail += "; differences: " + "; ".join(diffs)
        if acs_diffs:
            detail += "; ACS registers differ from the model: " + "; ".join(acs_diffs)
        holes = pred.holes(obs.groups) if obs.groups else []
        return Record(
            name=self.name, predicted=pred.algorithm, observed=observed, reason=reason,
            detail=detail, data={"algorithm": pred.algorithm, "algorithm_reason": pred.why,
                  "predicted_groups": pred.groups, "observed_groups": obs.groups,
                  "models": pred.models, "group_ids": obs.ids, "group_types": obs.types,
                  "group_members": {gid: [m for m in order if obs.ids.get(m) == gid]
                                    for gid in obs.types},
                  "domain_type": pred.domain_type, "addresses": names,
                  "acs": {d.id: {"cap": d.acs_cap, "ctrl": d.acs_ctrl} for d in pred.fabric
                          if d.acs_cap is not None or d.kind in ("root_port", "downstream")},
                  "acs_differences": acs_diffs,
                  "reach": [[r.target, r.initiator, r.bridge] for r in pred.reach],
                  "holes": [[r.target, r.initiator, r.bridge] for r in holes]})

    def pair_record(self, pred: IsolationPrediction, obs: ObservedGroups, r: Reach,
                    names: dict[str, str]) -> Record:
        predicted = HOLE if pred.hole(r) else "ok"
        observed = HOLE if pred.hole(r, obs.groups) else "ok"
        where = (f"{r.initiator}'s DMA reaches {r.target}'s BARs inside switch {r.switch} "
                 f"without the IOMMU: {r.bridge}, the port it enters {r.switch} through, "
                 f"{r.why}")
        title = ALGORITHMS[pred.algorithm].title
        if predicted == HOLE:
            reason = (f"{where}; {title} puts them in different groups "
                      f"({_group(pred.groups, r.target)} and {_group(pred.groups, r.initiator)})"
                      f": an isolation hole, a {KERNEL_PROBLEM}")
        else:
            reason = f"{where}; {title} puts them in one group {_group(pred.groups, r.target)}"
        t, i = r.target, r.initiator
        detail = (f"{t} ({names.get(t, '?')}) is in {obs.describe(t)}, {i} ({names.get(i, '?')}) "
                  f"in {obs.describe(i)}")
        detail += (f": different groups, yet {r.bridge} ({names.get(r.bridge, '?')}) lets "
                   f"{i} reach {t} peer to peer: an isolation hole, a {KERNEL_PROBLEM}"
                   if observed == HOLE else ": one group, as isolation requires")
        return Record(
            name=self.name, provider=t, client=i, predicted=predicted, observed=observed,
            reason=reason, detail=detail,
            finding=(f"isolation hole: {i} reaches {t} through {r.bridge}, which {r.why}, "
                     f"but they are in {obs.describe(i)} and {obs.describe(t)}: "
                     f"{KERNEL_PROBLEM}"
                     if observed == HOLE else None),
            data={"finding": HOLE if observed == HOLE else None, "bridge": r.bridge,
                  "switch": r.switch, "bridge_acs": r.why,
                  "groups": {t: obs.ids.get(t), i: obs.ids.get(i)},
                  "addresses": {x: names.get(x) for x in (t, i, r.bridge)}})


def _group(groups: list[list[str]], dev: str) -> str:
    g = next((g for g in groups if dev in g), [dev])
    return "{" + ", ".join(g) + "}"
