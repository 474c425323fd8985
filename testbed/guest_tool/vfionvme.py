"""vfio-nvme: the userspace NVMe driver on its own, against one controller.

The controller is taken from the nvme driver (what the kernel showed of it is recorded
first: serial, model, firmware, namespace size), driven over VFIO (type1 or iommufd):
Identify Controller and Namespace, then a seeded pattern written from host memory to the
namespace and read back into other host memory, every 4 KiB block compared; the
controller goes back to nvme and the kernel reads the range with O_DIRECT, so the data
is checked by a second, independent reader.
"""

import mmap
import os
import re
import time

from .dio import error_text, gave_up, mb_per_s, step, verify_step
from .pattern import BLOCK, pattern
from .sysfs import read
from .unvme import Controller, NvmeError, NvmeTimeout
from .usage import UsageError
from .vfiosession import Refused, Session

MAX_SIZE = 8 << 20


NVME_CLASS = "0x010802"


def not_nvme(bdf):
    """Why ``bdf`` cannot be the client (the userspace driver drives NVMe only), or None."""
    cls = read(f"/sys/bus/pci/devices/{bdf}/class")
    if cls is None:
        return f"{bdf}: no such PCI device in the guest"
    return None if cls == NVME_CLASS else \
        f"{bdf} is not an NVMe controller (class {cls}): the userspace driver drives NVMe only"


def kernel_view(bdf):
    """The nvme driver's view of the controller at ``bdf``: serial, model, firmware, and
    namespace 1 (its block device, size in LBAs, LBA size); None when nvme does not hold
    it."""
    base = "/sys/class/nvme"
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if os.path.basename(os.path.realpath(f"{base}/{name}/device")) != bdf:
            continue
        out = {"ctrl": name, "serial": read(f"{base}/{name}/serial"),
               "model": read(f"{base}/{name}/model"),
               "firmware": read(f"{base}/{name}/firmware_rev")}
        for entry in sorted(os.listdir(f"{base}/{name}")):
            if re.fullmatch(r"nvme\d+(c\d+)?n1", entry):
                sectors = read(f"{base}/{name}/{entry}/size")
                lbs = read(f"{base}/{name}/{entry}/queue/logical_block_size")
                head = re.sub(r"c\d+n", "n", entry)
                block = head if os.path.exists(f"/sys/block/{head}") else entry
                if sectors and sectors.isdigit():
                    out["block"] = f"/dev/{block}"
                    if lbs is None:
                        lbs = read(f"/sys/block/{block}/queue/logical_block_size")
                    out["lba_size"] = int(lbs) if lbs and lbs.isdigit() else None
                    if out["lba_size"]:
                        out["nsze"] = int(sectors) * 512 // out["lba_size"]
                break
        return out
    return None


def _read_direct(path, offset, size):
    """An O_DIRECT read of ``size`` bytes at ``offset`` into page-aligned host memory."""
    buf = mmap.mmap(-1, size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        got = os.preadv(fd, [buf], offset)
        return bytes(buf[:got])
    finally:
        os.close(fd)
        buf.close()


def roundtrip(ctrl, arena, offset, size, seed):
    """Write a seeded pattern at byte ``offset`` of namespace 1 and read it back."""
    steps = {}
    src, dst = arena.alloc(size), arena.alloc(size)
    expected = pattern(seed, offset // BLOCK, size // BLOCK)
    src.view[:size] = expected
    dst.view[:size] = b"\xa5" * size
    lba = offset // ctrl.lba_size
    for name, call, chunk in (("write", ctrl.write, src), ("read", ctrl.read, dst)):
        start = time.monotonic()
        try:
            call(lba, chunk.iova, size)
            steps[name] = step(True, time.monotonic() - start, size)
        except (NvmeError, NvmeTimeout) as exc:
            steps[name] = step(False, time.monotonic() - start, 0, error=str(exc))
            return steps, expected
    start = time.monotonic()
    steps["verify"] = verify_step(dst.view[:size], expected, start)
    return steps, expected


def vfio_nvme(args):
    if args.size <= 0 or args.size % BLOCK or args.size > MAX_SIZE or args.offset % BLOCK:
        raise UsageError(f"--size must be a multiple of {BLOCK} up to {MAX_SIZE} and --offset "
                         f"a multiple of {BLOCK}")
    bdf = args.bdf
    why = not_nvme(bdf)
    if why:
        return {"bdf": bdf, "stage": "unsupported", "error": why, "errno": None}
    doc = {"bdf": bdf, "iommu": args.iommu, "size": args.size, "offset": args.offset,
           "seed": args.seed, "kernel_view": kernel_view(bdf)}
    session = Session(args.iommu, [bdf], args.allow_unsafe_interrupts)
    doc["session"] = session.report
    expected = None
    try:
        with session:
            ctrl = Controller(session.device(bdf), session.space,
                              session.arena(2 * args.size + (1 << 20)))
            try:
                start = time.monotonic()
                ctrl.enable()
                doc["enable_seconds"] = round(time.monotonic() - start, 3)
                doc["cap"] = ctrl.cap
                doc["identify"] = ctrl.ident
                doc["namespace"] = ctrl.ns
                steps, expected = roundtrip(ctrl, ctrl.arena, args.offset, args.size,
                                            args.seed)
                doc["steps"] = steps
                doc["commands"] = ctrl.commands
            finally:
                ctrl.close()
    except Refused as exc:
        doc.update(stage=exc.stage, error=exc.reason, errno=exc.errno)
        return doc
    except (NvmeError, NvmeTimeout) as exc:
        doc.update(stage="controller", error=str(exc), errno=None)
        return doc
    except OSError as exc:
        return gave_up(doc, "vfio", exc)
    steps = doc["steps"]
    doc["mb_per_s"] = {k: mb_per_s(args.size, steps[k]["seconds"]) if steps.get(k, {}).get("ok")
                       else None for k in ("write", "read")}
    doc["data_verified"] = bool(steps.get("verify", {}).get("ok"))
    # the kernel, back in charge, reads what the userspace driver wrote (its namespace
    # scan runs after the controller is live: wait for the block device, bounded)
    deadline = time.monotonic() + 15
    after = kernel_view(bdf)
    while not (after and after.get("block")) and time.monotonic() < deadline:
        time.sleep(0.1)
        after = kernel_view(bdf)
    doc["kernel_view_after"] = after
    if expected is not None and steps.get("write", {}).get("ok") and after and after.get("block"):
        start = time.monotonic()
        try:
            got = _read_direct(after["block"], args.offset, args.size)
            steps["verify_kernel"] = verify_step(got, expected, start)
        except OSError as exc:
            steps["verify_kernel"] = step(False, time.monotonic() - start, 0,
                                          error=error_text(exc))
        doc["data_verified"] = doc["data_verified"] and steps["verify_kernel"]["ok"]
    return doc
