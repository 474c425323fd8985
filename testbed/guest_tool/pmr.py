"""pmr: the NVMe Persistent Memory Region: enable it, write or verify a seeded pattern."""

import errno as errno_mod
import mmap
import os
import time

from .dio import gave_up, mb_per_s, step
from .pattern import BLOCK, MAX_DETAILS, block_digest, describe_block, pattern_block
from .sysfs import SYS_PCI
from .usage import UsageError

REG_CAP, REG_PMRCAP, REG_PMRCTL, REG_PMRSTS = 0x00, 0xE00, 0xE04, 0xE08
REG_PMREBS, REG_PMRSWTP = 0xE0C, 0xE10
PMR_DEFAULT_SIZE = 4 << 20  # about 2 s per direction under TCG


def decode_pmrcap(v):
    return {"rds": bool(v >> 3 & 1), "wds": bool(v >> 4 & 1), "bir": v >> 5 & 0x7,
            "pmrtu": v >> 8 & 0x3, "pmrwbm": v >> 10 & 0xF, "pmrto": v >> 16 & 0xFF,
            "cmss": bool(v >> 24 & 1)}


def decode_pmrsts(v):
    return {"err": v & 0xFF, "nrdy": bool(v >> 8 & 1), "hsts": v >> 9 & 0x7,
            "cbai": bool(v >> 12 & 1)}


class Regs:
    """32-bit accesses to BAR0 through sysfs resource0 (one load/store per access)."""

    def __init__(self, bdf):
        fd = os.open(f"{SYS_PCI}/{bdf}/resource0", os.O_RDWR | os.O_SYNC)
        try:
            self.mm = mmap.mmap(fd, BLOCK, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.words = memoryview(self.mm).cast("I")

    def __getitem__(self, off):
        return self.words[off // 4]

    def __setitem__(self, off, value):
        self.words[off // 4] = value

    def close(self):
        self.words.release()
        self.mm.close()


def _unbind(bdf):
    drv = f"{SYS_PCI}/{bdf}/driver"
    if not os.path.exists(drv):
        return None
    name = os.path.basename(os.path.realpath(drv))
    with open(f"{drv}/unbind", "w") as f:
        f.write(bdf)
    return name


def pmr(args):
    bdf, seed = args.bdf, args.seed
    doc = {"bdf": bdf, "mode": args.mode, "seed": seed}
    if not os.path.isdir(f"{SYS_PCI}/{bdf}"):
        raise UsageError(f"no PCI device {bdf}")
    doc["unbound_driver"] = None
    try:
        regs = Regs(bdf)
    except OSError as exc:
        regs = None
        bound = os.path.exists(f"{SYS_PCI}/{bdf}/driver")
        if not (exc.errno == errno_mod.EINVAL and bound):
            return gave_up(doc, "map_bar0", exc)
        if not args.unbind:
            return gave_up(doc, "map_bar0", exc,
                           hint="the driver holds the BARs and the kernel has "
                                "CONFIG_IO_STRICT_DEVMEM: boot with iomem=relaxed or pass "
                                "--unbind")
    if regs is None:  # only when the strict-devmem refusal is in the way
        try:
            doc["unbound_driver"] = _unbind(bdf)
            regs = Regs(bdf)
        except OSError as exc:
            return gave_up(doc, "map_bar0", exc)
    try:
        return _pmr_steps(regs, args, doc)
    finally:
        regs.close()


def _pmr_steps(regs, args, doc):
    cap = regs[REG_CAP] | regs[REG_CAP + 4] << 32
    pmrcap = regs[REG_PMRCAP]
    doc.update(cap_pmrs=bool(cap >> 56 & 1), pmrcap=pmrcap, pmrcap_fields=decode_pmrcap(pmrcap),
               pmrctl_before=regs[REG_PMRCTL], pmrsts_before=regs[REG_PMRSTS])
    if not doc["cap_pmrs"]:
        doc.update(stage="pmrcap", error="the controller has no PMR (CAP.PMRS = 0)",
                   errno=None)
        return doc
    bar = doc["pmrcap_fields"]["bir"]
    res = f"{SYS_PCI}/{args.bdf}/resource{bar}"
    if not os.path.exists(res):
        doc.update(stage="pmrcap", error=f"PMRCAP.BIR={bar} but {res} is missing", errno=None)
        return doc
    bar_size = os.stat(res).st_size
    size = args.size if args.size is not None else min(bar_size, PMR_DEFAULT_SIZE)
    if size <= 0 or size % BLOCK or size > bar_size:
        raise UsageError(f"--size must be a positive multiple of {BLOCK} up to {bar_size}")
    nblocks = size // BLOCK
    doc.update(bar=bar, bar_size=bar_size, size=size, blocks=nblocks)
    steps = doc["steps"] = {}

    # enable: PMRCTL.EN, then wait for PMRSTS.NRDY to clear (PMRTO is in 500 ms units)
    start = time.monotonic()
    enabled_by_us = not regs[REG_PMRCTL] & 1
    if enabled_by_us:
        regs[REG_PMRCTL] = regs[REG_PMRCTL] | 1
    limit = start + min(10.0, max(1.0, doc["pmrcap_fields"]["pmrto"] * 0.5))
    while regs[REG_PMRSTS] >> 8 & 1 and time.monotonic() < limit:
        time.sleep(0.01)
    sts = regs[REG_PMRSTS]
    steps["enable"] = step(not sts >> 8 & 1, time.monotonic() - start, 0,
                           error="PMRSTS.NRDY stays set" if sts >> 8 & 1 else None,
                           enabled_by_us=enabled_by_us)
    doc["pmrctl"] = regs[REG_PMRCTL]
    if not steps["enable"]["ok"]:
        doc.update(pmrsts=sts, pmrsts_fields=decode_pmrsts(sts), data_verified=False,
                   mismatched_blocks=[], mb_per_s=None)
        return doc

    try:
        fd = os.open(res, os.O_RDWR | os.O_SYNC)
        try:
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
    except OSError as exc:
        return gave_up(doc, f"map_bar{bar}", exc)
    try:
        if args.mode == "write":
            start = time.monotonic()
            for i in range(nblocks):
                mm[i * BLOCK:(i + 1) * BLOCK] = pattern_block(args.seed, i)
            steps["write"] = step(True, time.monotonic() - start, size)
            start = time.monotonic()
            flush_error = None
            try:
                mm.flush()  # msync; QEMU syncs its backend on the PMRSTS read below
            except OSError as e:
                flush_error = e
            sts = regs[REG_PMRSTS]
            steps["flush"] = step(flush_error is None, time.monotonic() - start, 0,
                                  exc=flush_error)
            rate = steps["write"]
        else:
            sts = regs[REG_PMRSTS]
            rate = None
        # verify (after write: read back; for read: against the seed's pattern)
        start = time.monotonic()
        bad: list = []
        details: list = []
        for i in range(nblocks):
            blk = mm[i * BLOCK:(i + 1) * BLOCK]
            exp = pattern_block(args.seed, i)
            if block_digest(blk) != block_digest(exp):
                bad.append(i)
                if len(details) < MAX_DETAILS:
                    details.append({"block": i, "found": describe_block(blk),
                                    "expected": describe_block(exp)})
        secs = time.monotonic() - start
        steps["verify"] = {"ok": not bad, "skipped": False, "mismatched_blocks": bad,
                           "details": details, "seconds": round(secs, 6)}
    finally:
        mm.close()
    doc.update(pmrsts=sts, pmrsts_fields=decode_pmrsts(sts),
               data_verified=steps["verify"]["ok"], mismatched_blocks=steps["verify"][
                   "mismatched_blocks"],
               mb_per_s={"write": mb_per_s(size, rate["seconds"]) if rate else None,
                         "read": mb_per_s(size, steps["verify"]["seconds"])})
    return doc
