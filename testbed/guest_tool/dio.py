"""Direct I/O pieces shared by the workload sub-commands: sizes, step records, O_DIRECT
transfers, host buffers, p2pmem allocation."""

import errno as errno_mod
import mmap
import os
import time

from . import schema
from .pattern import BLOCK, compare_blocks
from .sysfs import SYS_PCI, read
from .usage import UsageError

MAX_SIZE = 32 << 20  # keeps the guest's memory use small (a few copies of the buffer)


def mb_per_s(nbytes, seconds):
    if not nbytes or seconds is None or seconds <= 0:
        return None
    return round(nbytes / seconds / 1e6, 3)


def error_text(exc):
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno_mod.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return str(exc)


def gave_up(doc, stage, exc, **extra):
    """``doc`` saying the sub-command gave up at ``stage`` before any transfer, and why.

        >>> gave_up({}, "open", OSError(2, "No such file or directory"))
        {'stage': 'open', 'error': 'ENOENT: No such file or directory', 'errno': 2}
    """
    doc.update(stage=stage, error=error_text(exc), errno=exc.errno, **extra)
    return doc


def step(ok, seconds=0.0, nbytes=0, exc=None, error=None, **extra):
    """A transfer step: {ok, errno, error, seconds, bytes, skipped}."""
    out = {"ok": bool(ok), "skipped": False,
           "errno": exc.errno if isinstance(exc, OSError) else None,
           "error": error if error is not None else (error_text(exc) if exc else None),
           "seconds": round(seconds, 6), "bytes": nbytes}
    out.update(extra)
    return out


def skipped(reason, verify=False):
    if verify:
        return {"ok": False, "skipped": True, "reason": reason, "mismatched_blocks": [],
                "details": [], "seconds": 0.0}
    return {"ok": False, "skipped": True, "reason": reason, "errno": None, "error": None,
            "seconds": 0.0, "bytes": 0}


def verify_step(actual, expected, seconds_from):
    bad, details = compare_blocks(actual, expected)
    return {"ok": not bad, "skipped": False, "mismatched_blocks": bad, "details": details,
            "seconds": round(time.monotonic() - seconds_from, 6)}


class ShortTransfer(Exception):
    pass


def _transfer(fn, fd, buf, offset):
    """pread/pwrite all of ``buf`` at ``offset`` (O_DIRECT: in block multiples)."""
    mv = memoryview(buf)
    done = 0
    try:
        while done < len(mv):
            n = fn(fd, [mv[done:]], offset + done)
            if n <= 0:
                raise ShortTransfer(f"short transfer: {done} of {len(mv)} bytes")
            done += n
    finally:
        mv.release()
    return done


def timed_io(kind, fd, buf, offset):
    """Run one O_DIRECT transfer and return its step record."""
    fn = os.preadv if kind == "read" else os.pwritev
    start = time.monotonic()
    try:
        n = _transfer(fn, fd, buf, offset)
    except (OSError, ShortTransfer) as exc:
        return step(False, time.monotonic() - start, 0, exc=exc)
    return step(True, time.monotonic() - start, n)


def host_buffer(size):
    """Page-aligned anonymous memory (what O_DIRECT wants)."""
    return mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def fill(buf, data):
    memoryview(buf)[:len(data)] = data


def p2pmem_dir(bdf):
    return f"{SYS_PCI}/{bdf}/p2pmem"


def p2pmem_state(bdf):
    d = p2pmem_dir(bdf)
    return {k: read(f"{d}/{k}") for k in ("size", "available", "published")}


def allocate_p2pmem(bdf, size):
    """mmap ``size`` bytes of the provider's p2pmem; (mmap, None) or (None, error-doc)."""
    if not os.path.isdir(f"{SYS_PCI}/{bdf}"):
        raise UsageError(f"no PCI device {bdf}")
    d = p2pmem_dir(bdf)
    if not os.path.isdir(d):
        return None, {"stage": schema.STAGE_ALLOCATE, "error": schema.NO_P2PMEM, "errno": None,
                      "detail": f"{d} does not exist: the provider publishes no p2pmem"}
    try:
        fd = os.open(f"{d}/allocate", os.O_RDWR)
    except OSError as exc:
        return None, {"stage": schema.STAGE_ALLOCATE, "error": error_text(exc), "errno": exc.errno,
                      "p2pmem": p2pmem_state(bdf)}
    try:
        buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        return None, {"stage": schema.STAGE_ALLOCATE, "error": error_text(exc), "errno": exc.errno,
                      "p2pmem": p2pmem_state(bdf)}
    finally:
        os.close(fd)
    return buf, None


def open_direct(dev, flags=os.O_RDWR):
    if not os.path.exists(dev):
        raise UsageError(f"{dev} does not exist")
    return os.open(dev, flags | os.O_DIRECT | os.O_SYNC)


def device_bytes(fd):
    return os.lseek(fd, 0, os.SEEK_END)


def check_blocks(size, offset, what="--offset"):
    if size <= 0 or size % BLOCK:
        raise UsageError(f"--size must be a positive multiple of {BLOCK}")
    if size > MAX_SIZE:
        raise UsageError(f"--size must be at most {MAX_SIZE} bytes")
    if offset < 0 or offset % BLOCK:
        raise UsageError(f"{what} must be a non-negative multiple of {BLOCK}")
