"""How a kernel forms IOMMU groups from a PCI tree: the algorithms, as functions of a
:class:`~.fabric.Fabric`.

``upstream-walk`` is ``pci_device_group()`` of drivers/iommu/iommu.c as in every released
kernel up to at least 7.3.4 (read in Debian's linux-source-7.3 7.3.4-1~bpo13+1): run once
per device in registration order (a bus's devices by devfn, then each child bus), it
walks up from the device and stops at the first bus whose bridge has ACS on the whole
path to the root (``pci_acs_path_enabled(bus->self, NULL, REQ_ACS_FLAGS)``), joining the
group of any bridge passed on the way; then same-slot functions without ACS share one.
It checks the bridges *above* the device, never its siblings: two downstream ports of a
switch without ACS get a group each although they reach each other through the switch.
Verified against 9 guests (intel strict/passthrough, virtio, no vIOMMU, root ports with
and without ACS, ``pci=disable_acs_redir``).

``acs-v3`` is the 2025 series "Fix incorrect iommu_groups with PCIe ACS" (Jason
Gunthorpe, v3 of 5 Sep 2025, 11 patches; not merged in 7.3.4).  It asks of every bus
whether it is isolated (``pci_bus_isolated()``): a switch's internal bus is isolated
only when every downstream port has ACS, else all devices below it share one group; a
root port without an ACS capability counts as isolated; multifunction devices without
an ACS capability no longer share a group.  ``acs-v3-base`` is the series without its
ACS Enhanced patches 8-11, which leaves the switch's upstream port out of that group.
Both are modelled from reading the patches only: no patched kernel has been run.

    >>> from testbed.spec import load_topology
    >>> from testbed.verdicts.fabric import from_topology
    >>> fab = from_topology(load_topology("switch-cmb-intel-iommu"))
    >>> [g for g in partition(fab, ALGORITHMS[UPSTREAM_WALK].groups(fab)) if len(g) > 1]
    [['0000:00:1f.0', '0000:00:1f.2', '0000:00:1f.3'], ['sw0-dp0', 'nvme0'], ['sw0-dp1', 'nvme1']]
    >>> [g for g in partition(fab, ALGORITHMS[ACS_V3].groups(fab)) if len(g) > 1]
    [['sw0', 'sw0-dp0', 'sw0-dp1', 'nvme0', 'nvme1']]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from . import acs
from .fabric import Fabric

UPSTREAM_WALK, ACS_V3, ACS_V3_BASE = "upstream-walk", "acs-v3", "acs-v3-base"
NO_GROUPS, OTHER = "no-groups", "other"  # verdict words besides the algorithms'

Groups = dict[str, int]  # device -> group number (in the order the kernel allocates them)

# ACS Enhanced request redirect bits (v3 patches 8-11); QEMU's ports have no Enhanced cap
ENHANCED, DSP_MT_RR, USP_MT_RR = 0x80, 0x200, 0x800


def upstream_walk(fab: Fabric) -> Groups:
    grp: Groups = {}
    n = itertools.count()

    def function_alias(p: str) -> int | None:  # get_pci_function_alias_group()
        dp = fab.d[p]
        if not dp.multifunction or dp.acs_enabled():
            return None
        for t in fab.bus_peers(p):
            dt = fab.d[t]
            if t != p and dt.devfn >> 3 == dp.devfn >> 3 and not dt.acs_enabled() and t in grp:
                return grp[t]
        return None

    for i in fab.probe_order():
        if not fab.d[i].translated:
            continue
        p, g = i, None
        while (b := fab.d[p].parent) is not None:  # for (bus = pdev->bus; !root bus; ...)
            if fab.path_enabled(b):
                break
            p = b
            if p in grp:
                g = grp[p]
                break
        if g is None and p != i:
            g = grp.get(p)                     # get_pci_alias_group(): p's own group
        if g is None:
            g = function_alias(p)
        grp[i] = next(n) if g is None else g
    return grp


def _enhanced_enabled(fab: Fabric, i: str, flags: int, enhanced: bool) -> bool:
    """pci_acs_enabled() with v3 patch 10's mask: the Enhanced bits count only when the
    capability has ACS Enhanced (bit 7), and then are not taken as hard-wired on."""
    d = fab.d[i]
    if not enhanced or d.acs_cap is None or d.kind not in ("root_port", "downstream"):
        return d.acs_enabled(flags & 0x7F)
    mask = d.acs_cap & 0x7F & ~acs.EC
    if d.acs_cap & ENHANCED:
        mask |= 0x1F80
    flags &= mask
    return d.acs_ctrl & flags == flags


def bus_isolated(fab: Fabric, bridge: str | None, enhanced: bool) -> str:
    """v3 ``pci_bus_isolated()`` of the bus below ``bridge`` (None: the root bus)."""
    if bridge is None:
        return "ISOLATED"
    b = fab.d[bridge]
    if b.kind == "root_port":
        flags = acs.REQ_ACS_FLAGS | (DSP_MT_RR if enhanced else 0)
        not_isolating = b.acs_cap is not None and not _enhanced_enabled(fab, bridge, flags,
                                                                        enhanced)
        return "NON_ISOLATED" if not_isolating else "ISOLATED"
    if b.kind == "downstream":
        return "ISOLATED"                      # a point-to-point link
    if b.kind == "upstream":
        for k in fab.kids.get(bridge, []):
            if fab.d[k].kind != "downstream":
                return "NON_ISOLATED"
            flags = acs.REQ_ACS_FLAGS | ((DSP_MT_RR | USP_MT_RR) if enhanced else 0)
            if not _enhanced_enabled(fab, k, flags, enhanced):
                if enhanced and not _enhanced_enabled(fab, k, USP_MT_RR, enhanced):
                    return "NON_ISOLATED"      # patch 11: the USP joins the group
                return "DSP_NON_ISOLATED"
        return "ISOLATED"
    return "NON_ISOLATED"                      # PCI bridges: not on the testbed's fabrics


def acs_v3(fab: Fabric, enhanced: bool = True) -> Groups:
    grp: Groups = {}
    flagged: set[int] = set()                  # groups marked NON_ISOLATED
    n = itertools.count()

    def mfd_same(a: str, b: str) -> bool:      # pci_mfds_are_same_group()
        da, db = fab.d[a], fab.d[b]
        if da.devfn >> 3 != db.devfn >> 3:
            return False
        if da.multifunction != db.multifunction:
            return True
        if not da.multifunction:
            return False
        return any(x.acs_cap is not None and not x.acs_enabled() for x in (da, db))

    for i in fab.probe_order():
        if not fab.d[i].translated:
            continue
        par = fab.d[i].parent
        if par is not None and grp.get(par) in flagged:   # pci_hierarchy_group()
            grp[i] = grp[par]
            continue
        state = bus_isolated(fab, par, enhanced)
        if state == "ISOLATED":
            reach, todo = {i}, [i]                        # pci_reachable_set()
            while todo:
                a = todo.pop()
                for b in fab.bus_peers(a):
                    if b not in reach and fab.d[b].translated and mfd_same(a, b):
                        reach.add(b)
                        todo.append(b)
            reach.discard(i)
            if not reach:
                grp[i] = next(n)
                continue
            g = next((grp[b] for b in reach if b in grp), None)
            g = next(n) if g is None else g
        elif state == "NON_ISOLATED":
            assert par is not None
            g = grp[par]
        else:                                             # DSP_NON_ISOLATED
            g = next((grp[b] for b in fab.bus_peers(i) if b in grp), None)
            g = next(n) if g is None else g
        flagged.add(g)
        grp[i] = g
    return grp


@dataclass(frozen=True)
class Algorithm:
    id: str
    title: str
    groups: Callable[[Fabric], Groups]


ALGORITHMS: dict[str, Algorithm] = {a.id: a for a in (
    Algorithm(UPSTREAM_WALK, "pci_device_group() of Linux up to at least 7.3.4 (upstream walk "
              "with pci_acs_path_enabled())", upstream_walk),
    Algorithm(ACS_V3, "the 2025 series \"Fix incorrect iommu_groups with PCIe ACS\" v3 "
              "(pci_bus_isolated(), with its ACS Enhanced patches)", acs_v3),
    Algorithm(ACS_V3_BASE, "the same series without its ACS Enhanced patches 8-11",
              lambda f: acs_v3(f, enhanced=False)),
)}


def expected_algorithm(symbols: Mapping[str, bool] | None) -> tuple[str, str]:
    """The algorithm a running kernel follows, told from its kallsyms, and why."""
    if not symbols:
        return UPSTREAM_WALK, ("/proc/kallsyms could not be read: assumed the grouping code "
                               "of every released kernel up to 7.3.4")
    if symbols.get("pci_bus_isolated") or symbols.get("pci_reachable_set"):
        return ACS_V3, ("its kallsyms list pci_bus_isolated/pci_reachable_set, which the 2025 "
                        "ACS grouping series adds")
    if symbols.get("get_pci_function_alias_group"):
        return UPSTREAM_WALK, ("its kallsyms list get_pci_function_alias_group and no "
                               "pci_bus_isolated")
    return UPSTREAM_WALK, ("its kallsyms show neither algorithm's functions: assumed the "
                           "grouping code of every released kernel up to 7.3.4")


Partition = list[list[str]]


def canonical(groups: Iterable[Iterable[str]], order: Sequence[str] = ()) -> Partition:
    """Groups as sorted lists: members in ``order`` (the tree's probe order; names not in
    it after, alphabetically), groups by their first member."""
    rank = {x: i for i, x in enumerate(order)}

    def key(x: str) -> tuple[int, str]:
        return (rank.get(x, len(rank)), x)

    out = [sorted(g, key=key) for g in groups if g]
    return sorted(out, key=lambda g: key(g[0]))


def partition(fab: Fabric, grp: Groups) -> Partition:
    by: dict[int, list[str]] = {}
    for dev, g in grp.items():
        by.setdefault(g, []).append(dev)
    return canonical(by.values(), fab.probe_order())
