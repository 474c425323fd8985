"""Isolation: which devices can reach each other below the IOMMU, which IOMMU groups the
kernel should form, and where the two disagree.

**Reach** (what the fabric allows, whatever the kernel's groups): endpoint A's memory
request reaches endpoint B's BARs without passing the IOMMU when both sit below one PCIe
switch and the downstream port through which A's request enters the lowest such switch
does not isolate (ACS SV RR CR UF in effect; QEMU's x3130 ports have no ACS capability,
so they never do).  ACS is egress control at that port, so reach can be one-way.  A
request that leaves the switch through its upstream port is taken to reach the IOMMU:
root ports and the root complex are assumed not to route peer to peer past it, as both
kernel algorithms assume.  Endpoints with no common switch never reach each other.

**Groups**: :mod:`.grouping`, the algorithm the kernel in use follows (told from its
kallsyms).  VFIO hands out whole groups, so two devices that reach each other must be in
one group.  An **isolation hole** is a pair that reaches but sits in two groups: a kernel
grouping problem, not a QEMU limit.  (The opposite, one group without reach, is merely
coarse, not a hole: Linux 7.3.4 puts a root port without ACS in one group with its
subtree.)

    >>> from testbed.spec import load_topology
    >>> from testbed.verdicts.fabric import from_topology
    >>> topo = load_topology("switch-cmb-intel-iommu")
    >>> p = predict_isolation(topo, from_topology(topo), symbols=None)
    >>> [(r.target, r.initiator, r.bridge, p.hole(r)) for r in p.reach]
    [('nvme0', 'nvme1', 'sw0-dp1', True), ('nvme1', 'nvme0', 'sw0-dp0', True)]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..spec.model import Topology
from .acs import flag_names
from .cmdline import kernel_view
from .fabric import Fabric
from .grouping import ALGORITHMS, NO_GROUPS, OTHER, Partition, canonical, expected_algorithm

HOLE = "isolation-hole"  # the verdict of a pair that reaches but sits in two groups


@dataclass(frozen=True)
class Reach:
    """``initiator``'s DMA reaches ``target``'s BARs inside ``switch`` without the IOMMU,
    because ``bridge``, the port it enters the switch through, does not isolate."""

    target: str
    initiator: str
    bridge: str
    switch: str
    why: str  # what the bridge lacks


def reach(fab: Fabric, initiator: str, target: str) -> Reach | None:
    up = fab.upstream(initiator)
    x: str | None = target
    while x is not None and x not in up:
        x = fab.d[x].parent
    if x is None or fab.d[x].kind != "upstream" or up.index(x) == 0:
        return None  # no common switch: only the root complex joins them
    ingress = fab.d[up[up.index(x) - 1]]
    if ingress.isolates:
        return None
    why = ("has no ACS capability" if ingress.acs_cap is None else
           f"has ACS control {flag_names(ingress.acs_ctrl)}, not SV RR CR UF")
    return Reach(target, initiator, ingress.id, x, why)


def reach_pairs(fab: Fabric) -> list[Reach]:
    """Every (target, initiator) pair of endpoints that reach, in tree order."""
    out = []
    for a, b in itertools.permutations(fab.endpoints, 2):
        r = reach(fab, b, a)
        if r is not None:
            out.append(r)
    return out


@dataclass
class IsolationPrediction:
    """What the oracle expects on one machine."""

    algorithm: str            # the grouping algorithm the kernel follows, or NO_GROUPS
    why: str                  # how that was decided
    groups: Partition         # the groups that algorithm forms (no IOMMU: none)
    models: dict[str, Partition]  # every algorithm's groups, to name what was observed
    reach: list[Reach]
    fabric: Fabric = field(repr=False)
    domain_type: str | None = None  # the groups' default domain: DMA, DMA-FQ, identity

    def group_of(self, dev: str, groups: Partition | None = None) -> int | None:
        for i, g in enumerate(self.groups if groups is None else groups):
            if dev in g:
                return i
        return None

    def hole(self, r: Reach, groups: Partition | None = None) -> bool:
        a, b = self.group_of(r.target, groups), self.group_of(r.initiator, groups)
        return a is None or a != b

    def holes(self, groups: Partition | None = None) -> list[Reach]:
        return [r for r in self.reach if self.hole(r, groups)]


def domain_type(topo: Topology, cmdline: Sequence[str] = ()) -> str | None:
    """The default domain type of the groups (None: no IOMMU driver runs): identity in
    passthrough, else DMA with ``iommu.strict=1`` and DMA-FQ (x86's lazy default)
    without.  ``cmdline``: words after the topology's (the guest's own command line)."""
    view = kernel_view(topo, tuple(cmdline))
    if view.iommu == "none":
        return None
    if not view.translating:
        return "identity"
    strict = False
    for word in view.words:
        key, _, value = word.partition("=")
        if key == "iommu.strict":
            strict = value.lower() in ("1", "y", "yes", "on")
        elif word == "iommu=strict":  # old spelling, still accepted
            strict = True
    return "DMA" if strict else "DMA-FQ"


def predict_isolation(topo: Topology, fabric: Fabric, symbols: Mapping[str, bool] | None
                      ) -> IsolationPrediction:
    """Reach and groups for ``fabric`` (see :func:`.fabric.from_topology`); ``symbols``:
    the kernel's grouping functions as its kallsyms list them (None: unknown)."""
    pairs = reach_pairs(fabric)
    view = kernel_view(topo)
    if view.iommu == "none":
        why = view.why or "the machine has no vIOMMU"
        return IsolationPrediction(NO_GROUPS, f"{why}, so no IOMMU driver forms groups", [],
                                   {}, pairs, fabric)
    order = fabric.probe_order()
    models = {}
    for alg in ALGORITHMS.values():
        grp = alg.groups(fabric)
        by: dict[int, list[str]] = {}
        for dev, g in grp.items():
            by.setdefault(g, []).append(dev)
        models[alg.id] = canonical(by.values(), order)
    alg_id, why = expected_algorithm(symbols)
    return IsolationPrediction(alg_id, why, models[alg_id], models, pairs, fabric,
                               domain_type(topo))


# -- what the guest showed -------------------------------------------------------------------

@dataclass
class ObservedGroups:
    present: bool                   # /sys/kernel/iommu_groups exists
    groups: Partition               # members named like the prediction's
    ids: dict[str, str]             # member -> group number
    types: dict[str, str | None]    # group number -> default domain type

    def describe(self, dev: str) -> str:
        gid = self.ids.get(dev)
        return "no group" if gid is None else f"group {gid}"


def observe_groups(inventory: Mapping[str, Any], names: Mapping[str, str],
                   order: list[str]) -> ObservedGroups:
    """The guest's groups with spec names for topology nodes, addresses for the rest."""
    by_bdf = {bdf: name for name, bdf in names.items()}
    data = inventory.get("iommu_groups") or {}
    groups, ids, types = [], {}, {}
    for gid, g in (data.get("groups") or {}).items():
        members = [by_bdf.get(b, b) for b in g.get("devices", [])]
        groups.append(members)
        types[gid] = g.get("type")
        ids.update({m: gid for m in members})
    return ObservedGroups(bool(data.get("present")), canonical(groups, order), ids, types)


def classify(observed: ObservedGroups, prediction: IsolationPrediction) -> str:
    """The algorithm whose groups equal the observed ones (the predicted one first),
    NO_GROUPS when the guest has none, else OTHER."""
    if not observed.groups:
        return NO_GROUPS
    for alg in [prediction.algorithm, *prediction.models]:
        if prediction.models.get(alg) == observed.groups:
            return alg
    return OTHER


def differences(predicted: Partition, observed: Partition) -> list[str]:
    """Each group of one side that the other side does not have, as text."""
    def show(g: list[str]) -> str:
        return "{" + ", ".join(g) + "}"

    out = [f"predicted {show(g)}, not observed" for g in predicted if g not in observed]
    out += [f"observed {show(g)}, not predicted" for g in observed if g not in predicted]
    return out


def acs_differences(prediction: Fabric, guest: Fabric) -> list[str]:
    """Devices whose ACS capability or control in the guest differs from the model."""
    out = []
    for d in prediction:
        g = guest.d.get(d.id)
        if g is None or (g.acs_cap, g.acs_ctrl if g.acs_cap is not None else 0) == \
                (d.acs_cap, d.acs_ctrl if d.acs_cap is not None else 0):
            continue
        out.append(f"{d.id}: ACS {_acs(g.acs_cap, g.acs_ctrl)} in the guest, "
                   f"{_acs(d.acs_cap, d.acs_ctrl)} predicted")
    return out


def _acs(cap: int | None, ctrl: int) -> str:
    if cap is None:
        return "absent"
    return f"cap {cap:#06x} ctrl {ctrl:#06x} ({flag_names(ctrl)})"


def show(groups: Partition, multi_only: bool = True) -> str:
    """'{sw0-dp0, nvme0} {sw0-dp1, nvme1}' (the groups with more than one member)."""
    shown = [g for g in groups if len(g) > 1 or not multi_only]
    text = " ".join("{" + ", ".join(g) + "}" for g in shown) or "none"
    return text + ("; every other device alone" if multi_only and groups else "")
