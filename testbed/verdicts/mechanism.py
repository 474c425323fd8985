"""The mechanism half of a verdict: which map type the guest kernel chose for a P2P
transfer, and what the IOMMU did, against what the oracle predicted.

The guest tool reports (``--observe``) the map type of every P2P request per (provider,
client) from ``pci_p2pdma_map_type()``, the distance from ``calc_map_type_and_dist()``
(once per pair and boot), the IOMMU domain types and the IOMMU mappings made for the
provider's BAR.  The rules:

- the map type must be the predicted one (``bus-address``, ``host-bridge``,
  ``not-supported``);
- a bus-address transfer makes no IOMMU mapping of the provider's BAR; a host-bridge
  transfer under a translating IOMMU makes some (identity domains and no IOMMU make none).

    >>> doc = {"ok": True, "observed": [{"provider": "0000:04:00.0", "client": "0000:03:00.0",
    ...        "map_type": "bus-address", "requests": 4, "distance": 4}],
    ...        "iommu": {"p2p_map_count": 0, "domains": {}}}
    >>> m = observe_mechanism(doc, "0000:04:00.0", "0000:03:00.0")
    >>> m.map_type, m.distance, m.why
    ('bus-address', 4, None)
    >>> judge(m, "bus-address", translating=False)
    ''
    >>> judge(m, "host-bridge", translating=True)
    'the kernel chose bus-address, not host-bridge'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..guest_tool import schema

JUDGED_MAP_TYPES = (schema.BUS_ADDRESS, schema.HOST_BRIDGE, schema.NOT_SUPPORTED)


@dataclass(frozen=True)
class Observed:
    """What the guest kernel did for one (provider, client); ``why`` when unobserved."""

    map_type: str | None = None
    distance: int | None = None
    requests: int = 0
    map_types: dict[str, int] = field(default_factory=dict)
    iommu_p2p_maps: int | None = None  # IOMMU mappings of the provider's BAR
    domains: dict[str, Any] = field(default_factory=dict)  # BDF -> {group, type}
    why: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def observe_mechanism(doc: Any, provider: str | None, client: str | None) -> Observed:
    """The mechanism for the pair in a guest tool's trace document (``mechanism`` key)."""
    if not isinstance(doc, dict):
        return Observed(why="the guest tool reported no mechanism (not asked to observe)")
    if not doc.get(schema.MECH_OK):
        return Observed(why=str(doc.get(schema.MECH_WHY) or "not observed"))
    iommu = doc.get("iommu") or {}
    for o in doc.get("observed") or []:
        if o.get("provider") == provider and o.get("client") == client:
            return Observed(map_type=o.get("map_type"),
                            distance=o.get("distance", o.get("sysfs_distance")),
                            requests=int(o.get("requests") or 0),
                            map_types=dict(o.get("map_types") or {}),
                            iommu_p2p_maps=iommu.get("p2p_map_count"),
                            domains=dict(iommu.get("domains") or {}))
    others = [f"{o.get('provider')}->{o.get('client')}" for o in doc.get("observed") or []]
    why = ("no P2P request reached the kernel's P2P mapping for this pair"
           + (f" (seen instead: {', '.join(others)})" if others else ""))
    return Observed(domains=dict(iommu.get("domains") or {}),
                    iommu_p2p_maps=iommu.get("p2p_map_count"), why=why)


def judge(observed: Observed, predicted: str | None, translating: bool) -> str:
    """Why the observed mechanism contradicts the prediction ("" when it does not)."""
    if predicted not in JUDGED_MAP_TYPES or observed.map_type is None:
        return ""
    if observed.map_type != predicted:
        return f"the kernel chose {observed.map_type}, not {predicted}"
    maps = observed.iommu_p2p_maps
    if maps is None:
        return ""
    if predicted == schema.BUS_ADDRESS and maps:
        return (f"a bus-address transfer, yet the IOMMU mapped the provider's BAR {maps} "
                "time(s)")
    if predicted == schema.HOST_BRIDGE and translating and not maps:
        return ("a host-bridge transfer under a translating IOMMU, yet no IOMMU mapping of "
                "the provider's BAR was made")
    return ""
