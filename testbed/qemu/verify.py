"""Compare the PCI hierarchy a live QEMU built with what the topology says.

QEMU starts paused (``-S``).  While paused, the QOM tree already tells which
bus every device sits on (``parent_bus``) and its type.  BAR sizes behind
bridges only show in ``query-pci`` once firmware has numbered the buses, so the
machine is then let run in its firmware (no kernel) until every bridge has a
secondary bus number, and the NVMe BARs are checked.

    >>> diffs = verify(load_topology("switch-cmb"))         # doctest: +SKIP
    >>> diffs                                                 # doctest: +SKIP
    []
"""

from __future__ import annotations

import time
from typing import Any

from ..spec.model import RootPort, Topology
from ..spec.units import format_size
from ..util.rundir import RunDir
from .backing import create_backing_files
from .cmdline import build
from .devices import CMB_BAR, DEVICES, DISABLE_ACS, PMR_BAR
from .machine import QemuMachine
from .probe import probe

ENUMERATION_TIMEOUT = 30.0


def expected_parents(topo: Topology) -> dict[str, str]:
    """QEMU id -> the id of the device whose bus it plugs into (the root bus's own id, pcie.0,
    for the root complex)."""
    root = topo.profile.root_bus.name
    return {name: (parent.name if parent else root) for name, parent in topo.parents().items()}


def verify(topo: Topology, binary: str | None = None) -> list[str]:
    """Start the topology's QEMU and return the differences (empty list: a match)."""
    caps = probe(binary or topo.machine.qemu)
    with RunDir.create(f"verify-{topo.name}") as run:
        create_backing_files(topo, run.path)
        vm = QemuMachine(lambda qmp: build(topo, caps.path, run.path, "tcg", qmp=qmp,
                                           paused=True), run.path, name=f"verify {topo.name}")
        vm.launch()
        try:
            diffs = _check_qom(vm, topo)
            vm.qmp("cont")
            diffs += _check_bars(vm, topo)
        finally:
            vm.shutdown()
    return diffs


def _check_qom(vm: QemuMachine, topo: Topology) -> list[str]:
    diffs = []
    for node in topo.nodes():
        path = f"/machine/peripheral/{node.name}"
        try:
            qtype = vm.qmp("qom-get", path=path, property="type")
            bus = vm.qmp("qom-get", path=path, property="parent_bus")
        except Exception as exc:
            diffs.append(f"{node.name}: not found in QEMU ({exc})")
            continue
        want_type = DEVICES[type(node)].qom_type
        if qtype != want_type:
            diffs.append(f"{node.name}: QEMU made a {qtype}, the spec says {want_type}")
        parent = expected_parents(topo)[node.name]
        # parent_bus is ".../<bus>", and QEMU names a bridge's bus after the bridge's id (an
        # expander's bus hangs from an internal host device, so the owner's path differs)
        got_parent = bus.rstrip("/").split("/")[-1]
        if got_parent != parent:
            diffs.append(f"{node.name}: plugged into {got_parent}, the spec says {parent}")
        if isinstance(node, RootPort) and qtype == want_type:
            off = vm.qmp("qom-get", path=path, property=DISABLE_ACS)
            if off != (not node.acs):
                diffs.append(f"{node.name}: QEMU has {DISABLE_ACS}={'on' if off else 'off'}, "
                             f"the spec says acs: {str(node.acs).lower()}")
    return diffs


def _pci_devices(buses: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}

    def visit(devices: list[dict[str, Any]]) -> None:
        for d in devices:
            if d.get("qdev_id"):
                out[d["qdev_id"]] = d
            bridge = d.get("pci_bridge")
            if bridge:
                visit(bridge.get("devices", []))

    for b in buses:
        visit(b.get("devices", []))
    return out


def _numbered(buses: list[dict[str, Any]], topo: Topology) -> bool:
    devices = _pci_devices(buses)
    return all(n.name in devices for n in topo.nodes())


def _check_bars(vm: QemuMachine, topo: Topology) -> list[str]:
    deadline = time.monotonic() + ENUMERATION_TIMEOUT
    while True:
        buses = vm.qmp("query-pci")
        if _numbered(buses, topo) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    devices = _pci_devices(buses)
    diffs = []
    for node in topo.nodes():
        if node.name not in devices:
            diffs.append(f"{node.name}: not visible in query-pci after firmware enumeration")
    for nvme in topo.nvmes():
        dev = devices.get(nvme.name)
        if dev is None:
            continue
        bars = {r["bar"]: r for r in dev.get("regions", []) if r.get("type") == "memory"}
        if nvme.cmb:
            bar = bars.get(CMB_BAR)
            if bar is None:
                diffs.append(f"{nvme.name}: no CMB BAR{CMB_BAR} (spec: {format_size(nvme.cmb)})")
            elif bar["size"] != nvme.cmb:  # CMB sizes are powers of two, so the BAR is exact
                diffs.append(f"{nvme.name}: CMB BAR{CMB_BAR} is {format_size(bar['size'])}, "
                             f"spec asks for {format_size(nvme.cmb)}")
        elif CMB_BAR in bars:
            diffs.append(f"{nvme.name}: has a BAR{CMB_BAR} but the spec gives no CMB")
        if nvme.pmr:
            bar = bars.get(PMR_BAR)
            if bar is None:
                diffs.append(f"{nvme.name}: no PMR BAR{PMR_BAR} (spec: {format_size(nvme.pmr.size)})")
            elif bar["size"] != nvme.pmr.size:
                diffs.append(f"{nvme.name}: PMR BAR{PMR_BAR} is {format_size(bar['size'])}, "
                             f"spec says {format_size(nvme.pmr.size)}")
    return diffs
