"""What a ``vfio-p2p`` method showed: its verdict from the guest tool's method document
and the dmesg lines, and its mechanism from the kernel's IOMMU map events.

    >>> from testbed.verdicts.vfio import VfioPrediction
    >>> pred = VfioPrediction("pfnmap", "rejected", "none", "why", errno=14)
    >>> observe_method({"map": {"ok": False, "errno": 14, "errno_name": "EFAULT",
    ...                 "error": "EFAULT: IOMMU_IOAS_MAP: Bad address"}}, {}, False, pred)
    ('rejected', 'IOMMU_IOAS_MAP refused the mapping: EFAULT: IOMMU_IOAS_MAP: Bad address')
    >>> observe_method({"map": {"ok": False, "errno": 12, "errno_name": "ENOMEM",
    ...                 "error": "ENOMEM: x"}}, {}, False, pred)[0]
    'error'
"""

from __future__ import annotations

import errno as errno_mod
from typing import Any, Mapping

from ..guest_tool import schema
from .observe import trouble_verdict
from .vfio import IOMMU_MMIO, NO_MAP, VfioPrediction

GAVE_UP_UNSUPPORTED = ("unsupported", "group")  # stages that are not the testbed's failure
MAP_CALL = {"type1": "VFIO_IOMMU_MAP_DMA", "pfnmap": "IOMMU_IOAS_MAP",
            "dmabuf": "IOMMU_IOAS_MAP_FILE"}


def _name(code: int | None) -> str:
    return errno_mod.errorcode.get(code or 0, str(code))


def observe_method(doc: Mapping[str, Any] | None, dmesg: Mapping[str, list[str]],
                   timed_out: bool, pred: VfioPrediction) -> tuple[str, str]:
    """(verdict, detail) of one method (type1, pfnmap, dmabuf)."""
    trouble = trouble_verdict(list(dmesg.get("trouble", [])))
    if trouble:
        return trouble
    if timed_out:
        return "error", "the guest tool timed out (the devices were given back afterwards)"
    if not doc:
        return "error", "the guest tool reported nothing for this method"
    stage = doc.get("stage")
    if stage in GAVE_UP_UNSUPPORTED:
        return "unsupported", str(doc.get("error"))
    if stage:
        return "error", f"the guest tool gave up at {stage}: {doc.get('error')}"
    mapping = doc.get(schema.MAP) or {}
    call = MAP_CALL.get(pred.method, "the map call")
    if not mapping.get("ok"):
        code = mapping.get("errno")
        if pred.errno is not None and code != pred.errno:
            return "error", (f"{call} refused the mapping with {_name(code)}, not "
                             f"{_name(pred.errno)} as predicted: {mapping.get('error')}")
        return "rejected", f"{call} refused the mapping: {mapping.get('error')}"
    steps = doc.get("steps") or {}
    failed = [k for k in ("p2p_read", "p2p_write") if k in steps and not steps[k].get("ok")]
    faults = list(dmesg.get("iommu-fault", []))
    verified = bool(doc.get("data_verified"))
    if (failed or not verified) and faults:
        return "iommu-fault", faults[0]
    if failed:
        return "error", "; ".join(f"{k}: {steps[k].get('error')}" for k in failed)
    if not verified:
        bad = {k: steps.get(k, {}).get("mismatched_blocks", [])[:8]
               for k in ("verify_read", "verify_write")}
        return "error", f"data differs with no IOMMU fault logged: blocks {bad}"
    return "ok", (f"{call} mapped the BAR at {mapping.get('iova')}; the client read the "
                  f"seeded range into the CMB and wrote the CMB back to the namespace; every "
                  f"block verified")


def observe_mechanism(doc: Mapping[str, Any] | None, provider_bdf: str | None
                      ) -> tuple[str | None, dict[str, Any], str]:
    """(observed map type or None, mechanism for the record, problem): ``iommu-mmio`` when
    the IOMMU mapped the provider's BAR at the testbed's IOVA, ``none`` when it mapped
    nothing of the BAR."""
    mech = (doc or {}).get(schema.MECHANISM)
    bar = (doc or {}).get("bar_mmap") or {}
    out: dict[str, Any] = {"bar_vmflags": bar.get("vmflags")} if bar else {}
    if not isinstance(mech, dict):
        out["unobserved"] = "the guest tool reported no trace (tracing not set up)"
        return None, out, ""
    if not mech.get(schema.MECH_OK):
        out["unobserved"] = str(mech.get(schema.MECH_WHY) or "not observed")
        return None, out, ""
    iommu = mech.get("iommu") or {}
    maps = [m for m in iommu.get("p2p_maps") or [] if m.get("provider") == provider_bdf]
    out.update(iommu_p2p_maps=len(maps), bar_maps=maps[:4],
               domains=iommu.get("domains") or {},
               events=[e for e in mech.get("events") or []
                       if str(e.get("event", "")).startswith(("dma_buf", "dmabuf", "iommufd"))
                       ][:24])
    if not maps:
        return NO_MAP, out, ""
    want = hex(schema.VFIO_BAR_IOVA)
    at = [m for m in maps if m.get("iova") == want]
    if not at:
        return IOMMU_MMIO, out, (f"the BAR was mapped at {maps[0].get('iova')}, not at the "
                                 f"testbed's IOVA {want}")
    return IOMMU_MMIO, out, ""
