"""The data pattern: every 4 KiB block stamped with (magic, seed, block number) and
filled from random.Random(seed, block), so misplaced or stale blocks are told apart."""

import hashlib
import random
import struct

BLOCK = 4096  # verification granularity; every size and offset is a multiple of it
MAX_SIZE = 32 << 20  # keeps the guest's memory use small (a few copies of the buffer)
STAMP = struct.Struct("<8sQQQ")  # magic, seed, block number (absolute, in 4 KiB), zero
MAGIC = b"P2PDMATB"
POISON = 0xA5  # fills a buffer before it is expected to receive data
DEVICE_FILL = 0x5A  # fills a device region before it is expected to receive data
MAX_DETAILS = 8


def pattern_block(seed, block):
    """The expected content of 4 KiB block number ``block`` for ``seed``.

    Stamped with the seed and the block number, so a block that lands in the wrong
    place (or comes from another run) is told apart from a correct one."""
    body = random.Random(f"p2pdma-guest:{seed}:{block}").randbytes(BLOCK - STAMP.size)
    return STAMP.pack(MAGIC, seed, block, 0) + body


def pattern(seed, first_block, nblocks):
    return b"".join(pattern_block(seed, first_block + i) for i in range(nblocks))


def corrupted(block_bytes):
    """Different bytes in every position (used by --corrupt-block)."""
    return bytes(b ^ 0xFF for b in block_bytes)


def block_digest(data):
    return hashlib.blake2b(data, digest_size=16).digest()


def describe_block(data):
    """What a (mismatched) block looks like, for the report."""
    data = bytes(data)
    if len(data) >= STAMP.size:
        magic, seed, block, _ = STAMP.unpack_from(data)
        if magic == MAGIC:
            return {"kind": "stamped", "seed": seed, "block": block}
        if corrupted(data[:8]) == MAGIC:
            return {"kind": "inverted", "block": STAMP.unpack(corrupted(data[:STAMP.size]))[2]}
    if data == bytes(len(data)):
        return {"kind": "zero"}
    if data == bytes([POISON]) * len(data):
        return {"kind": "poison"}  # a buffer the DMA never wrote
    if data == bytes([DEVICE_FILL]) * len(data):
        return {"kind": "device_fill"}  # a device region the write never reached
    if data == b"\xff" * len(data):
        return {"kind": "ones"}
    return {"kind": "unknown", "head": data[:16].hex()}


def compare_blocks(actual, expected):
    """Indexes of the 4 KiB blocks whose checksums differ, and a few details."""
    actual, expected = memoryview(actual), memoryview(expected)
    if len(actual) != len(expected) or len(actual) % BLOCK:
        raise ValueError("compare_blocks needs two equal multiples of the block size")
    bad: list = []
    details: list = []
    for i in range(len(actual) // BLOCK):
        a = actual[i * BLOCK:(i + 1) * BLOCK]
        e = expected[i * BLOCK:(i + 1) * BLOCK]
        if block_digest(a) != block_digest(e):
            bad.append(i)
            if len(details) < MAX_DETAILS:
                details.append({"block": i, "found": describe_block(a),
                                "expected": describe_block(e)})
    return bad, details


def pattern_range(seed, start, length):
    """Bytes [start, start+length) of the seed's device-wide stream: the stamped 4 KiB
    blocks laid end to end, so any byte range (sub-block segments included) has one
    expected content and a misplaced piece still names its seed and block."""
    if length <= 0:
        return b""
    first, last = start // BLOCK, (start + length - 1) // BLOCK
    data = pattern(seed, first, last - first + 1)
    off = start - first * BLOCK
    return data[off:off + length]


def diff_ranges(actual, expected, base, step=512, limit=MAX_DETAILS):
    """The byte ranges (absolute: ``base`` + index) where ``actual`` differs from
    ``expected``, compared in ``step``-byte pieces and coalesced; at most ``limit``,
    each with what was found there (a stamped block names its seed and block)."""
    actual, expected = memoryview(actual), memoryview(expected)
    if len(actual) != len(expected):
        raise ValueError("diff_ranges needs two equal lengths")
    out: list = []
    i, n = 0, len(expected)
    while i < n and len(out) < limit:
        if actual[i:i + step] == expected[i:i + step]:
            i += step
            continue
        j = i
        while j < n and actual[j:j + step] != expected[j:j + step]:
            j += step
        j = min(j, n)
        found = bytes(actual[i:j])
        # describe the block-aligned piece when there is one, else the raw bytes
        head = base + i
        aligned = (-head) % BLOCK
        piece = found[aligned:aligned + BLOCK] if len(found) >= aligned + BLOCK else found
        out.append({"dev_start": head, "dev_end": base + j, "found": describe_block(piece)})
        i = j
    return out
