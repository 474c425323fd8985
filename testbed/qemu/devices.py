"""Everything the testbed knows about how QEMU realises each kind of topology node:
one table, read by the command-line builder, the live QEMU check, the guest-side tree
check and the oracle.  The ports, switches and host bridges are rows here; each endpoint
kind (NVMe, igb: :mod:`testbed.spec.endpoints`) brings its own row.

    >>> from testbed.spec.model import Igb, RootPort, Nvme
    >>> DEVICES[RootPort].qemu_device, DEVICES[RootPort].pci_id, DEVICES[RootPort].acs
    ('pcie-root-port', ('0x1b36', '0x000c'), True)
    >>> DEVICES[Nvme].label, DEVICES[Igb].pci_id
    ('NVMe controller', ('0x8086', '0x10c9'))
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec.endpoints import ENDPOINTS, Endpoint, EndpointKind
from ..spec.model import (DownstreamPort, HostBridge, Iommu, Machine, Node, RootPort, Switch,
                          Topology)


# pcie-root-port's property that builds the port without its ACS capability (``acs: false``)
DISABLE_ACS = "disable-acs"


@dataclass(frozen=True)
class DeviceKind:
    """How one kind of spec node exists in QEMU and in the guest."""

    kind: str                    # the spec's word: root_port, switch, ...
    qemu_device: str             # -device NAME (also the QOM type)
    pci_id: tuple[str, str]      # vendor, device as the guest's sysfs prints them
    label: str                   # for people: "switch downstream port"
    acs: bool                    # has an ACS extended capability in QEMU's model
    hotplug_slot: bool           # the device below it can be hot-plugged / unplugged
    props: tuple[str, ...] = ()  # properties of ``qemu_device`` the testbed may set

    @property
    def qom_type(self) -> str:
        return self.qemu_device


DEVICES: dict[type, DeviceKind] = {
    RootPort: DeviceKind("root_port", "pcie-root-port", ("0x1b36", "0x000c"), "root port",
                         acs=True, hotplug_slot=True,
                         props=("chassis", "slot", DISABLE_ACS)),
    Switch: DeviceKind("switch", "x3130-upstream", ("0x104c", "0x8232"),
                       "switch upstream port", acs=False, hotplug_slot=False),
    DownstreamPort: DeviceKind("downstream_port", "xio3130-downstream", ("0x104c", "0x8233"),
                               "switch downstream port", acs=False, hotplug_slot=True,
                               props=("chassis", "slot")),
    HostBridge: DeviceKind("host_bridge", "pxb-pcie", ("0x1b36", "0x000b"),
                           "PCIe expander host bridge", acs=False, hotplug_slot=False,
                           props=("bus_nr",)),
}


def _endpoint_row(k: EndpointKind) -> DeviceKind:
    return DeviceKind(k.word, k.qemu_device, k.pci_id, k.label, acs=False, hotplug_slot=False)


DEVICES.update({cls: _endpoint_row(k) for cls, k in ENDPOINTS.items()})
# The switch needs its downstream port device too, even when the spec lists no port.
EXTRA_DEVICES: dict[type, tuple[str, ...]] = {Switch: ("xio3130-downstream",), **{
    cls: k.extra_devices for cls, k in ENDPOINTS.items() if k.extra_devices}}


def kind_of(node: Node) -> DeviceKind:
    return DEVICES[type(node)]


def endpoint_kind(node: Endpoint) -> EndpointKind:
    """The endpoint kind of ``node`` (its argv, driver, P2P role, ...)."""
    return ENDPOINTS[type(node)]


def has_acs(node: Node) -> bool:
    """Does QEMU give this node an ACS extended capability?  Its kind must have one, and a
    root port written with ``acs: false`` is built without it.

    >>> has_acs(RootPort("rp0")), has_acs(RootPort("rp0", acs=False))
    (True, False)
    """
    return DEVICES[type(node)].acs and getattr(node, "acs", True)


# -- the vIOMMU and the root bus: the machine profile's (testbed.machines) -----------------
def iommu_cmdline(of: Iommu | Topology) -> tuple[str, ...]:
    """Guest kernel command line words the vIOMMU choice implies (an ``Iommu`` alone is read
    on the default machine)."""
    if isinstance(of, Topology):
        return of.profile.iommu_words(of.iommu.model, of.iommu.mode)
    return Machine().profile.iommu_words(of.model, of.mode)


def free_root_slots(topo: Topology) -> int:
    """Root-bus slots left for the topology's own devices (the machine's root-bus layout,
    less a vIOMMU that takes a slot)."""
    profile = topo.profile
    return profile.root_bus.free_slots(profile.viommu(topo.iommu.model))


MAX_BUS = 255


def bus_numbers(topo: Topology) -> dict[str, int]:
    """The root bus number of each expander host bridge: as the topology says, else spread
    evenly over the bus numbers (the machine's own root complex keeps the numbers below the
    first)."""
    bridges = topo.host_bridges()
    out: dict[str, int] = {}
    for i, hb in enumerate(bridges):
        out[hb.name] = hb.bus_nr if hb.bus_nr is not None else \
            (MAX_BUS + 1) * (i + 1) // (len(bridges) + 1)
    return out


def buses_below(node: Node) -> int:
    """PCI buses a node's subtree needs (each port and each switch's internal bus)."""
    own = 1 if isinstance(node, (RootPort, DownstreamPort, Switch)) else 0
    return own + sum(buses_below(c) for c in node.children)
