"""vfio-p2p: P2P DMA to a BAR that has no struct page, the ways VFIO and iommufd allow it.

Provider and client are handed to vfio-pci; the client is driven by the userspace NVMe
driver (:mod:`.unvme`); the provider's CMB (BAR2) is put into the client's IO address
space at :data:`~.vfiosession.BAR_IOVA` one of three ways (``--method``):

- ``type1``: VFIO_IOMMU_MAP_DMA of an mmap of the BAR region (VM_PFNMAP): the legacy
  path, vfio_iommu_type1.c follows the PFNs of the VMA (vaddr_get_pfns/follow_fault_pfn);
- ``pfnmap``: IOMMU_IOAS_MAP of the same mmap into an iommufd IOAS: iommufd pins user
  pages and a VM_PFNMAP VMA has none, so it must be refused (the errno is the result);
- ``dmabuf``: the BAR range exported with VFIO_DEVICE_FEATURE_DMA_BUF and mapped with
  IOMMU_IOAS_MAP_FILE (Linux >= 6.19, drivers/vfio/pci/vfio_pci_dmabuf.c + iommufd).

Where the BAR is mapped, the client reads a namespace range seeded beforehand (through
the kernel, before the hand-over) into the IOVA — the data is checked in the CMB through
the provider's region mmap — and writes a pattern put in the CMB back to the namespace,
read back into host memory and checked.  ``--probe`` only reports what the kernel offers.
"""

import gzip
import mmap
import os
import re
import time

from . import trace, vfiobind, vfiotrace
from .dio import error_text, mb_per_s, step, verify_step
from .dmamem import vma_flags
from .pattern import BLOCK, pattern
from .sysfs import read
from .unvme import Controller, NvmeError, NvmeTimeout
from .usage import UsageError
from .vfio import errno_name
from .vfionvme import kernel_view, not_nvme
from .vfiosession import BAR_IOVA, Refused, Session, kernel_facts

CMB_BAR = 2
MAX_SIZE = 4 << 20
METHODS = ("type1", "pfnmap", "dmabuf")
CONFIG_KEYS = ("CONFIG_VFIO", "CONFIG_VFIO_CONTAINER", "CONFIG_VFIO_IOMMU_TYPE1",
               "CONFIG_VFIO_DEVICE_CDEV", "CONFIG_IOMMUFD", "CONFIG_VFIO_PCI_DMABUF",
               "CONFIG_DMA_SHARED_BUFFER", "CONFIG_PCI_P2PDMA", "CONFIG_IRQ_REMAP",
               "CONFIG_HOTPLUG_PCI_ACPI", "CONFIG_HOTPLUG_PCI_PCIE")


def kernel_config(keys=CONFIG_KEYS):
    """{"source": path, "values": {key: value or 'n'}}, or None without a readable config."""
    release = os.uname().release
    for path in ("/proc/config.gz", f"/boot/config-{release}",
                 f"/lib/modules/{release}/build/.config"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        found = dict(re.findall(r"^(CONFIG_\w+)=(.*)$", text, re.M))
        return {"source": path, "values": {k: found.get(k, "n") for k in keys}}
    return None


def unsupported(kind):
    """Why this kernel cannot give a DMA space of ``kind`` (None: it can, or no config
    says otherwise and the attempt will tell)."""
    cfg = (kernel_config() or {}).get("values", {})
    if kind == "type1":
        missing = [k for k in ("CONFIG_VFIO_CONTAINER", "CONFIG_VFIO_IOMMU_TYPE1")
                   if cfg.get(k) == "n"]
        if missing and not os.path.exists("/dev/vfio/vfio"):
            return (f"no VFIO type1 container in this kernel's config ({', '.join(missing)} "
                    "not set)")
        return None
    if cfg.get("CONFIG_IOMMUFD") == "n" and not os.path.exists("/dev/iommu"):
        return "no IOMMUFD in this kernel's config"
    return None


def hotplug_slot(bdf):
    """None when the guest kernel drives a hot-plug slot for ``bdf`` (a
    /sys/bus/pci/slots entry at its address, pciehp's or acpiphp's), else why not."""
    addr = bdf.rsplit(".", 1)[0]
    base = "/sys/bus/pci/slots"
    for slot in os.listdir(base) if os.path.isdir(base) else ():
        if (read(f"{base}/{slot}/address") or "").strip() == addr:
            return None
    cfg = (kernel_config() or {}).get("values", {})
    if cfg.get("CONFIG_HOTPLUG_PCI_ACPI") == "n":
        return (f"no hot-plug slot drives {bdf} in this guest: no pciehp slot (the machine "
                "keeps native PCIe hot-plug from the OS: q35's default hands it to ACPI) and "
                "no acpiphp (CONFIG_HOTPLUG_PCI_ACPI not set), so a device_del never "
                "reaches it")
    return None  # acpiphp may still see it (its slots are not always listed)


def bar_range(bdf, bar):
    """(start, end) of a BAR from sysfs (whoever drives the device), None when unset."""
    lines = (read(f"/sys/bus/pci/devices/{bdf}/resource") or "").splitlines()
    if bar >= len(lines):
        return None
    start, end, _flags = (int(x, 16) for x in lines[bar].split())
    return (start, end) if end else None


def probe(args):
    return {"kernel": {"release": os.uname().release, "config": kernel_config(),
                       "facts": kernel_facts(), "cmdline": read("/proc/cmdline")},
            "devices": {b: {"driver": vfiobind.driver_of(b), "group": vfiobind.group_of(b),
                            "cmb": bar_range(b, CMB_BAR), "kernel_view": kernel_view(b)}
                        for b in filter(None, (args.provider, args.client))}}


def seed_namespace(view, offset, size, seed):
    """Write the seeded pattern through the kernel (O_DIRECT) before the hand-over."""
    data = pattern(seed, offset // BLOCK, size // BLOCK)
    start = time.monotonic()
    buf = mmap.mmap(-1, size)
    fd = None
    try:
        buf[:size] = data
        fd = os.open(view["block"], os.O_WRONLY | os.O_DIRECT | os.O_SYNC)
        done = os.pwritev(fd, [buf], offset)
        return step(done == size, time.monotonic() - start, done,
                    error=None if done == size else f"short write: {done} of {size}"), data
    except OSError as exc:
        return step(False, time.monotonic() - start, 0, exc=exc), data
    finally:
        if fd is not None:
            os.close(fd)
        buf.close()


def transfers(ctrl, cmb, iova, offset, size, seed, host):
    """Both directions through the BAR at ``iova`` (``cmb``: its mmap, for the checks)."""
    steps = {}
    lba_a, lba_b = offset // ctrl.lba_size, (offset + size) // ctrl.lba_size
    expected = pattern(seed, offset // BLOCK, size // BLOCK)
    cmb[:size] = b"\xa5" * size  # poison: a read that never lands is seen
    start = time.monotonic()
    try:
        ctrl.read(lba_a, iova, size)
        steps["p2p_read"] = step(True, time.monotonic() - start, size)
    except (NvmeError, NvmeTimeout) as exc:
        steps["p2p_read"] = step(False, time.monotonic() - start, 0, error=str(exc))
    start = time.monotonic()
    steps["verify_read"] = verify_step(cmb[:size], expected, start)
    back = pattern(seed + 1, (offset + size) // BLOCK, size // BLOCK)
    cmb[:size] = back
    host.view[:size] = bytes(size)
    start = time.monotonic()
    try:
        ctrl.write(lba_b, iova, size)
        steps["p2p_write"] = step(True, time.monotonic() - start, size)
        ctrl.read(lba_b, host.iova, size)
    except (NvmeError, NvmeTimeout) as exc:
        steps["p2p_write"] = step(False, time.monotonic() - start, 0, error=str(exc))
    start = time.monotonic()
    steps["verify_write"] = verify_step(host.view[:size], back, start)
    return steps


def _client(session, bdf, size):
    ctrl = Controller(session.device(bdf), session.space, session.arena(size + (1 << 20)))
    try:
        ctrl.enable()
    except BaseException:
        ctrl.close()
        raise
    return ctrl


def run_method(method, args, doc, window):
    """One method in its own DMA space; fills ``doc`` (steps, refusal, mechanism)."""
    kind = "type1" if method == "type1" else "iommufd"
    why = unsupported(kind)
    if why:
        raise Refused("unsupported", why)
    s = Session(kind, [args.provider, args.client], args.allow_unsafe_interrupts,
                restore=False)
    doc["session"] = s.report  # also when the session is refused (groups, modules)
    with s:
        pdev = s.device(args.provider)
        cdev = s.device(args.client)
        doc["provider_reset"] = pdev.info()["reset"]
        if kind == "type1":
            doc["iommu_info"] = s.space.info()
        doc["client_device"] = cdev.how
        cmb, vaddr = pdev.map_region(CMB_BAR, window)
        doc["bar_mmap"] = {"vaddr": hex(vaddr), "vmflags": vma_flags(vaddr), "bytes": window}
        start = time.monotonic()
        try:
            if method == "dmabuf":
                fd = pdev.dma_buf(CMB_BAR, 0, window)
                try:
                    s.space.map_file(fd, 0, window, BAR_IOVA)
                finally:
                    os.close(fd)  # the IOAS keeps its own reference
            else:
                s.space.map(vaddr, BAR_IOVA, window)
        except OSError as exc:
            doc["map"] = {"ok": False, "errno": exc.errno, "errno_name": errno_name(exc.errno),
                          "error": error_text(exc), "seconds": round(time.monotonic() - start, 6)}
            return
        doc["map"] = {"ok": True, "iova": hex(BAR_IOVA), "bytes": window,
                      "seconds": round(time.monotonic() - start, 6)}
        ctrl = _client(s, args.client, args.size)
        try:
            doc["steps"] = transfers(ctrl, cmb, BAR_IOVA, args.offset, args.size, args.seed,
                                     ctrl.arena.alloc(args.size))
            doc["commands"] = ctrl.commands
        finally:
            ctrl.close()


def vfio_p2p(args):
    vfiobind.exit_on_signals()
    if args.probe:
        return probe(args)
    if not args.provider or not args.client or not args.method:
        raise UsageError("--provider, --client and --method are required (or --probe)")
    if args.provider == args.client:
        raise UsageError("the provider and the client must be two functions")
    size, offset = args.size, args.offset
    if size <= 0 or size % BLOCK or size > MAX_SIZE or offset % BLOCK:
        raise UsageError(f"--size must be a multiple of {BLOCK} up to {MAX_SIZE}, --offset a "
                         f"multiple of {BLOCK}")
    window = (size + (1 << 20) - 1) >> 20 << 20  # whole MiB of the CMB
    doc = probe(args)
    why = not_nvme(args.client)
    if why:
        doc.update(stage="unsupported", error=why, errno=None)
        return doc
    view = doc["devices"][args.client]["kernel_view"]
    cmb = doc["devices"][args.provider]["cmb"]
    if cmb is None or cmb[1] - cmb[0] + 1 < window:
        doc.update(stage="provider", error=f"{args.provider} has no BAR{CMB_BAR} of "
                   f"{window} bytes (a CMB)", errno=None)
        return doc
    bars = [(args.provider, CMB_BAR, cmb[0], cmb[1])]
    doc["seed"] = None
    if view and view.get("block"):
        doc["seed"], _ = seed_namespace(view, offset, size, args.seed)
    doc["methods"] = {}
    doc["trace"] = vfiotrace.setup() if args.observe else None
    try:
        for method in args.method:
            mdoc: dict = {}
            doc["methods"][method] = mdoc
            if args.observe:
                trace.clear()
            try:
                run_method(method, args, mdoc, window)
            except Refused as exc:
                mdoc.update(stage=exc.stage, error=exc.reason, errno=exc.errno)
            except (NvmeError, NvmeTimeout) as exc:
                mdoc.update(stage="client", error=str(exc), errno=None)
            except OSError as exc:
                mdoc.update(stage="vfio", error=error_text(exc), errno=exc.errno)
            if args.observe:
                mdoc["mechanism"] = trace.read(extra_bars=bars)
            steps = mdoc.get("steps") or {}
            mdoc["data_verified"] = bool(steps) and all(
                steps.get(k, {}).get("ok") for k in ("verify_read", "verify_write"))
            mdoc["mb_per_s"] = {k: mb_per_s(size, steps[k]["seconds"]) for k in
                                ("p2p_read", "p2p_write") if steps.get(k, {}).get("ok")}
    finally:
        doc["restore"] = vfiobind.restore()
    return doc
