"""ACS (Access Control Services) as Linux sets and reads it, on the testbed's fabrics.

What a bridge's ACS capability holds is QEMU's: the pcie-root-port has SV TB RR CR UF DT
(0x005f; none with ``acs: false``), the x3130 switch ports and the NVMe have no ACS
capability at all.  What its control register holds is the kernel's doing,
``pci_enable_acs()`` in drivers/pci/pci.c (7.3.4), run for every device before it is
put in an IOMMU group and again when a driver binds:

1. ``ctrl = fw_ctrl``, the value firmware left (QEMU resets it to 0; qboot keeps it);
2. when an IOMMU driver called ``pci_request_acs()`` (intel DMAR detection, AMD IVRS
   detection, ACPI VIOT for virtio-iommu: every vIOMMU the testbed offers), the bits
   SV RR CR UF the capability has are set, and TB too when ATS is off (``pci=noats``);
3. ``pci=disable_acs_redir=DEVS`` then sets ``ctrl = fw_ctrl & ~(RR|CR|EC)`` on a matching
   device and ``pci=config_acs=FLAGS@DEV;...`` sets ``ctrl = (fw_ctrl & ~mask) | flags``:
   both start again from the *firmware* value, so on QEMU they also drop the SV and UF
   of step 2 (observed: "Configured ACS to 0x0000");
4. QEMU keeps only the bits the capability has (its write mask is the capability).

The kernel's tests of the result: ``pci_acs_enabled(dev, flags)`` (a device isolates for
IOMMU grouping) and ``pci_bridge_has_acs_redir()`` (P2PDMA: RR, CR or EC set).

    >>> from testbed.spec.model import RootPort, Topology, Iommu
    >>> topo = Topology("t", iommu=Iommu("intel"), pcie=(RootPort("rp0"),))
    >>> state = node_state(topo.pcie[0], topo)
    >>> hex(state.cap), hex(state.ctrl), flag_names(state.ctrl)
    ('0x5f', '0x1d', 'SV RR CR UF')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from ..qemu.devices import DEVICES, has_acs
from ..spec.model import Node, Topology
from .cmdline import kernel_view

SV, TB, RR, CR, UF, EC, DT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
FLAGS = ((SV, "SV"), (TB, "TB"), (RR, "RR"), (CR, "CR"), (UF, "UF"), (EC, "EC"), (DT, "DT"))
ALL_FLAGS = SV | TB | RR | CR | UF | EC | DT
REQ_ACS_FLAGS = SV | RR | CR | UF      # what an isolating port needs (drivers/iommu/iommu.c)
REDIRECT = RR | CR | EC                # pci_bridge_has_acs_redir() (drivers/pci/p2pdma.c)
QEMU_ROOT_PORT_CAP = SV | TB | RR | CR | UF | DT  # 0x005f, read from the guest
FIRMWARE_CTRL = 0                      # QEMU's reset value; qboot leaves it alone

# who calls pci_request_acs() for each vIOMMU model
REQUESTED_BY = {
    "intel": "the intel IOMMU driver (DMAR detection, drivers/iommu/intel/dmar.c)",
    "amd": "the AMD IOMMU driver (IVRS detection, drivers/iommu/amd/init.c)",
    "virtio": "ACPI VIOT parsing for virtio-iommu (drivers/acpi/viot.c; on arm64's device "
              "tree of_iommu_configure(), drivers/iommu/of_iommu.c)",
    # arm64: the firmware's description of the SMMU; the testbed boots the device tree
    # (of_iommu_configure() as each PCI device is configured), UEFI boots have IORT
    "smmuv3": "the SMMUv3's firmware description (device tree: of_iommu_configure(), "
              "drivers/iommu/of_iommu.c; ACPI: IORT, drivers/acpi/arm64/iort.c)",
}

_HEX = r"\s*(?:0[xX])?([0-9a-fA-F]+)"


def flag_names(value: int | None) -> str:
    """'SV RR CR UF'; '-' for none; 'no ACS' for a missing capability."""
    if value is None:
        return "no ACS"
    return " ".join(name for bit, name in FLAGS if value & bit) or "-"


# -- the kernel command line ---------------------------------------------------------------

@dataclass(frozen=True)
class PciParams:
    """The ``pci=`` options that change ACS, as pci_setup() keeps them (the last wins;
    options are separated by commas, devices inside one option by semicolons)."""

    disable_acs_redir: str | None = None
    config_acs: str | None = None
    noats: bool = False

    @classmethod
    def from_cmdline(cls, words: Sequence[str]) -> "PciParams":
        redir = config = None
        noats = False
        for word in words:
            if not word.startswith("pci="):
                continue
            for opt in word[len("pci="):].split(","):
                if opt.startswith("disable_acs_redir="):
                    redir = opt[len("disable_acs_redir="):]
                elif opt.startswith("config_acs="):
                    config = opt[len("config_acs="):]
                elif opt.startswith("noats"):
                    noats = True
        return cls(redir, config, noats)


@dataclass(frozen=True)
class DeviceId:
    """What pci_dev_str_match() compares: IDs, and (when the guest is known) the addresses
    from the device up to the root bus, device first (``0000:02:00.0``)."""

    vendor: int
    device: int
    subsystem_vendor: int = 0  # QEMU's bridges have no subsystem IDs
    subsystem_device: int = 0
    chain: tuple[str, ...] = ()

    @classmethod
    def of(cls, node: Node, chain: Sequence[str] = ()) -> "DeviceId":
        vendor, device = DEVICES[type(node)].pci_id
        return cls(int(vendor, 16), int(device, 16), chain=tuple(chain))


def _bdf(text: str) -> tuple[int, int, int]:
    seg, bus, rest = text.split(":")
    slot, fn = rest.split(".")
    return int(seg, 16), int(bus, 16), int(slot, 16) << 3 | int(fn, 16)


def _match_path(dev: DeviceId, spec: str) -> bool | None:
    """pci_dev_str_match_path(): ``[SEG:]BUS:DEV.FN[/DEV.FN]...``, the last element is the
    device itself.  ValueError on a malformed path; None when the device's address is not
    known (no guest)."""
    parts = spec.split("/")
    steps = []
    for step in reversed(parts[1:]):
        m = re.fullmatch(_HEX + r"\." + _HEX, step)
        if not m:
            raise ValueError(step)
        steps.append(int(m[1], 16) << 3 | int(m[2], 16))
    m = (re.fullmatch(_HEX + ":" + _HEX + ":" + _HEX + r"\." + _HEX, parts[0])
         or re.fullmatch(_HEX + ":" + _HEX + r"\." + _HEX, parts[0]))
    if not m:
        raise ValueError(parts[0])
    nums = [int(g, 16) for g in m.groups()]
    seg, bus, slot, fn = nums if len(nums) == 4 else [0, *nums]
    if not dev.chain:
        return None
    for i, devfn in enumerate(steps):
        if i + 1 >= len(dev.chain) or _bdf(dev.chain[i])[2] != devfn:
            return False
    top = dev.chain[len(steps)] if len(steps) < len(dev.chain) else None
    return top is not None and _bdf(top) == (seg, bus, slot << 3 | fn)


def _match(dev: DeviceId, text: str, unresolved: list[str]) -> tuple[int, int]:
    """pci_dev_str_match() at the start of ``text``: (1 match / 0 no / -1 bad, consumed).
    An address that cannot be resolved counts as no match and is added to ``unresolved``."""
    if text.startswith("pci:"):
        m = re.match(_HEX + ":" + _HEX + ":" + _HEX + ":" + _HEX, text[4:]) \
            or re.match(_HEX + ":" + _HEX, text[4:])
        if not m:
            return -1, 0
        ids = [int(g, 16) & 0xFFFF for g in m.groups()] + [0, 0]
        want = (dev.vendor, dev.device, dev.subsystem_vendor, dev.subsystem_device)
        ok = all(not x or x == w for x, w in zip(ids[:4], want))
        return (1 if ok else 0), 4 + m.end()
    end = text.find(";")
    end = len(text) if end < 0 else end
    try:
        found = _match_path(dev, text[:end])
    except ValueError:
        return -1, end
    if found is None:
        unresolved.append(text[:end])
    return (1 if found else 0), end


def config_acs(dev: DeviceId, param: str | None, acs_mask: int, acs_flags: int,
               unresolved: list[str] | None = None) -> tuple[int, int] | None:
    """__pci_config_acs(): (mask, flags) to apply when ``param`` names ``dev``, else None.
    ``acs_mask`` 0 means each entry carries its own ``FLAGS@`` (config_acs).  Addresses
    that need the guest's bus numbers, when ``dev`` has none, go to ``unresolved``."""
    if not param:
        return None
    mask, flags, p, ret = acs_mask, acs_flags, param, 0
    while p:
        if not acs_mask:
            at = p.find("@")
            if at < 0:
                return None  # "ACS Flags missing"
            mask = flags = 0
            for shift, ch in enumerate(reversed(p[:at])):
                if ch in "01":
                    mask |= 1 << shift
                    flags |= (ch == "1") << shift
                elif ch not in "xX":
                    return None  # "Invalid ACS flags... Ignoring"
            p = p[at + 1:]
        if mask & ~ALL_FLAGS:
            return None  # "Invalid ACS flags specified"
        ret, used = _match(dev, p, unresolved if unresolved is not None else [])
        p = p[used:]
        if ret != 0 or not p or p[0] not in ";,":
            break
        p = p[1:]
    return (mask, flags) if ret == 1 else None


# -- one device ----------------------------------------------------------------------------

@dataclass(frozen=True)
class AcsState:
    """A device's ACS capability (None: it has none) and the control bits the kernel
    leaves in it, with the steps that set them (for people)."""

    cap: int | None
    ctrl: int = 0
    steps: tuple[str, ...] = field(default=(), compare=False)
    unresolved: tuple[str, ...] = field(default=(), compare=False)

    @property
    def redirect(self) -> bool:
        """pci_bridge_has_acs_redir(): P2PDMA sends transfers through the root complex."""
        return self.cap is not None and bool(self.ctrl & REDIRECT)


def enable(cap: int | None, dev: DeviceId, requested_by: str | None, params: PciParams,
           fw_ctrl: int = FIRMWARE_CTRL) -> AcsState:
    """pci_enable_acs() on one device (then QEMU's write mask)."""
    if cap is None:
        return AcsState(None, 0, ("no ACS capability: nothing to enable",))
    ctrl, steps, unresolved = fw_ctrl, [f"firmware left {fw_ctrl:#06x}"], []
    if requested_by:
        ctrl |= cap & (SV | RR | CR | UF | (TB if params.noats else 0))
        steps.append(f"{requested_by} requested ACS: {flag_names(ctrl)} enabled")
    for name, param, mask, flags in (
            ("disable_acs_redir", params.disable_acs_redir, REDIRECT, ~REDIRECT & 0xFFFF),
            ("config_acs", params.config_acs, 0, 0)):
        missing: list[str] = []
        found = config_acs(dev, param, mask, flags, missing)
        unresolved += [f"pci={name}: {a} needs the guest's bus numbers" for a in missing]
        if found is not None:
            mask, flags = found
            ctrl = (fw_ctrl & ~mask) | (flags & mask)
            steps.append(f"pci={name}={param} matches: ctrl = firmware {fw_ctrl:#06x} with "
                         f"mask {mask:#06x} set to {flags & mask:#06x} -> {ctrl:#06x}")
    if ctrl & ~cap:
        steps.append(f"QEMU keeps only the capability's bits: {ctrl & cap:#06x}")
    return AcsState(cap, ctrl & cap, tuple(steps), tuple(unresolved))


def requester(topo: Topology) -> str | None:
    """Who calls pci_request_acs() on this machine (None: no IOMMU driver does, e.g. no
    vIOMMU, or ``intel_iommu=off`` on the command line)."""
    view = kernel_view(topo)
    return REQUESTED_BY.get(view.iommu) if view.acs_requested else None


def capability(node: Node) -> int | None:
    """The ACS capability QEMU gives the node (None: it has none)."""
    return QEMU_ROOT_PORT_CAP if has_acs(node) else None


def node_state(node: Node, topo: Topology, chain: Sequence[str] = (),
               requested: bool | None = None) -> AcsState:
    """The ACS capability and control of a topology node once the guest kernel booted;
    ``chain`` (addresses from the node up, as the guest numbered them) resolves
    command-line devices given by address; ``requested`` overrides whether an IOMMU
    driver asked for ACS (default: what the topology's command line leaves running)."""
    who = requester(topo)
    if requested is not None:
        who = (who or REQUESTED_BY.get(topo.iommu.model, "an IOMMU driver")) if requested \
            else None
    return enable(capability(node), DeviceId.of(node, chain), who,
                  PciParams.from_cmdline(topo.kernel_cmdline))


# -- the kernel's tests ----------------------------------------------------------------------

def flags_enabled(cap: int | None, ctrl: int, flags: int) -> bool:
    """pci_acs_flags_enabled(): bits the capability lacks count as hard-wired on (except
    EC, which must be enabled)."""
    if cap is None:
        return False
    flags &= cap | EC
    return ctrl & flags == flags


def acs_enabled(kind: str, multifunction: bool, cap: int | None, ctrl: int, flags: int) -> bool:
    """pci_acs_enabled() for a device of ``kind`` (root_port, downstream, upstream,
    endpoint, rc_endpoint, pci = conventional PCI, bridge = PCIe-to-PCI and the like).
    No device quirk applies: the Intel PCI_ANY_ID quirks match only root ports and
    RCiEPs of Intel's, and QEMU's 1b36/104c devices have none."""
    if kind in ("pci", "bridge"):
        return False
    if kind in ("root_port", "downstream"):
        return flags_enabled(cap, ctrl, flags)
    if multifunction:  # endpoint, upstream port, RCiEP
        return flags_enabled(cap, ctrl, flags)
    return True
