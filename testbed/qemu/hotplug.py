"""Hot-unplug and hot-plug an NVMe controller of a running machine over QMP.

The slot must be hot-pluggable: the device table's ``hotplug_slot`` (a pcie-root-port or
an xio3130 downstream port; not the root complex).  Who drives it is the topology's
``machine.hotplug`` (the profile's :class:`~testbed.machines.Hotplug`): on q35 by default
ACPI PCI hot-plug (``acpi-pci-hotplug-with-bridge-support``, QEMU's default since 6.1)
handles both, so the guest's acpiphp sees the removal at once; with ``hotplug: native``
pciehp does, after its 5 s attention-button wait.

Unplug: ``device_del`` returns at once; the removal is done when ``DEVICE_DELETED`` names
the controller's id.  The ``nvme-ns`` children are not deleted with it (QEMU re-parents
them), and they keep their drive and its image lock.

Replug: QEMU's NVMe bus takes no hot-plugged namespaces, so namespace 1 comes back through
the controller's own ``drive=`` property: ``blockdev-add`` of the same image with
``locking: off`` (the orphaned namespace still holds the lock), then ``device_add`` with the
controller's properties from :func:`testbed.qemu.cmdline.nvme_device` (same id, serial,
bus, CMB) plus ``drive=``.  Namespaces after the first cannot come back.

    >>> slot = hotplug_slot(load_topology("switch-cmb"), "nvme0")        # doctest: +SKIP
    >>> unplug(machine, slot); replug(machine, slot, run_dir)             # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HotplugError, QemuError
from ..spec.model import Nvme, Topology
from .cmdline import namespace_path, nvme_device
from .devices import DEVICES
from .machine import QmpLike

UNPLUG_TIMEOUT = 15.0  # acpiphp removes within ~1 s (pciehp: see Hotplug.unplug_seconds)


@dataclass(frozen=True)
class Slot:
    """Where an NVMe controller sits: the port (a QEMU bus id) that can hot-plug it."""

    nvme: Nvme
    bus: str
    port_kind: str  # the device table's label: "root port", "switch downstream port"
    unplug_seconds: float = UNPLUG_TIMEOUT  # device_del to DEVICE_DELETED, at most


def hotplug_slot(topo: Topology, name: str) -> Slot:
    """The hot-plug slot of NVMe ``name``; HotplugError when it has none."""
    node = topo.find(name)
    if not isinstance(node, Nvme):
        raise HotplugError(f"{name} is not an NVMe controller", name, "slot")
    parent = topo.parents()[name]
    if parent is None:
        raise HotplugError(f"{name} sits on the root complex ({topo.profile.root_bus.name}), "
                           "which has no hot-plug slot: put it below a root port or a switch "
                           "downstream port", name, "slot")
    kind = DEVICES[type(parent)]
    if not kind.hotplug_slot:
        raise HotplugError(f"{name} sits on {parent.name}, a {kind.label}, which has no "
                           "hot-plug slot", name, "slot")
    return Slot(node, parent.name, kind.label, topo.machine.hotplug_mode.unplug_seconds)


def unplug(machine: QmpLike, slot: Slot, timeout: float | None = None) -> dict[str, Any]:
    """``device_del`` and wait for ``DEVICE_DELETED`` (at most ``timeout``, default the
    slot's ``unplug_seconds``); the step as data (seconds, event)."""
    name = slot.nvme.name
    timeout = slot.unplug_seconds if timeout is None else timeout
    machine.clear_events()
    start = time.monotonic()
    try:
        machine.qmp("device_del", id=name)
    except QemuError as exc:
        raise HotplugError(f"device_del {name}: {exc}", name, "device_del") from None
    event = machine.event_wait("DEVICE_DELETED", timeout,
                               match=lambda e: e.get("data", {}).get("device") == name)
    seconds = round(time.monotonic() - start, 3)
    if event is None:
        raise HotplugError(f"device_del {name}: no DEVICE_DELETED within {timeout:.0f} s "
                           "(the guest did not release the slot)", name, "device_del")
    return {"qmp": "device_del", "device": name, "bus": slot.bus, "seconds": seconds,
            "event": event.get("data", {})}


def free_node_name(machine: QmpLike, base: str) -> str:
    """``base-rN`` not yet used by a block node (each replug needs a fresh one)."""
    try:
        used = {n.get("node-name") for n in machine.qmp("query-named-block-nodes")}
    except QemuError:
        used = set()
    n = 1
    while f"{base}-r{n}" in used:
        n += 1
    return f"{base}-r{n}"


def replug(machine: QmpLike, slot: Slot, run_dir: Path) -> dict[str, Any]:
    """``blockdev-add`` namespace 1's image and ``device_add`` the controller again."""
    nvme = slot.nvme
    props: dict[str, Any] = nvme_device(nvme, slot.bus)
    step: dict[str, Any] = {"qmp": "device_add", "device": nvme.name, "bus": slot.bus}
    start = time.monotonic()
    if nvme.namespaces:
        ns = nvme.namespaces[0]
        node = free_node_name(machine, f"tb-{nvme.name}-ns1")
        image = namespace_path(nvme, 0, run_dir)
        try:
            machine.qmp("blockdev-add", driver="raw", **{"node-name": node}, file={
                "driver": "file", "filename": str(image), "locking": "off"})
        except QemuError as exc:
            raise HotplugError(f"blockdev-add {image}: {exc}", nvme.name, "blockdev-add") \
                from None
        props["drive"] = node
        if ns.block_size != 512:
            props.update(logical_block_size=ns.block_size, physical_block_size=ns.block_size)
        step.update(node=node, image=str(image))
        if len(nvme.namespaces) > 1:
            step["lost_namespaces"] = len(nvme.namespaces) - 1
    try:
        machine.qmp("device_add", **props)
    except QemuError as exc:
        raise HotplugError(f"device_add {nvme.name}: {exc}", nvme.name, "device_add") from None
    step.update(props={k: v for k, v in props.items()}, seconds=round(time.monotonic() - start, 3))
    return step
