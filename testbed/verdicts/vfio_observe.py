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
from .observe import FAULT_PATTERNS, kernel_trouble, trouble_verdict
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


# -- revocation ----------------------------------------------------------------------------
def _bar_unmapped(mech: Mapping[str, Any] | None) -> bool | None:
    """Did the trace see the IOVA of the BAR unmapped (None: not traced)?"""
    if not isinstance(mech, dict) or not mech.get(schema.MECH_OK):
        return None
    want = schema.VFIO_BAR_IOVA
    return any(int(iova, 16) <= want < int(iova, 16) + max(int(size or 0), 1)
               for iova, size in (mech.get("iommu") or {}).get("unmapped") or [])


def _attempt_text(attempt: Mapping[str, Any]) -> str:
    if not attempt:
        return "no attempt was made"
    if attempt.get("timeout"):
        return f"the client's read timed out after {attempt.get('seconds')} s"
    if not attempt.get("ok"):
        return (f"the client's read failed with "
                f"{(attempt.get('status') or {}).get('error', 'an error')}")
    return "the client's read completed successfully"


def observe_revoke(trigger: str, whole: Mapping[str, Any] | None,
                   tdoc: Mapping[str, Any] | None, host_dmesg: Mapping[str, list[str]],
                   timed_out: bool) -> tuple[str, str]:
    """(verdict, detail) of one revocation trigger: ``revoked`` when the mapping went with
    its exporter (an IOMMU fault for the client's DMA or the unmap traced, the CMB not
    written) and a new export afterwards carried a verified transfer; ``not-revoked`` when
    the client's DMA still reached the CMB or nothing shows the mapping gone."""
    lines = list((tdoc or {}).get("kernel_log") or [])
    trouble = trouble_verdict([*host_dmesg.get("trouble", []),
                               *kernel_trouble("\n".join(lines))])
    if trouble:
        return trouble
    if timed_out:
        return "error", "the guest tool timed out (the devices were given back afterwards)"
    whole = whole or {}
    if whole.get("stage") in GAVE_UP_UNSUPPORTED:
        return "unsupported", str(whole.get("error"))
    if not tdoc:
        if whole.get("stage"):
            return "error", f"the guest tool gave up at {whole['stage']}: {whole.get('error')}"
        return "error", f"the guest tool reported nothing for the {trigger} trigger"
    if tdoc.get("stage"):
        return "error", f"{trigger}: the guest tool gave up at {tdoc['stage']}: " \
                        f"{tdoc.get('error')}"
    faults = [ln for ln in lines if FAULT_PATTERNS["iommu-fault"].search(ln)]
    unmapped = _bar_unmapped(tdoc.get(schema.MECHANISM))
    attempt = tdoc.get("attempt") or {}
    how = _attempt_text(attempt)
    if tdoc.get("cmb_untouched") is False:
        return "not-revoked", (f"after the {trigger} the client's DMA still reached the CMB "
                               f"({how}): the IOMMU mapping outlived its exporter")
    if not faults and not unmapped:
        return "not-revoked", (f"after the {trigger} nothing shows the mapping gone: no IOMMU "
                               f"fault logged, no unmap of the IOVA traced ({how})")
    after = tdoc.get("after") or {}
    if not after.get("ok"):
        return "error", (f"revoked, but the new export after restoring did not carry a "
                         f"verified transfer: {after.get('export', {}).get('error') or after}")
    evidence = f"IOMMU fault: {faults[0]}" if faults else "no fault logged (rate limit?)"
    if unmapped:
        evidence += "; the unmap of the IOVA was traced"
    quirk = (" (QEMU completed the command although its DMA faulted: a QEMU model limit)"
             if attempt.get("ok") and faults else "")
    untouched = "" if trigger == "unplug" else "; the CMB still held the sentinel"
    return "revoked", (f"{how}{quirk}; {evidence}{untouched}; a new export afterwards "
                       f"carried a verified transfer")


def revoke_mechanism(tdoc: Mapping[str, Any] | None, provider_bdf: str | None
                     ) -> tuple[str | None, dict[str, Any], str]:
    """The new export's IOMMU map of the BAR (the map type), the revocation's events, and
    a problem when the trace shows the mapping not torn down."""
    after = (tdoc or {}).get("after") or {}
    kind, mech, problem = observe_mechanism(after, provider_bdf)
    revocation = (tdoc or {}).get(schema.MECHANISM)
    unmapped = _bar_unmapped(revocation)
    mech["revocation_unmapped_iova"] = unmapped
    if isinstance(revocation, dict):
        mech["revocation_events"] = [
            e for e in revocation.get("events") or []
            if str(e.get("event", "")).startswith(("dma_buf", "dmabuf", "iommufd"))][:24]
    if unmapped is False and not problem:
        problem = "the trace shows no unmap of the BAR's IOVA after the exporter went away"
    return kind, mech, problem
