"""passthru: NVMe Write / Read through NVME_IOCTL_IO_CMD with the data in p2pmem."""

import ctypes
import fcntl
import os
import re
import struct
import time

from . import schema
from .dio import (
    allocate_p2pmem,
    check_blocks,
    device_bytes,
    fill,
    gave_up,
    host_buffer,
    mb_per_s,
    open_direct,
    p2pmem_state,
    skipped,
    step,
    timed_io,
    verify_step,
)
from .pattern import BLOCK, DEVICE_FILL, POISON, pattern
from .sysfs import read
from .usage import UsageError

# struct nvme_passthru_cmd (include/uapi/linux/nvme_ioctl.h), 72 bytes
PASSTHRU = struct.Struct("<BBHIIIQQIIIIIIIIII")
NVME_CMD_WRITE, NVME_CMD_READ = 0x01, 0x02


def _iowr(type_char, nr, size):
    return (3 << 30) | (size << 16) | (ord(type_char) << 8) | nr


NVME_IOCTL_IO_CMD = _iowr("N", 0x43, PASSTHRU.size)  # 0xC0484E43

NVME_STATUS_NAMES = {
    0x000: "success", 0x001: "invalid opcode", 0x002: "invalid field", 0x004:
    "data transfer error", 0x006: "internal error", 0x007: "abort requested",
    0x00B: "invalid namespace", 0x080: "LBA out of range", 0x081: "capacity exceeded",
    0x280: "write fault", 0x281: "unrecovered read error", 0x371: "host aborted command",
}


def passthru_cmd(opcode, nsid, addr, data_len, slba, nlb, timeout_ms=0):
    """Pack struct nvme_passthru_cmd for a Read/Write of ``nlb`` blocks at ``slba``."""
    if nlb < 1 or nlb > 0x10000:
        raise ValueError("nlb must be in [1, 65536]")
    return bytearray(PASSTHRU.pack(
        opcode, 0, 0, nsid, 0, 0, 0, addr, 0, data_len,
        slba & 0xFFFFFFFF, slba >> 32, nlb - 1, 0, 0, 0, timeout_ms, 0))


def passthru_result(cmd):
    """The completion's dword 0, as the kernel wrote it back."""
    return PASSTHRU.unpack(bytes(cmd))[-1]


def decode_status(status):
    """Linux's positive ioctl return: the NVMe status field (SCT << 8 | SC, + CRD/M/DNR)."""
    sc, sct = status & 0xFF, (status >> 8) & 0x7
    code = status & 0x7FF
    return {"status": status, "hex": f"0x{status:x}", "sct": sct, "sc": sc,
            "dnr": bool(status & 0x4000), "more": bool(status & 0x2000),
            "name": NVME_STATUS_NAMES.get(code)}


def namespace_block(ctrl, nsid):
    """The block device of namespace ``nsid`` reached through char device ``ctrl``."""
    name = os.path.basename(os.path.realpath(ctrl))
    m = re.fullmatch(r"ng(\d+)n(\d+)", name)
    if m:  # generic per-namespace char device: ngXnY <-> nvmeXnY
        return f"nvme{m.group(1)}n{m.group(2)}"
    ctrl_dir = f"/sys/class/nvme/{name}"
    if not os.path.isdir(ctrl_dir):
        return None
    for entry in sorted(os.listdir(ctrl_dir)):
        m = re.fullmatch(r"nvme(\d+)(c\d+)?n(\d+)", entry)
        if not m or int(m.group(3)) != nsid:
            continue
        # nvmeScCnN is the hidden per-path disk of the multipath head nvmeSnN
        return f"nvme{m.group(1)}n{m.group(3)}" if m.group(2) else entry
    return None


def _run_passthru(fd, opcode, nsid, buf_addr, size, lba, slba, chunk, timeout_ms):
    """Issue Read/Write commands covering ``size`` bytes; a step record."""
    start = time.monotonic()
    done = commands = 0
    result = None
    while done < size:
        n = min(chunk, size - done)
        cmd = passthru_cmd(opcode, nsid, buf_addr + done, n, slba + done // lba, n // lba,
                           timeout_ms)
        try:
            ret = fcntl.ioctl(fd, NVME_IOCTL_IO_CMD, cmd, True)
        except OSError as exc:
            return step(False, time.monotonic() - start, done, exc=exc, commands=commands,
                        nvme_status=None, result=result)
        commands += 1
        result = passthru_result(cmd)
        if ret != 0:
            st = decode_status(ret)
            return step(False, time.monotonic() - start, done,
                        error=f"NVMe status {st['hex']}" + (f" ({st['name']})" if st["name"]
                                                            else ""),
                        commands=commands, nvme_status=st, result=result)
        done += n
    return step(True, time.monotonic() - start, done, commands=commands,
                nvme_status=decode_status(0), result=result)


def passthru(args):
    size, seed, nsid = args.size, args.seed, args.nsid
    doc = {"provider": args.provider, "ctrl": args.ctrl, "nsid": nsid, "size": size,
           "offset_lba": args.offset_lba, "seed": seed}
    if not os.path.exists(args.ctrl):
        raise UsageError(f"{args.ctrl} does not exist")
    block = args.block or namespace_block(args.ctrl, nsid)
    if block is None:
        raise UsageError(f"cannot find the block device of namespace {nsid} of {args.ctrl}; "
                         "pass --block")
    block = os.path.basename(block)
    qdir = f"/sys/block/{block}/queue"
    try:
        lba = int(read(f"{qdir}/logical_block_size"))
        max_bytes = int(read(f"{qdir}/max_hw_sectors_kb")) * 1024
    except (TypeError, ValueError):
        raise UsageError(f"no queue limits for {block} in sysfs") from None
    offset = args.offset_lba * lba
    check_blocks(size, offset, "--offset-lba * LBA size")
    if size % lba:
        raise UsageError(f"--size must be a multiple of the LBA size {lba}")
    chunk = max(lba, min(max_bytes, 0x10000 * lba) // BLOCK * BLOCK)
    nblocks = size // BLOCK
    doc.update(block=f"/dev/{block}", lba_size=lba, chunk_bytes=chunk, blocks=nblocks)

    buf, err = allocate_p2pmem(args.provider, size)
    if err:
        doc.update(err)
        return doc
    doc["p2pmem"] = p2pmem_state(args.provider)
    try:
        fd = os.open(args.ctrl, os.O_RDWR)
    except OSError as exc:
        buf.close()
        return gave_up(doc, schema.STAGE_OPEN, exc)
    try:
        bfd = open_direct(f"/dev/{block}")
    except OSError as exc:
        os.close(fd)
        buf.close()
        return gave_up(doc, schema.STAGE_OPEN, exc)
    anchor = ctypes.c_char.from_buffer(buf)
    try:
        if offset + size > device_bytes(bfd):
            raise UsageError(f"/dev/{block} is smaller than the region")
        doc.update(_passthru_steps(fd, bfd, buf, ctypes.addressof(anchor), args, offset, lba,
                                   chunk, nblocks))
    finally:
        del anchor
        os.close(bfd)
        os.close(fd)
        buf.close()
    return doc


def _passthru_steps(fd, bfd, buf, addr, args, offset, lba, chunk, nblocks):
    size, seed, nsid = args.size, args.seed, args.nsid
    expected = pattern(seed, offset // BLOCK, nblocks)
    slba = args.offset_lba
    steps = {}

    # prepare: poison the region through host memory, so stale data cannot pass
    host = host_buffer(size)
    try:
        fill(host, bytes([DEVICE_FILL]) * size)
        steps["prepare"] = timed_io("write", bfd, host, offset)
    finally:
        host.close()

    # write: the pattern, placed in p2pmem by the CPU, to the namespace
    fill(buf, expected)
    steps["write"] = _run_passthru(fd, NVME_CMD_WRITE, nsid, addr, size, lba, slba, chunk,
                                   args.timeout_ms)

    # read: clear the buffer, read the region back into p2pmem
    fill(buf, bytes([POISON]) * size)
    steps["read"] = _run_passthru(fd, NVME_CMD_READ, nsid, addr, size, lba, slba, chunk,
                                  args.timeout_ms)
    if steps["read"]["ok"] and not (steps["write"]["ok"] or steps["prepare"]["ok"]):
        steps["verify"] = skipped("write and prepare failed: region content unknown", True)
    elif steps["read"]["ok"]:
        # After a failed write the namespace should still hold the prepare fill: checking
        # for it keeps the read direction observable on its own.
        want = expected if steps["write"]["ok"] else bytes([DEVICE_FILL]) * size
        start = time.monotonic()
        steps["verify"] = verify_step(buf[:], want, start)
        steps["verify"]["expected"] = "pattern" if steps["write"]["ok"] else "device_fill"
    else:
        steps["verify"] = skipped("read failed", verify=True)

    # verify_device: what the namespace holds, read through host memory (O_DIRECT)
    if not steps["prepare"]["ok"]:
        steps["verify_device"] = skipped("prepare failed", verify=True)
    elif not steps["write"]["ok"]:
        steps["verify_device"] = skipped("write failed", verify=True)
    else:
        host = host_buffer(size)
        try:
            start = time.monotonic()
            rd = timed_io("read", bfd, host, offset)
            if rd["ok"]:
                steps["verify_device"] = verify_step(host, expected, start)
            else:
                steps["verify_device"] = dict(skipped("read-back failed", verify=True),
                                              skipped=False, readback=rd)
        finally:
            host.close()

    v, vd = steps["verify"], steps["verify_device"]
    w, r = steps["write"], steps["read"]
    return {
        "steps": steps,
        "data_verified": bool(v["ok"] and vd["ok"]),
        "mismatched_blocks": sorted(set(v["mismatched_blocks"]) | set(vd["mismatched_blocks"])),
        "nvme_status": {"write": w.get("nvme_status"), "read": r.get("nvme_status")},
        "mb_per_s": {"write": mb_per_s(w["bytes"], w["seconds"]) if w["ok"] else None,
                     "read": mb_per_s(r["bytes"], r["seconds"]) if r["ok"] else None},
    }
