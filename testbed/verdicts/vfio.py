"""The ``vfio-p2p`` family: P2P DMA to a BAR without struct pages, through VFIO and iommufd.

The provider's CMB (BAR2) is put into the client's IO address space — the client is
driven from userspace over VFIO — by one of the methods below; the oracle says what the
guest kernel does with each, from its configuration, the vIOMMU (model and mode) and
the IOMMU groups:

- ``type1``: VFIO_IOMMU_MAP_DMA of an mmap of the BAR (VM_PFNMAP).  vfio_iommu_type1
  follows the VMA's PFNs (``vaddr_get_pfns`` -> ``follow_fault_pfn``, no page pinned)
  and maps the BAR's physical address at the IOVA: ``ok``, map type ``iommu-mmio``.
- ``pfnmap``: IOMMU_IOAS_MAP of the same mmap into an iommufd IOAS.  iommufd pins user
  pages (``pin_user_pages_fast``) and a VM_PFNMAP|VM_IO VMA has none: ``rejected`` with
  EFAULT, and no IOMMU mapping of the BAR.
- ``dmabuf``: VFIO_DEVICE_FEATURE_DMA_BUF exports the BAR range, IOMMU_IOAS_MAP_FILE
  imports it (6.19: ``vfio_pci_dma_buf_iommufd_map``): ``ok``, ``iommu-mmio``.
- ``revoke-decoding`` / ``revoke-reset`` / ``revoke-close`` / ``revoke-unplug``: after a
  dma-buf mapping, the exporter's memory goes away (memory decoding cleared, function
  reset, device closed, device hot-unplugged); vfio-pci revokes its dma-bufs
  (``vfio_pci_dma_buf_move``/``_cleanup``), iommufd unmaps the IOVA
  (``iopt_revoke_notify``): the client's DMA faults in the vIOMMU and the CMB is not
  written: ``revoked``; a new export afterwards works.

Every vIOMMU QEMU offers translates for VFIO even in passthrough mode: a VFIO-owned
group gets an UNMANAGED paging domain, whatever the default domain is.  VFIO and iommufd
refuse a group whose MSIs cannot be isolated (no interrupt remapping: virtio-iommu) with
EPERM unless ``allow_unsafe_interrupts`` is set, which the testbed does there (a test
guest) and says so.

    >>> from testbed.spec import load_topology
    >>> k = VfioKernel.from_probe({"release": "7.3.4", "config": {"values": {
    ...     "CONFIG_VFIO_IOMMU_TYPE1": "m", "CONFIG_VFIO_CONTAINER": "y",
    ...     "CONFIG_IOMMUFD": "n", "CONFIG_VFIO_PCI_DMABUF": "y"}}})
    >>> topo = load_topology("switch-cmb-intel-iommu")
    >>> [(m, predict_vfio(topo, "nvme0", "nvme1", m, k).verdict) for m in ("type1", "dmabuf")]
    [('type1', 'ok'), ('dmabuf', 'unsupported')]
"""

from __future__ import annotations

import errno as errno_mod
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..machines import Hotplug
from ..guest_tool.schema import VFIO_BAR_IOVA as BAR_IOVA
from ..spec.model import Nvme, Topology
from .cmdline import kernel_view

METHODS = ("type1", "pfnmap", "dmabuf")
TRIGGERS = ("decoding", "reset", "close", "unplug")
REVOKE = tuple(f"revoke-{t}" for t in TRIGGERS)
IOMMU_MMIO, NO_MAP = "iommu-mmio", "none"
REVOKED = "revoked"
REFUSAL_ERRNO = errno_mod.EFAULT


def record_name(method: str) -> str:
    return f"vfio-{method}"


@dataclass(frozen=True)
class VfioKernel:
    """What the guest kernel offers, as the guest tool's ``vfio-p2p --probe`` read it."""

    release: str = "?"
    config: Mapping[str, str] = field(default_factory=dict)  # CONFIG_X -> y/m/n
    facts: Mapping[str, Any] = field(default_factory=dict)
    config_source: str | None = None

    @classmethod
    def from_probe(cls, kernel: Mapping[str, Any]) -> "VfioKernel":
        cfg = kernel.get("config") or {}
        return cls(str(kernel.get("release") or "?"), dict(cfg.get("values") or {}),
                   dict(kernel.get("facts") or {}), cfg.get("source"))

    def has(self, option: str, fact: str | None = None) -> bool:
        """The option is y or m; without a config, the run-time fact decides."""
        if self.config:
            return self.config.get(option, "n") in ("y", "m")
        return bool(fact and self.facts.get(fact))

    @property
    def type1(self) -> bool:
        return self.has("CONFIG_VFIO_IOMMU_TYPE1", "dev_vfio") and \
            self.config.get("CONFIG_VFIO_CONTAINER", "y") != "n"

    @property
    def iommufd(self) -> bool:
        return self.has("CONFIG_IOMMUFD", "dev_iommu")

    @property
    def cdev(self) -> bool:
        return self.has("CONFIG_VFIO_DEVICE_CDEV", "vfio_cdev")

    def has_hotplug(self, hotplug: Hotplug) -> bool:
        """The hot-plug driver the machine uses (pciehp, acpiphp) is built (True without
        a config: assume so)."""
        return self.config.get(hotplug.config, "y") != "n"

    @property
    def dmabuf(self) -> bool:
        return self.has("CONFIG_VFIO_PCI_DMABUF", "dev_iommu")


@dataclass(frozen=True)
class GroupView:
    """The oracle's IOMMU groups of a pair: per device, its group and what in it is not
    a bridge or one of the topology's NVMe controllers (which the testbed may hand to
    VFIO along with it)."""

    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    foreign: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class VfioPrediction:
    method: str
    verdict: str  # ok | rejected | revoked | unsupported
    map_type: str | None  # iommu-mmio | none | None (nothing is mapped)
    reason: str
    errno: int | None = None  # a refusal's errno
    unsafe_interrupts: bool = False  # the testbed sets allow_unsafe_interrupts
    qemu_limit: bool = False


def interrupt_remapping(topo: Topology) -> tuple[bool, str]:
    """(remapped, why): can the vIOMMU isolate MSIs (IRQ_DOMAIN_FLAG_ISOLATED_MSI)?"""
    view = kernel_view(topo)
    viommu = topo.profile.viommu(view.iommu)
    if viommu is None or not viommu.remaps_x2apic:
        return False, f"{view.iommu}-iommu does not remap interrupts here"
    if "intremap=off" in view.words:
        return False, "intremap=off on the kernel command line"
    return True, (f"QEMU's {viommu.qemu_device} remaps interrupts (on with KVM, its default "
                  "under TCG)")


def _unsupported(method: str, why: str) -> VfioPrediction:
    return VfioPrediction(method, "unsupported", None, why)


def predict_vfio(topo: Topology, provider: str, client: str, method: str,
                 kernel: VfioKernel, groups: GroupView | None = None) -> VfioPrediction:
    """What the guest kernel does with ``method`` for (provider, client)."""
    view = kernel_view(topo)
    prov = topo.find(provider)
    if not isinstance(prov, Nvme) or not prov.cmb:
        return _unsupported(method, f"{provider} has no CMB (no BAR2 to map)")
    if not isinstance(topo.find(client), Nvme):  # seam: issue 19 (endpoint kinds)
        return _unsupported(method, f"{client} is not an NVMe controller: the testbed's "
                                    "userspace driver drives NVMe only")
    if view.iommu == "none":
        why = view.why or "the machine has no vIOMMU"
        return _unsupported(method, f"{why}: no IOMMU driver runs, so the devices are in no "
                                    "IOMMU group and vfio-pci cannot take them")
    for dev, foreign in (groups.foreign.items() if groups else ()):
        if foreign and dev in (provider, client):
            members = ", ".join((groups.groups if groups else {}).get(dev, ()))
            return _unsupported(method, f"the IOMMU group of {dev} ({{{members}}}) is not "
                                        f"viable: {', '.join(foreign)} would have to leave "
                                        "its driver, and the testbed takes only bridges and "
                                        "its own NVMe controllers")
    remapped, ir_why = interrupt_remapping(topo)
    where = f"Linux {kernel.release}"
    domain = (f"the {view.iommu} vIOMMU ({'passthrough' if not view.translating else 'strict'}"
              f" mode; VFIO still gets a translating domain of its own)")
    unsafe = "" if remapped else (f"; {ir_why}, so the testbed sets allow_unsafe_interrupts "
                                  "(VFIO and iommufd refuse the group with EPERM otherwise)")
    common = dict(unsafe_interrupts=not remapped)
    if method == "type1":
        if not kernel.type1:
            return _unsupported(method, f"{where} has no VFIO type1 container "
                                        "(CONFIG_VFIO_IOMMU_TYPE1, CONFIG_VFIO_CONTAINER)")
        return VfioPrediction(
            method, "ok", IOMMU_MMIO,
            f"{where}: VFIO_IOMMU_MAP_DMA of the mmap of {provider}'s BAR2 (VM_PFNMAP): "
            f"vfio_iommu_type1 follows the VMA's PFNs (follow_fault_pfn, nothing pinned) and "
            f"maps the BAR's physical address at IOVA {BAR_IOVA:#x} in {domain}; QEMU "
            f"translates {client}'s DMA there and delivers it to the CMB{unsafe}", **common)
    if not kernel.iommufd:
        return _unsupported(method, "no IOMMUFD in this kernel's config")
    if not kernel.cdev:
        return _unsupported(method, "no VFIO device cdev (CONFIG_VFIO_DEVICE_CDEV) in this "
                                    "kernel's config: devices cannot be bound to an iommufd")
    if method == "pfnmap":
        return VfioPrediction(
            method, "rejected", NO_MAP,
            f"{where}: IOMMU_IOAS_MAP of the mmap of {provider}'s BAR2 with the devices "
            f"attached: iommufd pins user pages (pin_user_pages_fast) and a VM_PFNMAP|VM_IO "
            f"VMA has none, so the map fails with EFAULT and no IOMMU mapping of the BAR is "
            f"made (P2P to a BAR goes through a dma-buf instead){unsafe}",
            errno=REFUSAL_ERRNO, **common)
    if not kernel.dmabuf:
        return _unsupported(method, "no CONFIG_VFIO_PCI_DMABUF in this kernel's config: "
                                    "vfio-pci cannot export a BAR as a dma-buf")
    export = (f"{where}: VFIO_DEVICE_FEATURE_DMA_BUF exports {provider}'s BAR2 and "
              f"IOMMU_IOAS_MAP_FILE imports it (vfio_pci_dma_buf_iommufd_map hands iommufd "
              f"the BAR's physical range) at IOVA {BAR_IOVA:#x} in {domain}")
    if method == "dmabuf":
        return VfioPrediction(method, "ok", IOMMU_MMIO,
                              f"{export}; QEMU translates {client}'s DMA to the CMB{unsafe}",
                              **common)
    hotplug = topo.machine.hotplug_mode
    if method == "revoke-unplug" and not kernel.has_hotplug(hotplug):
        return _unsupported(method, f"{where} has no {hotplug.driver} ({hotplug.config} not "
                                    f"set) and this machine hot-plugs through {hotplug.how}: "
                                    f"the guest never sees the device_del of {provider}, so it "
                                    "cannot be unplugged")
    if method in REVOKE:
        how = {"revoke-decoding": "clearing memory decoding in the provider's command "
                                  "register (vfio_pci_config: vfio_pci_dma_buf_move)",
               "revoke-reset": "VFIO_DEVICE_RESET of the provider (vfio_pci_dma_buf_move "
                               "around the function reset)",
               "revoke-close": "closing the provider's device (vfio_pci_dma_buf_cleanup)",
               "revoke-unplug": "QMP device_del of the provider: the kernel asks for the "
                                "device back through the request eventfd, the testbed "
                                f"closes it (vfio_pci_dma_buf_cleanup) and {hotplug.driver} "
                                "removes it"}[method]
        return VfioPrediction(
            method, REVOKED, IOMMU_MMIO,
            f"{export}; then {how} revokes the dma-buf: iommufd's iopt_revoke_notify unmaps "
            f"the IOVA, so {client}'s next DMA there faults in the {view.iommu} vIOMMU, the "
            f"CMB is not written and the command fails or times out; iommufd does not map a "
            f"revoked dma-buf again, a new export after restoring works{unsafe}", **common)
    raise ValueError(f"unknown vfio-p2p method {method!r}")
