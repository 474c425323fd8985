"""Does the guest see the PCI tree the topology describes?

Input is the JSON of ``p2pdma-guest inventory`` (guest-images/tools).  NVMe
controllers are matched by serial; walking each one's chain of upstream
bridges in sysfs, every spec node gets a guest BDF, which must be consistent
(one BDF per name, one name per BDF) and of the right kind (vendor:device).
Every CMB must appear as a p2pmem provider of the CMB's size.

    >>> check_tree(topo, inventory)      # doctest: +SKIP
    []
"""

from __future__ import annotations

from typing import Any

from ..qemu.devices import DEVICES, bus_numbers
from ..spec.model import HostBridge, Topology
from ..spec.units import format_size

# QEMU's PCI IDs and a label for each kind of spec node (from the one device table).
PCI_IDS = {cls: kind.pci_id for cls, kind in DEVICES.items()}
KIND_NAMES = {cls: kind.label for cls, kind in DEVICES.items()}


def map_names(topo: Topology, inventory: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Spec name -> guest BDF, and the differences found on the way."""
    diffs: list[str] = []
    pci = inventory.get("pci", {})
    by_serial = {c.get("serial"): c.get("bdf") for c in inventory.get("nvme", {}).values()}
    names: dict[str, str] = {}
    owners: dict[str, str] = {}
    numbers = bus_numbers(topo)
    root_bus = topo.profile.root_bus.number
    # expander host bridges are PCI devices on the machine's root bus, in the order QEMU got
    # them
    expanders = sorted(b for b, d in pci.items() if (d.get("vendor"), d.get("device")) ==
                       PCI_IDS[HostBridge] and (d.get("root") in (None, root_bus)))
    for bridge, gbdf in zip(topo.host_bridges(), expanders):
        names[bridge.name] = gbdf
        owners[gbdf] = bridge.name
    for nvme in topo.nvmes():
        bdf = by_serial.get(nvme.serial)
        if bdf is None or bdf not in pci:
            diffs.append(f"{nvme.name}: no NVMe controller with serial {nvme.serial!r} in the guest")
            continue
        path = topo.upstream_path(nvme.name)
        hb = path[-1] if isinstance(path[-1], HostBridge) else None
        spec_chain = [n for n in reversed(path) if not isinstance(n, HostBridge)]
        guest_chain = pci[bdf].get("chain", []) + [bdf]
        root = pci[bdf].get("root")
        want_root = f"0000:{numbers[hb.name]:02x}" if hb is not None else root_bus
        if root is not None and root != want_root:
            where = f"host bridge {hb.name}'s root bus" if hb else \
                f"{topo.profile.machine_type}'s root bus"
            diffs.append(f"{nvme.name}: hangs from root bus {root}, the spec puts it below "
                         f"{where} ({want_root})")
            continue
        if len(spec_chain) != len(guest_chain):
            diffs.append(f"{nvme.name}: the guest sees it {len(guest_chain) - 1} bridge(s) below "
                         f"the root complex ({' -> '.join(guest_chain)}), the spec says "
                         f"{len(spec_chain) - 1} ({' -> '.join(n.name for n in spec_chain)})")
            continue
        for node, gbdf in zip(spec_chain, guest_chain):
            if names.setdefault(node.name, gbdf) != gbdf:
                diffs.append(f"{node.name}: seen at both {names[node.name]} and {gbdf}")
            if owners.setdefault(gbdf, node.name) != node.name:
                diffs.append(f"{gbdf}: is both {owners[gbdf]} and {node.name} in the spec")
            ids = (pci.get(gbdf, {}).get("vendor"), pci.get(gbdf, {}).get("device"))
            if ids != PCI_IDS[type(node)]:
                diffs.append(f"{node.name}: {gbdf} is {ids[0]}:{ids[1]}, expected a "
                             f"{KIND_NAMES[type(node)]} ({':'.join(PCI_IDS[type(node)])})")
    return names, diffs


def check_tree(topo: Topology, inventory: dict[str, Any]) -> list[str]:
    names, diffs = map_names(topo, inventory)
    pci = inventory.get("pci", {})
    for kind, ids in PCI_IDS.items():
        want = sum(1 for n in topo.nodes() if isinstance(n, kind))
        got = sum(1 for d in pci.values() if (d.get("vendor"), d.get("device")) == ids)
        if want != got:
            diffs.append(f"the guest has {got} {KIND_NAMES[kind]}(s), the spec {want}")
    if inventory.get("kernel", {}).get("p2pdma") is False:
        return diffs  # no p2pmem to check on a kernel without CONFIG_PCI_P2PDMA
    for nvme in topo.nvmes():
        bdf = names.get(nvme.name)
        if bdf is None:
            continue
        p2p = pci.get(bdf, {}).get("p2pmem")
        if nvme.cmb and not p2p:
            diffs.append(f"{nvme.name}: its {format_size(nvme.cmb)} CMB is not published as "
                         f"p2pmem at {bdf}")
        elif nvme.cmb and int(p2p.get("size") or 0) != nvme.cmb:
            diffs.append(f"{nvme.name}: p2pmem size {p2p.get('size')} at {bdf}, the CMB is "
                         f"{nvme.cmb} bytes")
        elif not nvme.cmb and p2p:
            diffs.append(f"{nvme.name}: publishes p2pmem at {bdf} but has no CMB in the spec")
    return diffs
