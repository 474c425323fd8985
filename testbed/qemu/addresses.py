"""Where QEMU puts every node of a topology: its PCI address, as the devfn (slot << 3 |
function) on each bus from its root bus down.  This is how every node, whatever its kind,
is found in the guest (no NVMe serial, no driver needed): the guest assigns the bus
numbers below a root bus, the devfns are QEMU's.

QEMU gives a device without ``addr=`` the first free slot of its bus, in command-line
order.  On the machine's root bus that is the profile's layout (a vIOMMU that is a PCI
function first, then the topology's devices in order: ``RootBus.first_free_slot``); an
expander host bridge's root bus and a switch's internal bus start at slot 0; a port's
device is 00.0.  ``testbed verify`` checks these addresses over QMP (``query-pci``).

    >>> from testbed.spec import load_topology
    >>> a = addresses(load_topology("switch-cmb"))
    >>> a["rp0"], a["nvme1"]
    (Address(root='0000:00', path=(8,)), Address(root='0000:00', path=(8, 0, 8, 0)))
    >>> a["nvme1"].text
    '0000:00:01.0 > 00.0 > 01.0 > 00.0'
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec.model import HostBridge, Node, Switch, Topology
from .devices import bus_numbers


@dataclass(frozen=True)
class Address:
    root: str                # the root bus, domain:bus ("0000:00"; an expander's "0000:80")
    path: tuple[int, ...]    # devfn on each bus from the root bus down to the node

    @property
    def text(self) -> str:
        first, *rest = self.path
        return " > ".join([f"{self.root}:{_devfn(first)}", *map(_devfn, rest)])


def _devfn(devfn: int) -> str:
    return f"{devfn >> 3:02x}.{devfn & 7}"


def addresses(topo: Topology) -> dict[str, Address]:
    """Spec name -> the address QEMU gives the node."""
    profile = topo.profile
    layout = profile.root_bus
    first = layout.first_free_slot(profile.viommu(topo.iommu.model))
    numbers = bus_numbers(topo)
    out: dict[str, Address] = {}

    def visit(node: Node, root: str, path: tuple[int, ...]) -> None:
        out[node.name] = Address(root, path)
        if isinstance(node, HostBridge):  # its root ports start a root bus of their own
            for k, port in enumerate(node.ports):
                visit(port, f"0000:{numbers[node.name]:02x}", (k << 3,))
            return
        for k, child in enumerate(node.children):
            visit(child, root, path + ((k << 3) if isinstance(node, Switch) else 0,))

    for i, node in enumerate(topo.pcie):
        visit(node, layout.number, ((first + i) << 3,))
    return out
