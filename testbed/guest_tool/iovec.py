"""iovec: O_DIRECT pwritev/preadv whose iovec is built from p2pmem and host-memory
segments (mixed iovecs, many segments, sub-page offsets), every byte verified.

A case is ``SEGS[/key=value...]``: SEGS is a comma list of ``KIND:SIZE[xCOUNT]`` (KIND
``p2p`` or ``host``), e.g. ``p2p:64K,host:64K``, ``host:4K,p2p:8K``, ``p2p:512x160``;
keys ``start`` (where the first p2p segment starts inside the p2pmem mapping: a sub-page
offset), ``gap`` (bytes between p2p segments, so the block layer cannot merge them) and
``hgap`` (the same between host segments).  p2p segments are carved in order from ONE
mapping of the provider's p2pmem, host segments from one anonymous mapping.

Each case runs at its own device offset, in two phases:

- write: the segments hold the seed's pattern; the device range is zeroed; pwritev of the
  whole iovec (looping on a short count, as a program would); the range is read back into a
  host buffer and compared byte for byte.
- read: the range holds pattern(seed + 1) written from a host buffer; the segments are
  poisoned; preadv of the whole iovec; every segment compared with what belongs there.

Per phase: errno, bytes, syscalls, the device's completed requests (``/sys/block/DEV/stat``)
and how many pages of the range sat in the page cache afterwards: Linux completes the part
of a <= 256-page direct iovec after the first switch between p2pmem and host pages through
the page cache, which byte checks alone cannot see.
"""

import argparse
import ctypes
import mmap
import os
import time

from . import schema
from .dio import error_text, gave_up, host_buffer, open_direct
from .pattern import BLOCK, POISON, corrupted, diff_ranges, pattern_range
from .sysfs import SYS_PCI, queue_limits, read
from .usage import UsageError, parse_size

KINDS = ("p2p", "host")
CASE_KEYS = ("start", "gap", "hgap")
PAGE = mmap.PAGESIZE


def parse_case(text):
    """'p2p:64K,host:4Kx2/start=512' -> ([('p2p', 65536), ('host', 4096), ...], {'start': 512})."""
    segs_text, *opts = text.split("/")
    segs = []
    for part in segs_text.split(","):
        kind, sep, rest = part.partition(":")
        if kind not in KINDS or not sep:
            raise UsageError(f"case {text!r}: segment {part!r} is not KIND:SIZE[xCOUNT] "
                             f"with KIND in {KINDS}")
        size_text, _, count = rest.partition("x")
        try:
            size = parse_size(size_text)
            n = int(count) if count else 1
        except (ValueError, argparse.ArgumentTypeError):
            raise UsageError(f"case {text!r}: bad size or count in {part!r}") from None
        if size <= 0 or n <= 0:
            raise UsageError(f"case {text!r}: segments need a positive size and count")
        segs += [(kind, size)] * n
    if len(segs) > 4096:
        raise UsageError(f"case {text!r}: more than 4096 segments")
    options = {k: 0 for k in CASE_KEYS}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key not in CASE_KEYS or not sep:
            raise UsageError(f"case {text!r}: option {opt!r} is not one of "
                             f"{', '.join(k + '=BYTES' for k in CASE_KEYS)}")
        try:
            options[key] = parse_size(value)
        except argparse.ArgumentTypeError:
            raise UsageError(f"case {text!r}: bad size in {opt!r}") from None
    return segs, options


def layout(segs, options):
    """Where each segment lives in its mapping: [(kind, offset, size)] and the mapping
    lengths needed (page multiples)."""
    cursor = {"p2p": options["start"], "host": 0}
    gap = {"p2p": options["gap"], "host": options["hgap"]}
    place = []
    for kind, size in segs:
        place.append((kind, cursor[kind], size))
        cursor[kind] += size + gap[kind]
    need = {k: -(-cursor[k] // PAGE) * PAGE for k in KINDS if any(s[0] == k for s in segs)}
    return place, need


# -- page cache residency: did part of the transfer go through the page cache? ------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
MAP_FAILED = ctypes.c_void_p(-1).value


def drop_cache(fd, offset, length):
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def cached_pages(dev, offset, length):
    """Pages of [offset, offset+length) of ``dev`` resident in its page cache (None: unknown)."""
    start = offset - offset % PAGE
    span = -(-(offset + length - start) // PAGE) * PAGE
    try:
        fd = os.open(dev, os.O_RDONLY)
    except OSError:
        return None
    try:
        addr = _libc.mmap(None, span, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    finally:
        os.close(fd)
    if addr in (None, MAP_FAILED):
        return None
    try:
        vec = ctypes.create_string_buffer(span // PAGE)
        if _libc.mincore(addr, span, vec) != 0:
            return None
        return sum(b & 1 for b in vec.raw)
    finally:
        _libc.munmap(addr, span)


def device_stat(dev):
    """Completed (reads, writes) of the block device, from /sys/block/DEV/stat."""
    f = (read(f"/sys/block/{os.path.basename(os.path.realpath(dev))}/stat") or "").split()
    return (int(f[0]), int(f[4])) if len(f) > 4 else (0, 0)


def transfer(fn, fd, views, offset, total):
    """One vectored transfer of every view, looping on short counts."""
    calls, done, sizes = 0, 0, []
    start = time.monotonic()
    try:
        while done < total:
            iov, skip = [], done
            for v in views:
                if skip >= len(v):
                    skip -= len(v)
                    continue
                iov.append(v[skip:])
                skip = 0
            n = fn(fd, iov, offset + done)
            for v in iov:
                v.release()
            calls += 1
            sizes.append(n)
            if n <= 0:
                return {"ok": False, "errno": None, "error": f"short transfer: {done} of "
                        f"{total} bytes", "bytes": done, "calls": calls, "call_bytes": sizes,
                        "seconds": round(time.monotonic() - start, 6)}
            done += n
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "error": error_text(exc), "bytes": done,
                "calls": calls + 1, "call_bytes": sizes,
                "seconds": round(time.monotonic() - start, 6)}
    return {"ok": True, "errno": None, "error": None, "bytes": done, "calls": calls,
            "call_bytes": sizes[:16], "seconds": round(time.monotonic() - start, 6)}


def host_io(fn, fd, data_or_size, offset):
    """A plain O_DIRECT transfer through a page-aligned host buffer."""
    size = len(data_or_size) if isinstance(data_or_size, (bytes, bytearray)) else data_or_size
    buf = host_buffer(-(-size // PAGE) * PAGE)
    try:
        if fn is os.pwritev:
            buf[:size] = data_or_size
        view = memoryview(buf)[:size]
        try:
            fn(fd, [view], offset)
            return bytes(view)
        finally:
            view.release()
    finally:
        buf.close()


def run_case(text, fd, dev, provider, offset, seed, corrupt_host):
    segs, options = parse_case(text)
    place, need = layout(segs, options)
    total = sum(s for _, s in segs)
    doc = {"case": text, "segments": len(segs), "kinds": [k for k, _, _ in place][:64],
           "total": total, "offset": offset, **options}
    maps = {}
    try:
        if "p2p" in need:
            try:
                afd = os.open(f"{SYS_PCI}/{provider}/p2pmem/allocate", os.O_RDWR)
                try:
                    maps["p2p"] = mmap.mmap(afd, need["p2p"], mmap.MAP_SHARED,
                                            mmap.PROT_READ | mmap.PROT_WRITE)
                finally:
                    os.close(afd)
            except OSError as exc:
                return gave_up(doc, schema.STAGE_ALLOCATE, exc)
        if "host" in need:
            maps["host"] = host_buffer(need["host"])
        views = [memoryview(maps[k])[o:o + s] for k, o, s in place]
        try:
            _phases(doc, fd, dev, views, place, offset, total, seed, corrupt_host)
        finally:
            for v in views:
                v.release()
    finally:
        for m in maps.values():
            m.close()
    return doc


def _measure(fn, fd, dev, views, offset, total):
    drop_cache(fd, offset, total)
    before = device_stat(dev)
    res = transfer(fn, fd, views, offset, total)
    after = device_stat(dev)
    res["requests"] = after[0] - before[0] if fn is os.preadv else after[1] - before[1]
    res["cached_pages"] = cached_pages(dev, offset, total)
    return res


def _phases(doc, fd, dev, views, place, offset, total, seed, corrupt_host):
    mismatches = []
    # write: the segments carry the pattern to the device
    expected = pattern_range(seed, offset, total)
    pos = 0
    for v in views:
        v[:] = expected[pos:pos + len(v)]
        pos += len(v)
    host_io(os.pwritev, fd, bytes(total), offset)
    doc[schema.WRITE] = w = _measure(os.pwritev, fd, dev, views, offset, total)
    if w["ok"]:
        back = host_io(os.preadv, fd, total, offset)
        mismatches += [dict(m, phase="write") for m in diff_ranges(back, expected, offset)]
    # read: the device's content lands in the segments
    expected = pattern_range(seed + 1, offset, total)
    host_io(os.pwritev, fd, expected, offset)
    if corrupt_host:
        doc["corrupted"] = _corrupt_first_host_segment(fd, place, offset, expected)
    for v in views:
        v[:] = bytes([POISON]) * len(v)
    doc[schema.READ] = r = _measure(os.preadv, fd, dev, views, offset, total)
    if r["ok"]:
        pos = 0
        for i, ((kind, _, size), v) in enumerate(zip(place, views)):
            for m in diff_ranges(v, expected[pos:pos + size], offset + pos):
                mismatches.append(dict(m, phase="read", segment=i, kind=kind))
            pos += size
    doc[schema.MISMATCHES] = mismatches[:16]
    doc["verified"] = bool(w["ok"] and r["ok"] and not mismatches)


def _corrupt_first_host_segment(fd, place, offset, expected):
    """Invert, on the device, the bytes the first host segment is about to receive
    (a read-modify-write of the 4 KiB blocks that hold them)."""
    pos = 0
    for kind, _, size in place:
        if kind == "host":
            break
        pos += size
    else:
        raise UsageError("--corrupt-host needs a case with a host segment")
    start, end = offset + pos, offset + pos + size
    first, last = start - start % BLOCK, -(-end // BLOCK) * BLOCK
    block = bytearray(host_io(os.preadv, fd, last - first, first))
    lo, hi = start - first, end - first
    block[lo:hi] = corrupted(block[lo:hi])
    host_io(os.pwritev, fd, bytes(block), first)
    return {"dev_start": start, "dev_end": end}


def iovec(args):
    if not args.case:
        raise UsageError("give at least one --case")
    if not os.path.exists(args.client):
        raise UsageError(f"{args.client} does not exist")
    cases = [parse_case(c) for c in args.case]  # bad cases are usage errors before any I/O
    if any(k == "p2p" for segs, _ in cases for k, _ in segs) and not args.provider:
        raise UsageError("--provider is required for p2p segments")
    doc = {"provider": args.provider, "client": args.client, "seed": args.seed,
           "limits": queue_limits(args.client), schema.CASES: []}
    try:
        fd = open_direct(args.client)
    except OSError as exc:
        return gave_up(doc, schema.STAGE_OPEN, exc)
    try:
        offset = args.offset
        for text, (segs, _) in zip(args.case, cases):
            total = sum(s for _, s in segs)
            doc[schema.CASES].append(run_case(text, fd, args.client, args.provider, offset,
                                              args.seed, args.corrupt_host))
            offset += -(-total // (1 << 20)) * (1 << 20) + (1 << 20)
    finally:
        os.close(fd)
    return summarize(doc)


def summarize(doc):
    """The transfer-document view of all cases (see schema): the first failed write and
    read, whether every byte verified, and the 4 KiB blocks that did not."""
    cases = doc[schema.CASES]
    for c in cases:
        if c.get("stage"):
            doc.update(stage=c["stage"], error=c.get("error"), errno=c.get("errno"))
            return doc
    steps = {}
    for phase in (schema.WRITE, schema.READ):
        ran = [c[phase] for c in cases if phase in c]
        failed = [s for s in ran if not s["ok"]]
        steps[phase] = dict(failed[0]) if failed else {
            "ok": True, "errno": None, "error": None,
            "bytes": sum(s["bytes"] for s in ran),
            "seconds": round(sum(s["seconds"] for s in ran), 6)}
        steps[phase]["skipped"] = False
    bad = sorted({m["dev_start"] // BLOCK for c in cases for m in c.get(schema.MISMATCHES, [])})
    doc.update(steps=steps, data_verified=all(c.get("verified") for c in cases),
               mismatched_blocks=bad,
               mb_per_s={p: round(steps[p]["bytes"] / steps[p]["seconds"] / 1e6, 3)
                         if steps[p]["ok"] and steps[p]["seconds"] > 0 else None
                         for p in (schema.READ, schema.WRITE)})
    return doc

