"""Judging what the hmm_p2p_test module reported for one (provider, client) pair.

The guest tool's ``hmm-p2p`` document (:mod:`testbed.guest_tool.hmmp2p`) holds, per page
of a ``host | p2pmem x N | host`` range, the state hmm_dma_map_pfn() left (``bus``:
HMM_PFN_P2PDMA_BUS, ``host-bridge``: HMM_PFN_P2PDMA, ``plain``, ``refused``), the physical
and DMA addresses, and what the unmap and invalidation steps did.  The oracle's map type
for the pair says what the P2P pages must show:

- ``bus-address``: every P2P page ``bus``, its DMA address the page's PCI bus address
  (the provider's BAR register plus the page's offset in the BAR);
- ``host-bridge``: every P2P page ``host-bridge``, its DMA address the physical address
  without a translating IOMMU, an IOVA (not the physical address) with one;
- ``not-supported``: every P2P page ``refused`` (DMA_MAPPING_ERROR, no DMA flags).

Host pages beside them are mapped like any page (``plain``, the same address rule as
host-bridge), whatever the pair.  The unmap must unmap every mapped page and leave no DMA
flags; a refused page is not unmapped.  Replacing the p2pmem under a live mirror must make
the module's mmu_interval_notifier unmap exactly the mapped P2P pages.

    >>> page = lambda kind, state, phys, dma, bus=None: {"kind": kind, "state": state,
    ...     "phys": phys, "dma": dma, "expected_bus": bus, "bits": ["valid", "dma_mapped"]
    ...     + (["p2p_page"] if kind == "p2p" else [])}
    >>> doc = {"map": {"fault_ret": 0, "alloc_ret": 0, "mapped": 3, "pages": [
    ...     page("host", "plain", 0x1000, 0x1000), page("p2p", "bus", 0x8000, 0x8000, 0x8000),
    ...     page("host", "plain", 0x2000, 0x2000)]}}
    >>> j = judge_hmm(doc, "bus-address", translating=False)
    >>> j.verdict, j.map_type
    ('ok', 'bus-address')
    >>> j.problems  # the flags after the map, the unmap and invalidation steps are missing
    ['page 1 (p2pmem): no HMM_PFN_P2PDMA_BUS', 'the unmap step did not run']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..guest_tool import schema

STATE_MAP_TYPE = {"bus": schema.BUS_ADDRESS, "host-bridge": schema.HOST_BRIDGE,
                  "refused": schema.NOT_SUPPORTED}
MAP_TYPE_VERDICT = {schema.BUS_ADDRESS: "ok", schema.HOST_BRIDGE: "ok",
                    schema.NOT_SUPPORTED: "rejected"}


@dataclass
class HmmJudgement:
    verdict: str  # ok | rejected | error
    map_type: str | None  # what the P2P pages showed (None: no single answer)
    detail: str
    problems: list[str] = field(default_factory=list)  # checks that failed
    checks: list[str] = field(default_factory=list)  # checks that passed


def _bits(page: Any) -> list[str]:
    return list(page.get("bits") or []) if isinstance(page, dict) else list(page or [])


def _address_rule(page: dict[str, Any], translating: bool, what: str) -> str | None:
    """A host or host-bridge page: physical address without translation, an IOVA with it."""
    phys, dma = page.get("phys"), page.get("dma")
    if not dma:
        return f"{what} has no DMA address"
    if translating and dma == phys:
        return f"{what} was mapped at its physical address {phys:#x} under a translating IOMMU"
    if not translating and dma != phys:
        return f"{what} was mapped at {dma:#x}, not its physical address {phys:#x}"
    return None


def _p2p_checks(pages: list[tuple[int, dict[str, Any]]], map_type: str, translating: bool
                ) -> list[str]:
    problems = []
    for i, p in pages:
        where = f"page {i} (p2pmem)"
        if "p2p_page" not in _bits(p):
            problems.append(f"{where} is not a P2P page to the kernel")
        if map_type == schema.BUS_ADDRESS:
            want = p.get("expected_bus")
            if want is None:
                problems.append(f"{where}: physical address {p.get('phys', 0):#x} is in none of "
                                "the provider's BARs")
            elif p.get("dma") != want:
                problems.append(f"{where}: DMA address {p.get('dma', 0):#x}, not its PCI bus "
                                f"address {want:#x}")
            if "p2pdma_bus" not in _bits(p):
                problems.append(f"{where}: no HMM_PFN_P2PDMA_BUS")
        elif map_type == schema.HOST_BRIDGE:
            bad = _address_rule(p, translating, where)
            if bad:
                problems.append(bad)
            if "p2pdma" not in _bits(p):
                problems.append(f"{where}: no HMM_PFN_P2PDMA")
        elif map_type == schema.NOT_SUPPORTED:
            if p.get("dma") or "dma_mapped" in _bits(p):
                problems.append(f"{where}: refused, yet marked DMA-mapped")
    return problems


def _unmap_checks(doc: dict[str, Any], pages: list[dict[str, Any]], p2p_mapped: int
                  ) -> list[str]:
    problems = []
    unmap = doc.get(schema.HMM_UNMAP)
    if not isinstance(unmap, dict):
        return ["the unmap step did not run"]
    after = unmap.get(schema.HMM_PAGES) or []
    mapped = [i for i, p in enumerate(pages) if p.get("dma")]
    if unmap.get("unmapped") != len(mapped):
        problems.append(f"unmap: hmm_dma_unmap_pfn() unmapped {unmap.get('unmapped')} pages, "
                        f"{len(mapped)} were mapped")
    for i, bits in enumerate(after):
        if i in mapped and "unmapped" not in _bits(bits):
            problems.append(f"unmap: page {i} was mapped and not unmapped")
        if i not in mapped and "unmapped" in _bits(bits):
            problems.append(f"unmap: page {i} was never mapped, yet unmapped")
        if "cleared" not in _bits(bits):
            problems.append(f"unmap: page {i} kept DMA flags")
    inv = doc.get(schema.HMM_INVALIDATE)
    if not isinstance(inv, dict):
        return problems + ["the invalidation step did not run"]
    if inv.get("invalidated") != p2p_mapped:
        problems.append(f"invalidate: the notifier unmapped {inv.get('invalidated')} pages, "
                        f"{p2p_mapped} P2P pages were mapped")
    for i, bits in enumerate(inv.get(schema.HMM_PAGES) or []):
        kind = pages[i].get("kind") if i < len(pages) else None
        if kind == schema.HMM_HOST and "unmapped" not in _bits(bits):
            problems.append(f"invalidate: host page {i} was not unmapped at the end")
        if kind == schema.HMM_P2P and p2p_mapped and "invalidated" not in _bits(bits):
            problems.append(f"invalidate: P2P page {i} was not unmapped by the notifier")
        if "cleared" not in _bits(bits):
            problems.append(f"invalidate: page {i} kept DMA flags")
    return problems


def judge_hmm(doc: dict[str, Any] | None, predicted_map_type: str | None,
              translating: bool) -> HmmJudgement:
    """The verdict, the map type the P2P pages showed, and every check that failed."""
    if not isinstance(doc, dict):
        return HmmJudgement("error", None, "the guest tool printed no document")
    if schema.HMM_MAP not in doc:
        return HmmJudgement("error", None, f"stopped at {doc.get('stage', '?')}: "
                            f"{doc.get('error', 'no map step')}")
    m = doc[schema.HMM_MAP]
    if m.get("alloc_ret"):
        return HmmJudgement("error", None, f"hmm_dma_map_alloc() failed: {m['alloc_ret']}")
    if m.get("fault_ret"):
        return HmmJudgement("error", None, f"hmm_range_fault() failed: {m['fault_ret']}")
    pages = m.get(schema.HMM_PAGES) or []
    p2p = [(i, p) for i, p in enumerate(pages) if p.get("kind") == schema.HMM_P2P]
    host = [(i, p) for i, p in enumerate(pages) if p.get("kind") == schema.HMM_HOST]
    if not p2p:
        return HmmJudgement("error", None, "the range held no p2pmem page")
    states = sorted({p.get("state") for _, p in p2p})
    if len(states) != 1 or states[0] not in STATE_MAP_TYPE:
        return HmmJudgement("error", None, "the P2P pages got " + ", ".join(
            f"{s} x{sum(1 for _, p in p2p if p.get('state') == s)}" for s in states))
    map_type = STATE_MAP_TYPE[states[0]]
    problems = _p2p_checks(p2p, map_type, translating)
    for i, p in host:
        if p.get("state") != "plain":
            problems.append(f"page {i} (host): {p.get('state')}, not mapped plainly")
        else:
            bad = _address_rule(p, translating, f"page {i} (host)")
            if bad:
                problems.append(bad)
    p2p_mapped = 0 if map_type == schema.NOT_SUPPORTED else len(p2p)
    problems += _unmap_checks(doc, pages, p2p_mapped)
    checks = [f"{len(p2p)} P2P pages {states[0]}", f"{len(host)} host pages beside them",
              "unmap", "invalidation"]
    detail = (f"{len(p2p)} P2P pages {states[0]} ({map_type}), {len(host)} host pages "
              f"{'mapped' if all(p.get('state') == 'plain' for _, p in host) else 'NOT mapped'}"
              f"; unmap and invalidation {'as expected' if not problems else 'checked'}")
    if predicted_map_type and predicted_map_type != map_type:
        detail += f"; predicted {predicted_map_type}"
    return HmmJudgement(MAP_TYPE_VERDICT[map_type], map_type, detail, problems, checks)
