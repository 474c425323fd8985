"""Does the guest see the PCI tree the topology describes?

Input is the JSON of ``p2pdma-guest inventory`` (testbed/guest_tool).  Every spec node is
found at the address QEMU gives it (:mod:`testbed.qemu.addresses`: the devfn on each bus
from its root bus down; the guest numbers the buses), whatever its kind; it must be of the
right kind (vendor:device), an endpoint must be bound to its kind's driver, and the kind
checks the rest (an NVMe's serial, its CMB published as p2pmem of the CMB's size).

    >>> check_tree(topo, inventory)      # doctest: +SKIP
    []
"""

from __future__ import annotations

from typing import Any, Mapping

from ..qemu.addresses import Address, addresses
from ..qemu.devices import DEVICES
from ..spec.endpoints import ENDPOINTS, Endpoint, EndpointKind
from ..spec.model import Topology

# QEMU's PCI IDs and a label for each kind of spec node (from the one device table).
PCI_IDS = {cls: kind.pci_id for cls, kind in DEVICES.items()}
KIND_NAMES = {cls: kind.label for cls, kind in DEVICES.items()}


def inventory_argv(topo: Topology, wait: float) -> list[str]:
    """The guest tool's ``inventory`` command for ``topo``: load the endpoints' driver
    modules, then wait up to ``wait`` seconds for every NVMe and p2pmem provider.

        >>> from testbed.spec import load_topology
        >>> inventory_argv(load_topology("switch-cmb"), 30)
        ['inventory', '--wait', '30', '--expect-nvme', '2', '--expect-p2pmem', '2']
    """
    modules = dict.fromkeys(m for e in topo.endpoints() if (m := ENDPOINTS[type(e)].module))
    return ["inventory", "--wait", f"{wait:g}", "--expect-nvme", str(len(topo.nvmes())),
            "--expect-p2pmem", str(len(topo.providers())),
            *(a for m in modules for a in ("--load", m))]


def _root_of(bdf: str, d: Mapping[str, Any]) -> str:
    return d.get("root") or bdf.rsplit(":", 1)[0]


def _devfn(bdf: str) -> int:
    slot, fn = bdf.rsplit(":", 1)[1].split(".")
    return int(slot, 16) << 3 | int(fn, 16)


def resolve(address: Address, pci: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The guest BDF at ``address`` (None when there is nothing there)."""
    parent: str | None = None
    for devfn in address.path:
        here = [b for b, d in pci.items() if _devfn(b) == devfn
                and ((d.get("chain") or [None])[-1] == parent)
                and (parent is not None or _root_of(b, d) == address.root)]
        if len(here) != 1:
            return None
        parent = here[0]
    return parent


def map_names(topo: Topology, inventory: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Spec name -> guest BDF, and the differences found on the way."""
    pci = inventory.get("pci", {})
    names: dict[str, str] = {}
    diffs: list[str] = []
    for name, address in addresses(topo).items():
        bdf = resolve(address, pci)
        node = topo.find(name)
        if bdf is None:
            diffs.append(f"{name}: no device at {address.text} in the guest, where QEMU puts "
                         f"the {KIND_NAMES[type(node)]}")
            continue
        names[name] = bdf
        ids = (pci[bdf].get("vendor"), pci[bdf].get("device"))
        if ids != PCI_IDS[type(node)]:
            diffs.append(f"{name}: {bdf} is {ids[0]}:{ids[1]}, expected a "
                         f"{KIND_NAMES[type(node)]} ({':'.join(PCI_IDS[type(node)])})")
    return names, diffs


def check_tree(topo: Topology, inventory: Mapping[str, Any]) -> list[str]:
    names, diffs = map_names(topo, inventory)
    pci = inventory.get("pci", {})
    for kind, ids in PCI_IDS.items():
        want = sum(1 for n in topo.nodes() if isinstance(n, kind))
        got = sum(1 for d in pci.values() if (d.get("vendor"), d.get("device")) == ids)
        if want != got:
            diffs.append(f"the guest has {got} {KIND_NAMES[kind]}(s), the spec {want}")
    p2pdma = inventory.get("kernel", {}).get("p2pdma") is not False
    for endpoint in topo.endpoints():
        bdf = names.get(endpoint.name)
        if bdf is None:
            continue
        diffs += endpoint_problems(endpoint, bdf, inventory, p2pdma)
    return diffs


def endpoint_problems(endpoint: Endpoint, bdf: str, inventory: Mapping[str, Any],
                      p2pdma: bool) -> list[str]:
    """Its kind's driver must be bound, and its kind's own checks must pass.  An endpoint
    the testbed's own workloads never drive through its driver (no P2P memory, no pair's
    client: the igb) may stay unbound on a kernel that has no such driver (its module was
    not found, and it is not built in): the device is there, and VFIO users (the kernel's
    VFIO selftests) want it unbound anyway."""
    kind = ENDPOINTS[type(endpoint)]
    driver = inventory.get("pci", {}).get(bdf, {}).get("driver")
    out = []
    if driver is None and driverless_ok(kind, inventory):
        return kind.guest_problems(endpoint, bdf, inventory, p2pdma)
    if driver != kind.driver:
        out.append(f"{endpoint.name}: {bdf} is bound to {driver or 'no driver'}, expected "
                   f"{kind.driver}")
    return out + kind.guest_problems(endpoint, bdf, inventory, p2pdma)


def driverless_ok(kind: EndpointKind, inventory: Mapping[str, Any]) -> bool:
    """The kernel lacks ``kind``'s driver and nothing of the testbed needs it.

        >>> from testbed.spec.endpoints import IGB, NVME
        >>> inv = {"module_errors": {"igb": "modprobe: FATAL: Module igb not found in "
        ...                                 "directory /lib/modules/7.3.4"}}
        >>> driverless_ok(IGB, inv), driverless_ok(IGB, {}), driverless_ok(NVME, inv)
        (True, False, False)
    """
    if kind.p2p_bar is not None or kind.pair_client or not kind.module:
        return False
    error = str(inventory.get("module_errors", {}).get(kind.module, ""))
    return "not found" in error or "moddep" in error
