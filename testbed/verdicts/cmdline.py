"""What the guest kernel's command line changes in the P2P decision: whether the IOMMU
driver runs at all, whether DMA is translated, whether ACS gets enabled.

The command line is the one the testbed boots with: the image's words, the vIOMMU's,
the testbed's, then the topology's ``kernel_cmdline`` (later ``key=value`` words win).

    >>> from testbed.spec import load_topology
    >>> topo = load_topology("switch-cmb-intel-iommu")
    >>> view = kernel_view(topo)
    >>> view.iommu, view.translating, view.acs_requested
    ('intel', True, True)
    >>> view = kernel_view(topo, extra=("intel_iommu=off",))
    >>> view.iommu, view.translating, view.acs_requested
    ('none', False, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..kernel.cmdline import merge_words
from ..qemu.devices import iommu_cmdline
from ..spec.model import Topology


@dataclass(frozen=True)
class KernelView:
    """The IOMMU as the guest kernel will run it."""

    iommu: str  # none | intel | amd | virtio: the driver that is active
    translating: bool  # device DMA goes through IOMMU page tables (not identity/passthrough)
    acs_requested: bool  # the IOMMU driver called pci_request_acs(): ACS gets enabled
    words: tuple[str, ...]  # the command line it was read from
    why: str = ""  # how the command line changed the topology's vIOMMU, if it did


def effective_words(topo: Topology, extra: Sequence[str] = ()) -> list[str]:
    """The command line words that decide (image words do not), later words winning."""
    words = [*iommu_cmdline(topo), *topo.kernel_cmdline, *extra]
    return merge_words(words)


def _value(words: Sequence[str], key: str) -> str | None:
    found = None
    for w in words:
        k, sep, v = w.partition("=")
        if k == key and sep:
            found = v
    return found


def _truth(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.lower() in ("1", "y", "yes", "on", "true")


def kernel_view(topo: Topology, extra: Sequence[str] = ()) -> KernelView:
    """How the topology's vIOMMU runs under its kernel command line (and ``extra``)."""
    words = tuple(effective_words(topo, extra))
    model = topo.iommu.model
    if model == "none":
        return KernelView("none", False, False, words)
    viommu = topo.profile.viommu(model)
    assert viommu is not None
    for key, off in viommu.off_words:
        if _value(words, key) == off:
            first = viommu.off_words[0][0]  # the driver's own switch, named in the reason
            return KernelView("none", False, False, words,
                              f"{first}=off on the kernel command line: the {model} vIOMMU is "
                              "present but its driver does not run (no translation, no ACS)")
    passthrough = topo.iommu.mode == "passthrough"
    pt = _truth(_value(words, "iommu.passthrough"))
    if pt is not None:
        passthrough = pt
    if "iommu=pt" in words:
        passthrough = True
    if "iommu=nopt" in words:
        passthrough = False
    why = ""
    if passthrough != (topo.iommu.mode == "passthrough"):
        why = ("the kernel command line puts the IOMMU in passthrough (identity domains)"
               if passthrough else "the kernel command line makes the IOMMU translate")
    return KernelView(model, not passthrough, True, words, why)
