"""The kernel log from a point on, read from /dev/kmsg (no dmesg process, no ring buffer
parsing): :func:`mark` before a step, :func:`since` after it gives the lines it logged.

    >>> parse_record("3,1234,5678901,-;DMAR: [DMA Write NO_PASID] fault addr 0x2000000000\\n")
    (3, 5.678901, 'DMAR: [DMA Write NO_PASID] fault addr 0x2000000000')
"""

import os
import time

MAX_LINES = 200


def parse_record(raw):
    """(level, seconds, message) of one /dev/kmsg record; continuation lines dropped."""
    head, _, rest = raw.partition(";")
    fields = head.split(",")
    try:
        level, usec = int(fields[0]) & 7, int(fields[2])
    except (IndexError, ValueError):
        return None
    return level, usec / 1e6, rest.split("\n", 1)[0]


class Kmsg:
    """An open /dev/kmsg positioned at the end: what is logged from now on."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def lines(self):
        """The messages logged since the last call (or since opening), as text lines
        ``[seconds] message``, at most :data:`MAX_LINES`."""
        out: list = []
        for _ in range(4 * MAX_LINES):
            if len(out) >= MAX_LINES:
                break
            try:
                raw = os.read(self.fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: records overwritten meanwhile; go on from there
                continue
            rec = parse_record(raw)
            if rec:
                out.append(f"[{rec[1]:12.6f}] {rec[2]}")
        return out

    def lines_until(self, needle, seconds):
        """:meth:`lines`, polled until one contains ``needle`` (case-insensitive) or
        ``seconds`` passed: an IOMMU fault is printed from its interrupt, after the DMA."""
        out = self.lines()
        deadline = time.monotonic() + seconds
        while not any(needle in ln.lower() for ln in out) and time.monotonic() < deadline \
                and len(out) < MAX_LINES:
            time.sleep(0.1)
            out += self.lines()
        return out

    def close(self):
        os.close(self.fd)
