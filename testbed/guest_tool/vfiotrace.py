"""Probes on the dma-buf path of VFIO and iommufd, beside the P2P tracing of :mod:`.trace`.

Linux 7.3 has tracepoints for the dma-buf life cycle (``dma_buf_export``,
``dma_buf_dynamic_attach``, ...; enabled by ``trace setup``) but none for what VFIO and
iommufd do with it, so function probes stand in, defined once the modules are loaded:

- ``vfio_pci_dma_buf_iommufd_map()`` (return value): iommufd asking vfio-pci for the
  BAR's physical range (the private interconnect of drivers/vfio/pci/vfio_pci_dmabuf.c);
- ``vfio_pci_dma_buf_move()`` (``revoked``): vfio-pci revoking (1) or restoring (0) its
  dma-bufs (memory decoding, reset, runtime PM);
- ``vfio_pci_dma_buf_cleanup()``: the device closed (or removed) with dma-bufs alive;
- ``iopt_revoke_notify()``: iommufd tearing the IOVA mapping of a revoked dma-buf down.

A function the kernel lacks is reported, never an error.
"""

import errno

from . import trace

PROBES = {"dmabuf_iommufd_map": ("vfio_pci_dma_buf_iommufd_map", "%return ret=$retval:s32"),
          "dmabuf_move": ("vfio_pci_dma_buf_move", " revoked=revoked:u8"),
          "dmabuf_cleanup": ("vfio_pci_dma_buf_cleanup", ""),
          "iommufd_revoke": ("iopt_revoke_notify", "")}
# Without BTF the argument by position (vfio_pci_dma_buf_move(vdev, bool revoked))
RAW_ARGS = {"dmabuf_move": " revoked=$arg2:u8"}


def _define(name, func, args):
    """Define one probe: with BTF arguments, else without, else a kprobe; (mode, error)."""
    ret = args.startswith("%return")
    raw = RAW_ARGS.get(name, "")
    tries = [("btf", f"f:{trace.GROUP}/{name} {func}{args}"),
             ("plain", f"f:{trace.GROUP}/{name} {func}{'%return' if ret else ''}{raw}"),
             ("kprobe", f"{'r' if ret else 'p'}:{trace.GROUP}/{name} {func}")]
    err = None
    for mode, text in tries:
        try:
            trace._write(f"{trace.TRACEFS}/dynamic_events", text + "\n", append=True)
            return mode, None
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return "existing", None
            err = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: " \
                  f"{trace._last_error() or exc.strerror}"
    return None, err


def setup():
    """Add and enable the probes in the testbed's instance; {name: mode or 'missing: why'}
    (empty with a ``why`` when the P2P tracing is not set up in this boot)."""
    why = trace.active()
    if why:
        return {"why": why}
    out = {}
    inst = trace._instance()
    for name, (func, args) in PROBES.items():
        mode, err = _define(name, func, args)
        if mode is None:
            out[name] = f"missing: {err}"
            continue
        try:
            trace._write(f"{inst}/events/{trace.GROUP}/{name}/enable", "1")
            out[name] = mode
        except OSError as exc:
            out[name] = f"missing: enabling it: {exc.strerror}"
    return out


def dmabuf_events(doc):
    """The dma-buf and VFIO/iommufd events of a trace read, in order, compact."""
    keep = ("dma_buf_", "dmabuf_", "iommufd_")
    out = []
    for ev in (doc or {}).get("events") or []:
        if ev.get("event", "").startswith(keep):
            out.append({k: v for k, v in ev.items() if k in ("event", "ts", "revoked", "ret",
                                                              "exp_name", "size", "dev_name")})
    return out
