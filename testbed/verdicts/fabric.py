"""The PCI tree as the kernel's IOMMU grouping sees it: every function with its port type,
its place (parent bridge, devfn), whether it is multifunction, its ACS capability and
control, and whether its DMA goes through the IOMMU at all.

Two sources:

- :func:`from_topology`: the oracle's tree.  The topology's nodes (ACS from
  :mod:`.acs`: QEMU's capability plus what the kernel enables), plus the functions QEMU and
  the testbed put on the root bus besides (host bridge, ICH9, boot disk, NIC, RNG, a
  vIOMMU function), which the topology does not describe: taken from the guest's
  inventory when there is one (:func:`machine_devices`), else from the machine profile's
  root-bus layout, the one the command line is built from (:func:`root_bus_devices`).
- :func:`from_inventory`: the tree the guest shows, registers as read (for comparing).

Topology nodes are named by their spec names, other functions by their address
(``0000:00:1f.2``).  :func:`complete_names` maps every spec node to its address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from ..machines import PROFILES, X86_64
from ..qemu.devices import bus_numbers
from ..spec.model import DownstreamPort, Endpoint, HostBridge, Node, RootPort, Switch, Topology
from . import acs

# Port types as the guest tool reports them -> the kinds acs.acs_enabled() knows
KINDS = {"root_port": "root_port", "upstream": "upstream", "downstream": "downstream",
         "endpoint": "endpoint", "legacy_endpoint": "endpoint", "rc_endpoint": "rc_endpoint",
         None: "pci"}
SPEC_KINDS: dict[type, str] = {RootPort: "root_port", Switch: "upstream",
                               DownstreamPort: "downstream",
                               HostBridge: "pci"}  # pxb-pcie: conventional, on the root bus
# PCI functions of the vIOMMUs themselves: not behind the IOMMU, so in no group
VIOMMU_FUNCTIONS = {v.pci_id: f"{v.model}-iommu" for p in PROFILES.values()
                    for v in p.viommus if v.pci_id is not None}


@dataclass
class Dev:
    id: str                       # spec name, or the address of a function the spec omits
    kind: str                     # root_port upstream downstream endpoint rc_endpoint pci
    parent: str | None            # upstream bridge; None: on a root bus
    devfn: int = 0                # slot << 3 | function
    multifunction: bool = False
    acs_cap: int | None = None    # None: no ACS capability
    acs_ctrl: int = 0
    translated: bool = True       # False: its DMA does not go through the IOMMU
    label: str = ""               # what it is, for people
    acs_steps: tuple[str, ...] = field(default=(), repr=False)
    root: str = X86_64.root_bus.number  # the root bus it hangs from (an expander: its own)

    def acs_enabled(self, flags: int = acs.REQ_ACS_FLAGS) -> bool:
        return acs.acs_enabled(self.kind, self.multifunction, self.acs_cap, self.acs_ctrl,
                               flags)

    @property
    def isolates(self) -> bool:
        """A port that stops peer-to-peer routing: an ACS capability with SV RR CR UF in
        effect (the kernel's own test).  Ports without the capability never do."""
        return self.acs_cap is not None and acs.flags_enabled(self.acs_cap, self.acs_ctrl,
                                                              acs.REQ_ACS_FLAGS)


class Fabric:
    """A tree of :class:`Dev`, in the order Linux registers (and groups) them.  A bus is
    named by its bridge, or ``root:SSSS:BB`` for a root bus."""

    def __init__(self, devs: Sequence[Dev]):
        self.d = {x.id: x for x in devs}
        self.kids: dict[str, list[str]] = {}
        for x in devs:
            self.kids.setdefault(self.bus_of(x.id), []).append(x.id)
        for v in self.kids.values():
            v.sort(key=lambda i: self.d[i].devfn)

    def __iter__(self) -> Iterator[Dev]:
        return iter(self.d.values())

    def bus_of(self, i: str) -> str:
        d = self.d[i]
        return d.parent if d.parent is not None else f"root:{d.root}"

    def bus_peers(self, i: str) -> list[str]:
        """The devices on ``i``'s bus, ``i`` included."""
        return self.kids[self.bus_of(i)]

    def probe_order(self, bus: str | None = None) -> list[str]:
        """pci_bus_add_devices(): a bus's devices by devfn, then each one's child bus;
        without ``bus``, every root bus in number order."""
        if bus is None:
            return [i for b in sorted(k for k in self.kids if k.startswith("root:"))
                    for i in self.probe_order(b)]
        out = list(self.kids.get(bus, []))
        for i in self.kids.get(bus, []):
            out += self.probe_order(i)
        return out

    def upstream(self, i: str) -> list[str]:
        """``i`` and its upstream bridges, nearest first."""
        out: list[str] = []
        x: str | None = i
        while x is not None:
            out.append(x)
            x = self.d[x].parent
        return out

    def path_enabled(self, i: str | None, flags: int = acs.REQ_ACS_FLAGS) -> bool:
        """pci_acs_path_enabled(start, NULL, flags): every device from ``i`` to the root bus."""
        return all(self.d[x].acs_enabled(flags) for x in (self.upstream(i) if i else []))

    @property
    def endpoints(self) -> list[str]:
        """Endpoints behind the IOMMU that sit below a port (the ones P2P can reach)."""
        return [i for i in self.probe_order() if self.d[i].kind == "endpoint"
                and self.d[i].translated]


def _devfn(bdf: str) -> int:
    slot, fn = bdf.rsplit(":", 1)[1].split(".")
    return int(slot, 16) << 3 | int(fn, 16)


def from_topology(topo: Topology, machine: Sequence[Dev] | None = None,
                  names: Mapping[str, str] | None = None) -> Fabric:
    """The oracle's tree; ``names`` (spec name -> guest address, all nodes) gives the real
    devfns and lets command-line ACS options that name addresses match."""
    names = names or {}
    devs: list[Dev] = []
    layout = topo.profile.root_bus
    slot = layout.first_free_slot(topo.profile.viommu(topo.iommu.model))
    roots = {hb: f"0000:{nr:02x}" for hb, nr in bus_numbers(topo).items()}

    def chain(node: Node) -> list[str]:
        """Addresses from the node up to its root bus (an expander is not a bridge)."""
        out = []
        for n in topo.upstream_path(node.name):
            if isinstance(n, HostBridge):
                break
            if n.name not in names:
                return []
            out.append(names[n.name])
        return out

    def add(node: Node, parent: str | None, devfn: int, root: str = layout.number) -> None:
        devfn = _devfn(names[node.name]) if node.name in names else devfn
        kind = "endpoint" if isinstance(node, Endpoint) else SPEC_KINDS[type(node)]
        if kind == "endpoint" and parent is None:
            kind = "rc_endpoint"  # QEMU makes a PCIe device on pcie.0 an integrated one
        state = acs.node_state(node, topo, chain(node))
        devs.append(Dev(node.name, kind, parent, devfn, False, state.cap, state.ctrl,
                        label=type(node).__name__, acs_steps=state.steps, root=root))
        for k, child in enumerate(node.children):
            if isinstance(node, HostBridge):  # its root ports start a root bus of their own
                add(child, None, k << 3, roots[node.name])
            else:
                add(child, node.name, k << 3 if isinstance(node, Switch) else 0, root)

    for node in topo.pcie:
        add(node, None, slot << 3)
        slot += 1
    devs += root_bus_devices(topo) if machine is None else machine
    return Fabric(devs)


def _machine_dev(topo: Topology, bdf: str, kind: str, mf: bool, label: str,
                 translated: bool = True, cap: int | None = None) -> Dev:
    state = acs.enable(cap, acs.DeviceId(0, 0, chain=(bdf,)), acs.requester(topo),
                       acs.PciParams.from_cmdline(topo.kernel_cmdline))
    return Dev(bdf, kind, None, _devfn(bdf), mf, state.cap, state.ctrl, translated, label,
               root=bdf.rsplit(":", 1)[0])


def root_bus_devices(topo: Topology) -> list[Dev]:
    """The root-bus functions besides the topology's, from the machine profile's root-bus
    layout (the one the command line is built from): the machine's own functions (q35: host
    bridge, ICH9 LPC/AHCI/SMBus in one multifunction slot), the vIOMMU's function, and the
    boot disk, NIC and RNG after the topology's devices."""
    profile = topo.profile
    layout, viommu = profile.root_bus, profile.viommu(topo.iommu.model)

    def bdf(slot: int, fn: int = 0) -> str:
        return f"{layout.number}:{slot:02x}.{fn}"

    first = layout.first_free_slot()
    out = [_machine_dev(topo, bdf(f.slot, f.function), "pci", f.multifunction, f.label)
           for f in layout.fixed if f.slot < first]
    if viommu is not None and viommu.takes_root_slot:
        out.append(_machine_dev(topo, bdf(first), "pci", False, f"{viommu.model}-iommu",
                                translated=False))
    for dev, slot in zip(layout.boot_devices, layout.boot_slots(viommu, len(topo.pcie))):
        out.append(_machine_dev(topo, bdf(slot), "pci", False, dev.label))
    out += [_machine_dev(topo, bdf(f.slot, f.function), "pci", f.multifunction, f.label)
            for f in layout.fixed if f.slot >= first]
    return out


def machine_devices(topo: Topology, inventory: Mapping[str, Any],
                    names: Mapping[str, str]) -> list[Dev]:
    """The root-bus functions the guest shows that are not topology nodes, as the oracle
    models them: their structure as the guest shows it (address, port type, multifunction,
    ACS capability), their ACS control as the kernel should have set it."""
    ours = set(names.values())
    out = []
    for bdf, d in inventory.get("pci", {}).items():
        if bdf in ours or d.get("chain"):
            continue
        ids = (d.get("vendor"), d.get("device"))
        cap = (d.get("acs") or {}).get("cap")
        out.append(_machine_dev(topo, bdf, KINDS.get(d.get("pcie_type"), "endpoint"),
                                bool(d.get("multifunction")),
                                VIOMMU_FUNCTIONS.get(ids, d.get("class") or ""),
                                translated=ids not in VIOMMU_FUNCTIONS, cap=cap))
    return out


def from_inventory(inventory: Mapping[str, Any], names: Mapping[str, str] | None = None
                   ) -> Fabric:
    """The tree the guest shows, with the ACS registers it read; devices are named by
    ``names`` (spec name -> address) where given, else by address."""
    by_bdf = {bdf: name for name, bdf in (names or {}).items()}
    devs = []
    for bdf, d in inventory.get("pci", {}).items():
        chain = d.get("chain") or []
        a = d.get("acs") or {}
        ids = (d.get("vendor"), d.get("device"))
        devs.append(Dev(by_bdf.get(bdf, bdf), KINDS.get(d.get("pcie_type"), "endpoint"),
                        by_bdf.get(chain[-1], chain[-1]) if chain else None, _devfn(bdf),
                        bool(d.get("multifunction")), a.get("cap"), a.get("ctrl", 0),
                        ids not in VIOMMU_FUNCTIONS, VIOMMU_FUNCTIONS.get(ids, ""),
                        root=d.get("root") or bdf.rsplit(":", 1)[0]))
    return Fabric(devs)


def complete_names(topo: Topology, inventory: Mapping[str, Any],
                   names: Mapping[str, str]) -> dict[str, str]:
    """Spec name -> guest address for every node.  The boot maps the nodes on each NVMe's
    path (by serial); the rest (an empty downstream port, say) follow by position: QEMU
    gives a bus's ports addresses in the order the topology lists them."""
    out = dict(names)
    pci = inventory.get("pci", {})
    roots = {hb: f"0000:{nr:02x}" for hb, nr in bus_numbers(topo).items()}

    def children_of(bdf: str | None, root: str) -> list[str]:
        """Devices whose upstream bridge is ``bdf`` (None: on root bus ``root``)."""
        kids = [b for b, d in pci.items() if (d.get("chain") or [None])[-1] == bdf
                and (bdf is not None or (d.get("root") or b.rsplit(":", 1)[0]) == root)]
        return sorted(kids, key=_devfn)

    def visit(nodes: Sequence[Node], parent_bdf: str | None, root: str) -> None:
        free = [b for b in children_of(parent_bdf, root) if b not in out.values()]
        for node in nodes:
            if node.name not in out:
                ids = acs.DeviceId.of(node)
                match = next((b for b in free if (int(pci[b]["vendor"], 16),
                                                  int(pci[b]["device"], 16))
                              == (ids.vendor, ids.device)), None)
                if match is None:
                    continue
                out[node.name] = match
                free.remove(match)
            if isinstance(node, HostBridge):
                visit(node.children, None, roots[node.name])
            else:
                visit(node.children, out[node.name], root)

    visit(topo.pcie, None, topo.profile.root_bus.number)
    return out
