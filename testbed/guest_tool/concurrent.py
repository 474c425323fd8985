"""concurrent: every (provider, client) pair at once, several threads per pair, both
directions, each thread with its own p2pmem buffer, device region and pattern.

Thread t of pair p owns the client region ``base + (p * threads + t) * 2 * size`` (pairs are
numbered over the whole command, so two pairs sharing a client never overlap) and one
``size``-byte mapping of the provider's p2pmem.  Each iteration: the CPU fills the buffer
with the thread's pattern (its own seed per iteration) -> O_DIRECT pwrite (the client
DMA-reads the CMB) -> the buffer is poisoned -> O_DIRECT pread back (the client DMA-writes
the CMB) -> compared in the buffer, and the region re-read through host memory and compared
again.  A block that belongs to another thread or iteration names its seed and block
(``describe_block``), so lost and crossed data are told apart.  Python releases the GIL in
preadv/pwritev: the transfers overlap for real.
"""

import os
import threading
import time

from . import schema
from .dio import (
    UsageError,
    allocate_p2pmem,
    error_text,
    host_buffer,
    open_direct,
    skipped,
)
from .pattern import BLOCK, POISON, compare_blocks, pattern
from .sysfs import SYS_PCI, read


def _avail(bdf):
    value = read(f"{SYS_PCI}/{bdf}/p2pmem/available")
    return int(value) if value and value.isdigit() else None


def thread_seed(seed, pair, thread, iteration):
    """One seed per thread and iteration (a stale or foreign block never matches)."""
    return (seed << 32) + (pair << 20) + (thread << 12) + iteration


def worker(res, pair, t, bdf, dev, args, barrier):
    size = args.size
    off = args.base_offset + (pair * args.threads + t) * 2 * size
    r = res[(pair, t)] = {"pair": pair, "thread": t, "offset": off, "iterations": 0,
                          "bytes": 0, "errors": [], "mismatches": [], "seconds": 0.0}
    buf, err = allocate_p2pmem(bdf, size)
    host = host_buffer(size)
    fd = None
    try:
        if err:
            r["allocate"] = err
        else:
            fd = open_direct(dev)
    except OSError as exc:
        r["errors"].append({"step": "open", "errno": exc.errno, "error": error_text(exc)})
    finally:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
    if fd is None:
        host.close()
        if buf is not None:
            buf.close()
        return
    start = time.monotonic()
    try:
        for i in range(args.iters):
            step = "write"
            try:
                expected = pattern(thread_seed(args.seed, pair, t, i), off // BLOCK, size // BLOCK)
                buf[:] = expected
                os.pwritev(fd, [buf], off)
                buf[:] = bytes([POISON]) * size
                step = "read"
                os.preadv(fd, [buf], off)
            except OSError as exc:
                r["errors"].append({"step": step, "iteration": i, "errno": exc.errno,
                                    "error": error_text(exc)})
                break
            for where, data in (("p2pmem", buf), ("host", None)):
                if data is None:
                    os.preadv(fd, [host], off)
                    data = host
                bad, details = compare_blocks(data, expected)
                if bad:
                    r["mismatches"].append({"iteration": i, "where": where,
                                            "blocks": [off // BLOCK + b for b in bad][:16],
                                            "details": details[:2]})
            r["iterations"] += 1
            r["bytes"] += 2 * size
    finally:
        r["seconds"] = round(time.monotonic() - start, 3)
        os.close(fd)
        host.close()
        if buf is not None:
            buf.close()


def concurrent(args):
    if args.size <= 0 or args.size % BLOCK:
        raise UsageError(f"--size must be a positive multiple of {BLOCK}")
    if args.threads < 1 or args.iters < 1:
        raise UsageError("--threads and --iters must be at least 1")
    pairs = []
    for text in args.pair:
        bdf, sep, dev = text.partition("=")
        if not sep or not os.path.isdir(f"{SYS_PCI}/{bdf}") or not os.path.exists(dev):
            raise UsageError(f"--pair {text!r}: expected PROVIDER_BDF=/dev/CLIENT (both present)")
        pairs.append((bdf, dev))
    providers = sorted({b for b, _ in pairs})
    before = {b: _avail(b) for b in providers}
    res: dict = {}
    threads = []
    barrier = threading.Barrier(len(pairs) * args.threads + 1)
    for p, (bdf, dev) in enumerate(pairs):
        for t in range(args.threads):
            th = threading.Thread(target=worker, args=(res, p, t, bdf, dev, args, barrier))
            th.start()
            threads.append(th)
    barrier.wait()  # every buffer is mapped: sample the pools, then they all go at once
    during = {b: _avail(b) for b in providers}
    start = time.monotonic()
    for th in threads:
        th.join()
    wall = time.monotonic() - start
    after = {b: _avail(b) for b in providers}
    doc = {"threads": args.threads, "size": args.size, "iters": args.iters,
           "seconds": round(wall, 3), schema.AVAILABLE: {"before": before, "mapped": during,
                                                         "after": after},
           schema.PAIRS: [], schema.WORKERS: [res[k] for k in sorted(res)]}
    for p, (bdf, dev) in enumerate(pairs):
        doc[schema.PAIRS].append(pair_doc(p, bdf, dev, [res[(p, t)] for t in range(args.threads)],
                                          args, wall))
    return doc


def pair_doc(p, bdf, dev, workers, args, wall):
    """One pair's threads as a transfer document (see schema)."""
    out = {"provider": bdf, "client": dev}
    alloc = next((w["allocate"] for w in workers if w.get("allocate")), None)
    if alloc:
        out.update(alloc)
        return out
    steps = {}
    for step in (schema.WRITE, schema.READ):
        errs = [e for w in workers for e in w["errors"] if e["step"] in (step, "open")]
        steps[step] = {"ok": True, "skipped": False, "errno": None, "error": None} if not errs \
            else {"ok": False, "skipped": False, "errno": errs[0]["errno"],
                  "error": f"{len(errs)} thread(s) failed; first: {errs[0]['error']}"}
    wrote = any(w["iterations"] for w in workers)
    if not steps[schema.WRITE]["ok"] and not wrote:
        steps[schema.READ] = skipped("the writes failed")
    mism = [m for w in workers for m in w["mismatches"]]
    complete = all(w["iterations"] == args.iters for w in workers)
    nbytes = sum(w["bytes"] for w in workers)
    out.update(steps=steps, data_verified=bool(complete and not mism),
               mismatched_blocks=sorted({b for m in mism for b in m["blocks"]})[:32],
               mismatches=mism[:8], bytes=nbytes,
               iterations=[w["iterations"] for w in workers],
               mb_per_s={"both": round(nbytes / wall / 1e6, 3) if wall > 0 and nbytes else None})
    return out

