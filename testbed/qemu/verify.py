"""Compare the PCI hierarchy a live QEMU built with what the topology says.

QEMU starts paused (``-S``).  While paused, the QOM tree already tells which
bus every device sits on (``parent_bus``) and its type.  BAR sizes behind
bridges only show in ``query-pci`` once firmware has numbered the buses, so the
machine is then let run in its firmware (no kernel) until every bridge has a
secondary bus number; then every node's PCI address (the slot and function QEMU gave it:
the identity the guest check finds it by, :mod:`testbed.qemu.addresses`) and the
endpoints' BARs (an NVMe's CMB and PMR) are checked.

    >>> diffs = verify(load_topology("switch-cmb"))         # doctest: +SKIP
    >>> diffs                                                 # doctest: +SKIP
    []
"""

from __future__ import annotations

import time
from typing import Any

from ..spec.endpoints import ENDPOINTS, Endpoint
from ..spec.model import RootPort, Topology
from ..spec.units import format_size
from ..util.rundir import RunDir
from .addresses import addresses
from .backing import create_backing_files
from ..errors import QemuError
from .cmdline import build, expander_firmware
from .devices import DEVICES, DISABLE_ACS
from .machine import QemuMachine, QmpSocket
from .probe import probe, probe_for

ENUMERATION_TIMEOUT = 30.0
UEFI_ENUMERATION_TIMEOUT = 180.0  # EDK2 under TCG on a loaded 2-core host


def expected_parents(topo: Topology) -> dict[str, str]:
    """QEMU id -> the id of the device whose bus it plugs into (the root bus's own id, pcie.0,
    for the root complex)."""
    root = topo.profile.root_bus.name
    return {name: (parent.name if parent else root) for name, parent in topo.parents().items()}


def verify(topo: Topology, binary: str | None = None) -> list[str]:
    """Start the topology's QEMU and return the differences (empty list: a match)."""
    caps = probe(binary, topo.profile.qemu_binary) if binary else probe_for(topo)
    # a machine whose default firmware leaves the buses unnumbered (aarch64's virt boots
    # kernels without one) runs its UEFI firmware for the check instead: slower under TCG
    fw: list[str] = []
    timeout = ENUMERATION_TIMEOUT
    if not topo.profile.firmware.default_enumerates:
        found = expander_firmware(caps.runner, topo.profile)
        if found is None:
            raise QemuError(f"testbed verify of an {topo.profile.arch} machine runs its UEFI "
                            f"firmware, and there is none: apt-get install "
                            f"{topo.profile.firmware.expander_bios_package}")
        fw, timeout = ["-bios", str(found)], UEFI_ENUMERATION_TIMEOUT
    with RunDir.create(f"verify-{topo.name}") as run:
        create_backing_files(topo, run.path)
        sock = QmpSocket.in_dir(run.path)
        vm = QemuMachine(build(topo, caps.runner, run.path, "tcg", qmp=sock.path, paused=True,
                               extra=fw),
                         run.path, sock, name=f"verify {topo.name}",
                         env=caps.runner.environ())
        vm.launch()
        try:
            diffs = _check_qom(vm, topo, DISABLE_ACS in caps.device_props.get(
                DEVICES[RootPort].qemu_device, frozenset()))
            vm.qmp("cont")
            diffs += _check_bars(vm, topo, timeout)
        finally:
            vm.shutdown()
    return diffs


def _check_qom(vm: QemuMachine, topo: Topology, has_disable_acs: bool = True) -> list[str]:
    """The QOM tree against the spec; a QEMU whose root port has no ``disable-acs`` (11.1)
    cannot be asked about it (validation refuses ``acs: false`` there)."""
    diffs = []
    for node in topo.nodes():
        path = f"/machine/peripheral/{node.name}"
        try:
            qtype = vm.qom_get(path, "type")
            bus = vm.qom_get(path, "parent_bus")
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
        if isinstance(node, RootPort) and qtype == want_type and has_disable_acs:
            off = vm.qom_get(path, DISABLE_ACS)
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


def _check_bars(vm: QemuMachine, topo: Topology,
                timeout: float = ENUMERATION_TIMEOUT) -> list[str]:
    """After firmware enumeration: every node at its address, every endpoint's BARs."""
    deadline = time.monotonic() + timeout
    while True:
        buses = vm.qmp("query-pci")
        if _numbered(buses, topo) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    devices = _pci_devices(buses)
    return _addresses(devices, topo) + [d for e in topo.endpoints() if e.name in devices
                                        for d in _endpoint_bars(e, devices[e.name])]


def _addresses(devices: dict[str, dict[str, Any]], topo: Topology) -> list[str]:
    diffs = []
    places = addresses(topo)
    for node in topo.nodes():
        dev = devices.get(node.name)
        if dev is None:
            diffs.append(f"{node.name}: not visible in query-pci after firmware enumeration")
            continue
        want = places[node.name]
        got = dev.get("slot", -1) << 3 | dev.get("function", 0)
        if got != want.path[-1]:
            diffs.append(f"{node.name}: QEMU put it in slot {got >> 3:02x}.{got & 7}, the "
                         f"testbed expects {want.path[-1] >> 3:02x}.{want.path[-1] & 7} "
                         f"({want.text})")
        elif len(want.path) == 1 and dev.get("bus") != int(want.root.split(":")[1], 16):
            diffs.append(f"{node.name}: QEMU put it on bus {dev.get('bus')}, the testbed "
                         f"expects root bus {want.root}")
    return diffs


def _endpoint_bars(endpoint: Endpoint, dev: dict[str, Any]) -> list[str]:
    """The memory BARs the endpoint's kind says QEMU shows (an NVMe's CMB and PMR)."""
    diffs = []
    got = {r["bar"]: r for r in dev.get("regions", []) if r.get("type") == "memory"}
    for bar in ENDPOINTS[type(endpoint)].bars(endpoint):
        have = got.get(bar.index)
        if bar.size is None:
            if have is not None:
                diffs.append(f"{endpoint.name}: has a BAR{bar.index} but the spec gives no "
                             f"{bar.what}")
        elif have is None:
            diffs.append(f"{endpoint.name}: no {bar.what} BAR{bar.index} (spec: "
                         f"{format_size(bar.size)})")
        elif have["size"] != bar.size:  # such BARs are powers of two, so exact
            diffs.append(f"{endpoint.name}: {bar.what} BAR{bar.index} is "
                         f"{format_size(have['size'])}, the spec says {format_size(bar.size)}")
    return diffs
