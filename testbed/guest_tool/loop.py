"""p2p-loop: keep P2P copies in flight (for hot-unplug), one JSON line per event.

One mapping of SIZE bytes of the provider's p2pmem; the source region of the client is
seeded with a pattern through host memory; then, until SECONDS pass or MAX_ERRORS
iterations in a row failed: O_DIRECT pread of the source into the mapping (the client
DMA-writes the CMB), pwrite of the mapping one region further (the client DMA-reads it),
and a check of the destination's first and last 4 KiB through a host buffer.  Errors do not
stop it at once, so a vanished provider shows its effect on the following calls; the
mapping is never touched by the CPU after the seed (a zapped mapping would SIGBUS).

Lines (``event``): ``start``, ``iter`` (ok, errno, error, seconds, verified), ``done``.
Started in the background by the host (``setsid ... &``), which reads the log file.
"""

import json
import os
import time

from . import schema
from .dio import allocate_p2pmem, error_text, host_buffer, open_direct
from .pattern import BLOCK, pattern
from .usage import UsageError

SOURCE = 256 << 20  # the client region the loop copies from (the destination follows)


def p2p_loop(args):
    size = args.size
    if size <= 0 or size % BLOCK:
        raise UsageError(f"--size must be a positive multiple of {BLOCK}")
    t0 = time.monotonic()
    with open(args.log, "a", buffering=1) as log:
        def say(event, **fields):
            log.write(json.dumps({schema.EVENT: event, "t": round(time.monotonic() - t0, 3),
                                  **fields}) + "\n")

        buf, err = allocate_p2pmem(args.provider, size)
        if err:
            say(schema.LOOP_DONE, reason="allocate", **err)
            return {"ok": False, **err}
        fd = open_direct(args.client)
        expected = pattern(args.seed, SOURCE // BLOCK, size // BLOCK)
        host = host_buffer(size)
        host[:] = expected
        os.pwritev(fd, [host], SOURCE)
        host.close()
        check = host_buffer(BLOCK)
        say(schema.LOOP_START, provider=args.provider, client=args.client, size=size,
            pid=os.getpid())
        i, in_a_row, reason = 0, 0, "time"
        while time.monotonic() - t0 < args.seconds:
            i += 1
            start = time.monotonic()
            step = "read"
            try:
                os.preadv(fd, [buf], SOURCE)
                step = "write"
                os.pwritev(fd, [buf], SOURCE + size)
                step = "verify"
                good = True
                for k in (0, size // BLOCK - 1):
                    os.preadv(fd, [check], SOURCE + size + k * BLOCK)
                    good &= check[:] == expected[k * BLOCK:(k + 1) * BLOCK]
                say(schema.LOOP_ITER, iter=i, ok=True, verified=good,
                    seconds=round(time.monotonic() - start, 3))
                in_a_row = 0
            except OSError as exc:
                in_a_row += 1
                say(schema.LOOP_ITER, iter=i, ok=False, step=step, errno=exc.errno,
                    error=error_text(exc), seconds=round(time.monotonic() - start, 3))
                if in_a_row >= args.max_errors:
                    reason = "errors"
                    break
                time.sleep(0.2)
        say(schema.LOOP_DONE, reason=reason, iterations=i)
        os.close(fd)
        check.close()
    return {"ok": True, "iterations": i}
