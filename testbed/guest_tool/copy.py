"""copy: O_DIRECT read into / write from a p2pmem (or host) buffer, verified block by block."""

import os
import time

from . import schema
from .schema import (CORRUPT, P2P_READ, P2P_WRITE, SEED, VERIFY_READ, VERIFY_WRITE, Step,
                     Transfer)
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
    timed_io,
    verify_step,
)
from .pattern import BLOCK, DEVICE_FILL, POISON, corrupted, pattern
from .usage import UsageError


def copy(args):
    size, offset, seed = args.size, args.offset, args.seed
    check_blocks(size, offset)
    nblocks = size // BLOCK
    if args.corrupt_block is not None and not 0 <= args.corrupt_block < nblocks:
        raise UsageError(f"--corrupt-block must be in [0, {nblocks})")
    if args.buffer == "p2pmem" and not args.provider:
        raise UsageError("--provider is required with --buffer p2pmem")
    doc = {"provider": args.provider, "client": args.client, "buffer": args.buffer,
           "size": size, "offset": offset, "seed": seed, "blocks": nblocks,
           "corrupt_block": args.corrupt_block}
    if not os.path.exists(args.client):
        raise UsageError(f"{args.client} does not exist")

    # The buffer first: if p2pmem cannot be had, nothing else is meaningful.
    if args.buffer == "p2pmem":
        buf, err = allocate_p2pmem(args.provider, size)
        if err:
            doc.update(err)
            return doc
        doc["p2pmem"] = p2pmem_state(args.provider)
    else:
        buf = host_buffer(size)

    try:
        fd = open_direct(args.client)
    except OSError as exc:
        return gave_up(doc, schema.STAGE_OPEN, exc)
    try:
        if offset + 2 * size > device_bytes(fd):
            raise UsageError(f"{args.client} is smaller than --offset + 2 * --size")
        doc.update(_copy_steps(fd, buf, args, nblocks))
    finally:
        os.close(fd)
        buf.close()
    return doc


def _copy_steps(fd, buf, args, nblocks) -> Transfer:
    size, offset, seed = args.size, args.offset, args.seed
    first = offset // BLOCK
    expected = pattern(seed, first, nblocks)
    steps: dict[str, Step] = {}

    # a) seed: the pattern into region A and poison into region B, from host memory
    host = host_buffer(2 * size)
    try:
        fill(host, expected)
        memoryview(host)[size:] = bytes([DEVICE_FILL]) * size
        steps[SEED] = timed_io("write", fd, host, offset)
    finally:
        host.close()

    # b) corrupt one block of region A behind our back
    if args.corrupt_block is not None:
        if steps[SEED]["ok"]:
            k = args.corrupt_block
            blk = host_buffer(BLOCK)
            try:
                fill(blk, corrupted(expected[k * BLOCK:(k + 1) * BLOCK]))
                steps[CORRUPT] = timed_io("write", fd, blk, offset + k * BLOCK)
            finally:
                blk.close()
        else:
            steps[CORRUPT] = skipped("seed failed")

    # c) p2p_read: the client writes region A into the buffer; d) verify it
    fill(buf, bytes([POISON]) * size)  # stale data must not pass verification
    if steps[SEED]["ok"]:
        steps[P2P_READ] = timed_io("read", fd, buf, offset)
    else:
        steps[P2P_READ] = skipped("seed failed")
    if steps[P2P_READ]["ok"]:
        start = time.monotonic()
        snapshot = buf[:]  # the buffer, copied into host memory
        steps[VERIFY_READ] = verify_step(snapshot, expected, start)
    else:
        steps[VERIFY_READ] = skipped("p2p_read failed", verify=True)
    if steps[VERIFY_READ]["ok"]:
        buffer_source = P2P_READ
    else:
        # The read direction did not deliver the pattern (an error, or a DMA that went
        # nowhere): observe the write direction anyway, from a buffer the CPU filled.
        fill(buf, expected)
        snapshot = buf[:]
        buffer_source = "host"

    # e) p2p_write: the client reads the buffer into region B; f) verify it
    if steps[SEED]["ok"]:
        steps[P2P_WRITE] = timed_io("write", fd, buf, offset + size)
    else:
        steps[P2P_WRITE] = skipped("seed failed (region B was not cleared)")
    if steps[P2P_WRITE]["ok"]:
        back = host_buffer(size)
        try:
            start = time.monotonic()
            rd = timed_io("read", fd, back, offset + size)
            if rd["ok"]:
                steps[VERIFY_WRITE] = verify_step(back, snapshot, start)
            else:
                step = skipped("read-back failed", verify=True)
                step.update(skipped=False, readback=rd)
                steps[VERIFY_WRITE] = step
        finally:
            back.close()
    else:
        steps[VERIFY_WRITE] = skipped("p2p_write failed", verify=True)

    vr, vw = steps[VERIFY_READ], steps[VERIFY_WRITE]
    return Transfer(
        steps=steps,
        buffer_source=buffer_source,
        data_verified=bool(vr["ok"] and vw["ok"]),
        mismatched_blocks=sorted(set(vr["mismatched_blocks"]) | set(vw["mismatched_blocks"])),
        mb_per_s={
            "read": mb_per_s(steps[P2P_READ]["bytes"], steps[P2P_READ]["seconds"])
            if steps[P2P_READ]["ok"] else None,
            "write": mb_per_s(steps[P2P_WRITE]["bytes"], steps[P2P_WRITE]["seconds"])
            if steps[P2P_WRITE]["ok"] else None,
        },
    )
