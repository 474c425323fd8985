"""hmm-p2p: ask the testbed's hmm_p2p_test module to mirror a range mixing host pages and a
provider's p2pmem for a client PCI device, as an on-demand-paging driver does, and report
what the kernel decided per page (kernel-modules/hmm_p2p_test/hmm_p2p_test.h is the
interface; the host loads the module before and unloads it after).

The range is ``host | p2pmem x N | host``: an anonymous reservation with the provider's
``p2pmem/allocate`` mapped over its middle (MAP_FIXED), so one hmm_range_fault() walks
three VMAs.  Three steps:

- ``map``: HMM_P2P_IOC_MAP, then the per-page table (state, bits, physical and DMA
  address, the P2P map type);
- ``unmap``: HMM_P2P_IOC_UNMAP: every mapped page must be unmapped by
  hmm_dma_unmap_pfn() and left with no DMA flags, and a refused page not;
- ``invalidate``: map again, then replace the p2pmem with anonymous memory: the
  module's mmu_interval_notifier must unmap the P2P pages itself (as ODP does when a
  process unmaps memory a device mirrors), so the final unmap finds them gone.

For the oracle, each P2P page's expected PCI bus address is computed from the provider's
BARs: the BAR register in config space (a bus address) plus the page's offset from the
resource's CPU address in sysfs.
"""

import ctypes
import errno as errno_mod
import fcntl
import mmap
import os
import struct

from .schema import HMM_HOST, HMM_INVALIDATE, HMM_MAP, HMM_P2P, HMM_PAGES, HMM_UNMAP
from .usage import UsageError

DEVICE = "/dev/hmm_p2p_test"
PAGE = mmap.PAGESIZE
SYS_PCI = "/sys/bus/pci/devices"

# struct hmm_p2p_req and struct hmm_p2p_page (hmm_p2p_test.h)
REQ = struct.Struct("<QQIBBHiiIIQQQQQ")
PAGE_REC = struct.Struct("<QQIIII")
WRITE = 1
MAX_PAGES = 4096


def _iowr(nr, size):
    """_IOWR('H', nr, size) on x86/arm64 (asm-generic/ioctl.h)."""
    return (3 << 30) | (size << 16) | (ord("H") << 8) | nr


IOC_MAP, IOC_UNMAP = _iowr(0x70, REQ.size), _iowr(0x71, REQ.size)
STATES = ("none", "plain", "host-bridge", "bus", "refused", "failed")
BITS = ("valid", "write", "error", "p2p_page", "dma_mapped", "p2pdma", "p2pdma_bus",
        "invalidated", "unmapped", "cleared")
MAP_TYPES = ("unknown", "none", "not-supported", "bus-address", "host-bridge")
REQ_FIELDS = ("addr", "npages", "domain", "bus", "devfn", "flags", "fault_ret", "alloc_ret",
              "use_iova", "need_unmap", "mapped", "refused", "failed", "invalidated",
              "unmapped")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value
MAP_FIXED = 0x10


def parse_bdf(text):
    """'0000:03:00.0' -> (domain, bus, devfn)."""
    try:
        dom, bus, rest = text.split(":")
        slot, fn = rest.split(".")
        return int(dom, 16), int(bus, 16), (int(slot, 16) << 3) | int(fn, 16)
    except ValueError:
        raise UsageError(f"not a PCI address: {text!r} (want DDDD:BB:SS.F)") from None


def bits_names(bits):
    return [name for i, name in enumerate(BITS) if bits & (1 << i)]


def _mmap(addr, size, prot, flags, fd=-1):
    got = _libc.mmap(addr, size, prot, flags, fd, 0)
    if got in (None, MAP_FAILED):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return got


def provider_bars(bdf):
    """[{"bar", "start", "end", "bus"}] of the provider's memory BARs: the CPU range from
    sysfs ``resource`` and the bus address from the BAR register in config space."""
    try:
        with open(f"{SYS_PCI}/{bdf}/resource") as f:
            lines = f.read().split("\n")[:6]
        with open(f"{SYS_PCI}/{bdf}/config", "rb") as f:
            cfg = f.read(64)
    except OSError:
        return []
    out = []
    skip = False
    for i, line in enumerate(lines):
        if skip:
            skip = False
            continue
        parts = line.split()
        if len(parts) < 3 or len(cfg) < 0x10 + 4 * (i + 1):
            continue
        start, end, flags = (int(p, 16) for p in parts[:3])
        low = struct.unpack_from("<I", cfg, 0x10 + 4 * i)[0]
        if low & 1:  # an I/O BAR
            continue
        bus = low & ~0xF
        if (low >> 1) & 3 == 2 and len(cfg) >= 0x10 + 4 * (i + 2):  # 64-bit BAR
            bus |= struct.unpack_from("<I", cfg, 0x10 + 4 * (i + 1))[0] << 32
            skip = True
        if start or end:
            out.append({"bar": i, "start": start, "end": end, "bus": bus, "flags": flags})
    return out


def expected_bus(bars, phys):
    for b in bars:
        if b["start"] <= phys <= b["end"]:
            return b["bus"] + (phys - b["start"])
    return None


class Mirror:
    """One open of the module's device."""

    def __init__(self, path=DEVICE):
        self.fd = os.open(path, os.O_RDWR)

    def close(self):
        os.close(self.fd)

    def _ioctl(self, cmd, addr, npages, client, flags):
        dom, bus, devfn = client
        buf = bytearray(REQ.pack(addr, npages, dom, bus, devfn, flags, *([0] * 9)))
        fcntl.ioctl(self.fd, cmd, buf, True)
        return dict(zip(REQ_FIELDS, REQ.unpack(bytes(buf))))

    def map(self, addr, npages, client, write=True):
        return self._ioctl(IOC_MAP, addr, npages, client, WRITE if write else 0)

    def unmap(self):
        return self._ioctl(IOC_UNMAP, 0, 0, (0, 0, 0), 0)

    def table(self, npages):
        os.lseek(self.fd, 0, os.SEEK_SET)
        raw = b""
        want = npages * PAGE_REC.size
        while len(raw) < want:
            chunk = os.read(self.fd, want - len(raw))
            if not chunk:
                break
            raw += chunk
        out = []
        for off in range(0, len(raw) - PAGE_REC.size + 1, PAGE_REC.size):
            phys, dma, state, bits, map_type, _ = PAGE_REC.unpack_from(raw, off)
            out.append({"state": STATES[state] if state < len(STATES) else f"state{state}",
                        "bits": bits_names(bits), "phys": phys, "dma": dma,
                        "map_type": MAP_TYPES[map_type] if map_type < len(MAP_TYPES)
                        else f"type{map_type}"})
        return out


def _step(doc_name, fn, *args):
    try:
        return fn(*args), None
    except OSError as exc:
        return None, {"step": doc_name, "errno": exc.errno,
                      "error": f"{doc_name}: {os.strerror(exc.errno or 0)}"}


def hmm_p2p(args):
    if not 1 <= args.p2p_pages <= MAX_PAGES - 2:
        raise UsageError(f"--p2p-pages must be in 1..{MAX_PAGES - 2}")
    client = parse_bdf(args.client)
    parse_bdf(args.provider)
    layout = [HMM_HOST] + [HMM_P2P] * args.p2p_pages + [HMM_HOST]
    npages = len(layout)
    doc = {"layout": layout, "provider": args.provider, "client": args.client,
           "bars": provider_bars(args.provider)}
    if not os.path.exists(DEVICE):
        return dict(doc, stage="module", error=f"{DEVICE} does not exist (module not loaded)",
                    errno=errno_mod.ENOENT)
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    try:
        base = _mmap(None, npages * PAGE, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as exc:
        return dict(doc, stage="reserve", error=str(exc), errno=exc.errno)
    p2p_addr, p2p_len = base + PAGE, args.p2p_pages * PAGE
    try:
        for i, kind in enumerate(layout):
            if kind == HMM_HOST:
                ctypes.memset(base + i * PAGE, 0x5A, PAGE)
        try:
            fd = os.open(f"{SYS_PCI}/{args.provider}/p2pmem/allocate", os.O_RDWR)
        except OSError as exc:
            return dict(doc, stage="allocate", error=str(exc), errno=exc.errno)
        try:
            _mmap(p2p_addr, p2p_len, prot, mmap.MAP_SHARED | MAP_FIXED, fd)
        except OSError as exc:
            return dict(doc, stage="allocate", error=str(exc), errno=exc.errno)
        finally:
            os.close(fd)
        try:
            mirror = Mirror()
        except OSError as exc:
            return dict(doc, stage="module", error=str(exc), errno=exc.errno)
        try:
            doc.update(_run_steps(mirror, base, npages, client, p2p_addr, p2p_len, prot,
                                  doc["bars"], layout))
        finally:
            mirror.close()
    finally:
        _libc.munmap(base, npages * PAGE)
    return doc


def _run_steps(mirror, base, npages, client, p2p_addr, p2p_len, prot, bars, layout):
    out = {}
    req, err = _step("map", mirror.map, base, npages, client)
    if err:
        return {"stage": "map", **err}
    pages = mirror.table(npages)
    for kind, page in zip(layout, pages):
        page["kind"] = kind
        if kind == HMM_P2P:
            page["expected_bus"] = expected_bus(bars, page["phys"])
    out[HMM_MAP] = dict(req, **{HMM_PAGES: pages})
    req, err = _step("unmap", mirror.unmap)
    if err:
        return dict(out, stage="unmap", **err)
    out[HMM_UNMAP] = dict(req, **{HMM_PAGES: [p["bits"] for p in mirror.table(npages)]})
    # the invalidation path: map again, then take the p2pmem away from under the mirror
    req, err = _step("map", mirror.map, base, npages, client)
    if err:
        return dict(out, stage="remap", **err)
    mapped_again = req
    try:
        _mmap(p2p_addr, p2p_len, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED)
    except OSError as exc:
        return dict(out, stage="replace", error=str(exc), errno=exc.errno)
    req, err = _step("unmap", mirror.unmap)
    if err:
        return dict(out, stage="invalidate", **err)
    out[HMM_INVALIDATE] = dict(req, mapped=mapped_again["mapped"],
                               refused=mapped_again["refused"],
                               **{HMM_PAGES: [p["bits"] for p in mirror.table(npages)]})
    return out
