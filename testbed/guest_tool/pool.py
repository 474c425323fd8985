"""pool: a provider's p2pmem pool at its limits.

- exhaust: mmap CHUNK-sized buffers from ``p2pmem/allocate`` until mmap fails (expected:
  ENOMEM at mmap: pages are inserted at mmap time, so a first touch never faults), touch the
  first and last byte of each, record ``available`` when full, munmap everything and check
  ``available`` is back at its starting value.  Mappings go through libc so no file
  descriptor is kept per mapping (Python's mmap object dups it: EMFILE long before the pool
  is empty).
- misuse: MAP_PRIVATE and a non-zero offset are refused (EINVAL); read() of the file fails.
- kill: a child maps SIZE bytes and loops O_DIRECT reads of the client into them; it is
  SIGKILLed after DELAY seconds with I/O in flight; ``available`` must come back.
"""

import ctypes
import errno as errno_mod
import mmap
import os
import signal
import time

from . import schema
from .dio import error_text, open_direct
from .sysfs import SYS_PCI, read
from .usage import UsageError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value
MAX_MAPPINGS = 100000
RETURN_WAIT = 10.0  # seconds for ``available`` to come back after a kill


def avail(bdf):
    value = read(f"{SYS_PCI}/{bdf}/p2pmem/available")
    return int(value) if value and value.isdigit() else None


def _errno_doc(exc):
    return {"errno": exc.errno, "errname": errno_mod.errorcode.get(exc.errno),
            "error": error_text(exc)}


def map_raw(bdf, size, flags=mmap.MAP_SHARED, offset=0):
    fd = os.open(f"{SYS_PCI}/{bdf}/p2pmem/allocate", os.O_RDWR)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, offset)
        if addr in (None, MAP_FAILED):
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return addr
    finally:
        os.close(fd)


def exhaust(bdf, chunk):
    start = avail(bdf)
    doc = {"chunk": chunk, "start_available": start, "failure": None, "touch_failures": []}
    maps: list = []
    t0 = time.monotonic()
    try:
        while len(maps) < MAX_MAPPINGS:
            try:
                addr = map_raw(bdf, chunk)
            except OSError as exc:
                doc["failure"] = _errno_doc(exc)
                break
            maps.append(addr)
            ctypes.memset(addr, 0x5A, 1)
            ctypes.memset(addr + chunk - 1, 0xA5, 1)
            if ctypes.string_at(addr, 1) != b"\x5a" or \
                    ctypes.string_at(addr + chunk - 1, 1) != b"\xa5":
                doc["touch_failures"].append(len(maps) - 1)
        doc["mapped"] = len(maps)
        doc["mapped_bytes"] = len(maps) * chunk
        doc["available_when_full"] = avail(bdf)
        doc["seconds_to_fill"] = round(time.monotonic() - t0, 3)
    finally:
        for addr in maps:
            _libc.munmap(addr, chunk)
    doc["available_after"] = avail(bdf)
    doc["returned"] = doc["available_after"] == start
    doc["ok"] = bool(doc["failure"] and doc["failure"]["errno"] == errno_mod.ENOMEM
                     and not doc["touch_failures"] and doc["returned"] and maps)
    return doc


def misuse(bdf):
    doc: dict = {}
    for name, kw in (("private", {"flags": mmap.MAP_PRIVATE}),
                     ("offset", {"offset": mmap.PAGESIZE})):
        try:
            addr = map_raw(bdf, 1 << 16, **kw)
            _libc.munmap(addr, 1 << 16)
            doc[name] = {"accepted": True}
        except OSError as exc:
            doc[name] = _errno_doc(exc)
    try:
        fd = os.open(f"{SYS_PCI}/{bdf}/p2pmem/allocate", os.O_RDONLY)
        try:
            os.read(fd, 16)
            doc["read"] = {"accepted": True}
        finally:
            os.close(fd)
    except OSError as exc:
        doc["read"] = _errno_doc(exc)
    doc["ok"] = all(doc[k].get("errno") == errno_mod.EINVAL for k in ("private", "offset")) \
        and not doc["read"].get("accepted")
    return doc


def _child(bdf, client, size, w):
    """Map, say so, then read the client into the mapping forever (until SIGKILL)."""
    try:
        fd = os.open(f"{SYS_PCI}/{bdf}/p2pmem/allocate", os.O_RDWR)
        buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fd)
        dev = open_direct(client)
    except OSError as exc:
        os.write(w, f"E{exc.errno}".encode())
        os._exit(1)
    os.write(w, b"R")
    n = 0
    while True:
        try:
            os.preadv(dev, [buf], (n % 8) * size)
        except OSError:
            pass
        n += 1


def kill(bdf, client, size, delay):
    start = avail(bdf)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            _child(bdf, client, size, w)
        finally:
            os._exit(1)
    os.close(w)
    said = os.read(r, 16)
    os.close(r)
    doc = {"size": size, "start_available": start, "available_while_mapped": avail(bdf)}
    if said != b"R":
        os.waitpid(pid, 0)
        doc.update(ok=False, error=f"the child could not map and open: {said.decode()}")
        return doc
    time.sleep(delay)
    doc["child_state"] = (read(f"/proc/{pid}/stat") or "").split(") ")[-1][:1]
    doc["child_wchan"] = read(f"/proc/{pid}/wchan")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    doc["seconds_to_die"] = round(time.monotonic() - t0, 3)
    doc["killed_by"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    deadline = time.monotonic() + RETURN_WAIT
    while (now := avail(bdf)) != start and time.monotonic() < deadline:
        time.sleep(0.1)
    doc["available_after"] = now
    doc["seconds_to_return"] = round(time.monotonic() - t0, 3)
    doc["returned"] = now == start
    doc["ok"] = bool(doc["returned"] and doc["killed_by"] == signal.SIGKILL
                     and doc["available_while_mapped"] is not None and start is not None
                     and doc["available_while_mapped"] <= start - size)
    return doc


def pool(args):
    bdf = args.provider
    if not os.path.isdir(f"{SYS_PCI}/{bdf}"):
        raise UsageError(f"no PCI device {bdf}")
    if args.chunk <= 0 or args.chunk % mmap.PAGESIZE:
        raise UsageError(f"--chunk must be a positive multiple of {mmap.PAGESIZE}")
    doc = {"provider": bdf, "client": args.client, "size": read(f"{SYS_PCI}/{bdf}/p2pmem/size")}
    if not os.path.isdir(f"{SYS_PCI}/{bdf}/p2pmem"):
        doc.update(stage=schema.STAGE_ALLOCATE, error=schema.NO_P2PMEM, errno=None)
        return doc
    doc[schema.EXHAUST] = exhaust(bdf, args.chunk)
    doc[schema.MISUSE] = misuse(bdf)
    if args.client:
        doc[schema.KILL] = kill(bdf, args.client, args.kill_size, args.kill_delay)
    doc["ok"] = all(doc[k]["ok"] for k in (schema.EXHAUST, schema.MISUSE, schema.KILL) if k in doc)
    return doc
