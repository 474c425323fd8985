"""Predict what Linux's P2PDMA code will do for each (provider, client) pair.

The prediction is computed from the topology tree alone, following
``calc_map_type_and_dist()`` in drivers/pci/p2pdma.c:

1. Walk up from the provider; the first bridge that is also upstream of (or is)
   the client is the common upstream bridge.  ACS redirect (RR/CR/EC) on a
   bridge of the path — the provider's side up to and including the common
   bridge, the client's side below it — forces the path through the root.
2. Common bridge, no ACS redirect: mapped by PCI bus address (no IOMMU entry).
3. Otherwise the transfer crosses the host bridge: allowed only if both host
   bridges are on the kernel's allow-list (the machine profile says: q35's 8086:29c0 is
   not) or the profile trusts the CPU (x86: AMD family >= 0x17); then mapped like normal
   DMA (through the IOMMU if any).
   Else refused: "rejected".
4. QEMU sends every device's DMA through the vIOMMU at the root complex, even
   between two devices under one emulated switch, so a bus-address mapping
   under a translating vIOMMU faults: "iommu-fault", labelled a QEMU model
   limit (real switches route such TLPs locally).

    >>> from testbed.spec import load_topology
    >>> from testbed.qemu.probe import CpuInfo
    >>> topo = load_topology("switch-cmb")
    >>> p = predict(topo, "nvme0", "nvme1", CpuInfo("qemu64", "AuthenticAMD", 15))
    >>> p.verdict, p.map_type
    ('ok', 'bus-address')
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..qemu.devices import DEVICES
from ..qemu.probe import CpuInfo
from ..spec.model import Endpoint, HostBridge, MapType, Node, Topology, Verdict
from . import acs
from .cmdline import KernelView, kernel_view

@dataclass(frozen=True)
class Prediction:
    provider: str
    client: str
    verdict: Verdict  # never "error": that is only observed
    map_type: MapType | Literal["none"]  # none: no mapping was asked for
    reason: str
    qemu_limit: bool = False  # the verdict follows from how QEMU models DMA, not from Linux
    distance: int = 0
    source: str = "oracle"  # or "topology" when the file states the expectation
    translating: bool = False  # DMA of the pair goes through IOMMU page tables


def has_acs_capability(node: Node) -> bool:
    """QEMU's pcie-root-port has an ACS capability (not with ``acs: false``); the x3130
    switch ports do not."""
    return acs.capability(node) is not None


def acs_redirect(node: Node, topo: Topology, view: KernelView | None = None) -> bool:
    """Will Linux have set ACS RR/CR/EC on this bridge?  pci_enable_acs() turns them on
    when an IOMMU driver requested ACS; pci=disable_acs_redir/config_acs change them
    (the whole model: :mod:`testbed.verdicts.acs`)."""
    view = view or kernel_view(topo)
    return acs.node_state(node, topo, requested=view.acs_requested).redirect


def _chain(topo: Topology, name: str) -> list[Node]:
    """The device and its upstream bridges, nearest first (the root bus has none: an
    expander host bridge is a host bridge, not an upstream bridge)."""
    return [n for n in topo.upstream_path(name) if not isinstance(n, HostBridge)]


def _host_bridges(topo: Topology, provider: str, client: str) -> str:
    """The host bridge(s) a pair's transfer crosses, for reasons."""
    def one(name: str) -> str:
        hb = topo.host_bridge_of(name)
        return (f"host bridge {hb.name} (a PCIe expander; Linux checks the device at 00.0 "
                f"of its root bus, a root port)" if hb is not None else
                f"{topo.profile.host_bridge.label} {':'.join(topo.profile.host_bridge.pci_id)}")
    a, b = one(provider), one(client)
    return a if a == b else f"{a} (for {provider}) and {b} (for {client})"


def predict(topo: Topology, provider: str, client: str, cpu: CpuInfo,
            kernel_p2pdma: bool | None = True, view: KernelView | None = None) -> Prediction:
    """The expected verdict and mechanism for a P2P transfer between ``client`` and
    ``provider``'s p2pmem; a topology's ``expect:`` entry overrides the verdict (and the
    map type, when it states one)."""
    view = view or kernel_view(topo)
    computed = _compute(topo, provider, client, cpu, kernel_p2pdma, view)
    for e in topo.expect:
        if e.provider == provider and e.client == client:
            return replace(computed, verdict=e.verdict, map_type=e.map_type or computed.map_type,
                           reason=e.reason, qemu_limit=False, source="topology")
    return computed


def _compute(topo: Topology, provider: str, client: str, cpu: CpuInfo,
             kernel_p2pdma: bool | None, view: KernelView) -> Prediction:
    prov = topo.find(provider)
    note = f" ({view.why})" if view.why else ""
    if kernel_p2pdma is False:
        return Prediction(provider, client, "unsupported", "none",
                          "the kernel is built without CONFIG_PCI_P2PDMA")
    if not isinstance(prov, Endpoint) or not prov.p2p_memory:
        what = "CMB" if prov.kind == "nvme" else "P2P memory"
        return Prediction(provider, client, "unsupported", "none",
                          f"{provider} has no {what}, so it publishes no p2pmem")
    if provider == client:
        return Prediction(provider, client, "ok", "bus-address",
                          f"{provider} uses its own CMB: the device itself is the common "
                          "upstream device (distance 0), so Linux maps by PCI bus address; "
                          "QEMU's NVMe serves addresses inside its own CMB internally, so no "
                          f"IOMMU is involved{note}", distance=0,
                          translating=view.translating)
    a_chain, b_chain = _chain(topo, provider), _chain(topo, client)
    b_names = [n.name for n in b_chain]
    acs: list[str] = []
    common = None
    dist_a = 0
    for a in a_chain:
        if acs_redirect(a, topo, view):
            acs.append(a.name)
        if a.name in b_names:
            common = a
            break
        dist_a += 1
    if common is not None:
        dist_b = b_names.index(common.name)
        for bb in b_chain[:dist_b]:
            if acs_redirect(bb, topo, view):
                acs.append(bb.name)
        distance = dist_a + dist_b
    else:
        distance = len(a_chain) + len(b_chain)
    if common is not None and not acs:
        via = f"{common.name} ({_kind(common)})"
        if view.translating:
            pt_words = topo.profile.iommu_words(view.iommu, "passthrough") or ("iommu=pt",)
            pt = "iommu=pt" if "iommu=pt" in pt_words else pt_words[-1]
            return Prediction(
                provider, client, "iommu-fault", "bus-address",
                f"{provider} and {client} share the upstream bridge {via} with no ACS "
                f"redirect, so Linux maps the transfer by PCI bus address with no IOMMU "
                f"entry; QEMU routes every DMA through the {view.iommu} vIOMMU at the "
                f"root complex, so it faults there (QEMU model limit, not a kernel bug; "
                f"{pt} avoids it){note}", qemu_limit=True, distance=distance,
                translating=True)
        mode = " (the vIOMMU is in passthrough)" if view.iommu != "none" else ""
        return Prediction(provider, client, "ok", "bus-address",
                          f"{provider} and {client} share the upstream bridge {via} with no ACS "
                          f"redirect: mapped by PCI bus address{mode}{note}", distance=distance)
    hosts = _host_bridges(topo, provider, client)
    crossing = "host bridge" if " and " not in hosts else "host bridges"
    why = (f"ACS redirect on {', '.join(acs)} sends the transfer through the root complex"
           if acs else f"{provider} and {client} share no upstream bridge (only the {crossing})")
    rule = topo.profile.cpu
    if rule.trusts_root_complex(cpu.vendor, cpu.family):
        how = f" through the {view.iommu} vIOMMU" if view.translating else ""
        return Prediction(provider, client, "ok", "host-bridge",
                          f"{why}; the CPU model {cpu.model} is {rule.trusted_vendor_name} family "
                          f"{cpu.family:#x} (>= {rule.trusted_min_family:#x}), which Linux "
                          f"trusts for P2P through the root complex: mapped like normal "
                          f"DMA{how}{note}", distance=distance, translating=view.translating)
    if topo.profile.host_bridge.allow_listed:  # pragma: no cover - q35's is not
        return Prediction(provider, client, "ok", "host-bridge", f"{why}; allow-listed host bridge")
    if rule.trusted_vendor is None:  # arm64: cpu_supports_p2pdma() is x86-only
        cpu_part = (f"p2pdma.c trusts no {topo.profile.arch} CPU for P2P through the root "
                    f"complex (its CPU rule is x86's), whatever the model ({cpu.model})")
    else:
        cpu_part = (f"the CPU model {cpu.model} ({cpu.vendor} family {cpu.family:#x}) is not "
                    f"{rule.trusted_label or 'trusted'}")
    return Prediction(provider, client, "rejected", "not-supported",
                      f"{why}; {hosts} {'is' if crossing == 'host bridge' else 'are'} not on the "
                      f"kernel's allow-list and {cpu_part}: Linux refuses the "
                      f"mapping{note}", distance=distance)


def pairs(topo: Topology) -> list[tuple[str, str]]:
    """Every (provider, client): a provider is an endpoint with P2P memory (an NVMe with a
    CMB); a client is any other endpoint the P2P workloads use as one (an NVMe).  An igb
    is in no pair: no P2P memory, and no workload of the testbed's drives it."""
    clients = topo.clients()
    return [(p.name, c.name) for p in topo.providers() for c in clients if c.name != p.name]


def _kind(node: Node) -> str:
    return "endpoint" if isinstance(node, Endpoint) else DEVICES[type(node)].label
