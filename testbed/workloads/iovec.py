"""mixed-iovec and split: vectored O_DIRECT I/O the block layer must cut up correctly.

mixed-iovec: one pwritev/preadv whose iovec mixes p2pmem and host-memory segments, in
both orders, below and above 256 pages.  Since 6.17 a bio never mixes P2P and host pages;
the kernel must still move every byte of both parts.  A direct iovec of <= 256 pages
(BIO_MAX_VECS) ends its single bio at the first kind change and Linux completes the rest
through the page cache, so those cases report the pages that went that way (expected,
not an error); longer iovecs go direct, one homogeneous bio after another.

split: transfers the client queue must split: one p2pmem segment larger than
``max_hw_sectors_kb``, more p2pmem segments than ``max_segments`` (non-contiguous, so they
cannot merge), and buffers at sub-page offsets of the mapping, at the client's logical
block size.  The limits come from the client's sysfs; the device must see at least as
many requests as they imply.
"""

from __future__ import annotations

import math
from typing import Any

from ..guest_tool import schema
from .base import Context, Record, PairWorkload, need_bdf
from .judged import judge, pair_targets, tool_step

MIXED_CASES = ("p2p:64K,host:64K", "host:64K,p2p:64K", "host:4K,p2p:8K,host:4K,p2p:4K",
               "p2p:1M,host:1M", "host:1M,p2p:1M")
BIO_MAX_VECS = 256
PAGE = 4096


def split_cases(limits: dict[str, Any]) -> list[tuple[str, int]]:
    """(case, the fewest requests per direction the queue limits allow) for a client.

    >>> split_cases({"max_hw_sectors_kb": 512, "max_segments": 129, "logical_block_size": 512})
    ... # doctest: +NORMALIZE_WHITESPACE
    [('p2p:1088K', 3), ('p2p:512x137/gap=512', 2), ('p2p:64K/start=512', 1),
     ('p2p:64K/start=3584', 1), ('p2p:512x16/start=512/gap=512', 1)]
    """
    max_hw = int(limits["max_hw_sectors_kb"]) * 1024
    segs = int(limits["max_segments"])
    lbs = int(limits["logical_block_size"])
    big = 2 * max_hw + 64 * 1024
    many = min(segs + 8, 1024)  # IOV_MAX
    cases = [(f"p2p:{big // 1024}K", math.ceil(big / max_hw)),
             (f"p2p:{lbs}x{many}/gap={lbs}", math.ceil(many / segs)),
             (f"p2p:64K/start={lbs}", 1)]
    if lbs < PAGE:
        cases.append((f"p2p:64K/start={PAGE - lbs}", 1))
    cases.append((f"p2p:{lbs}x16/start={lbs}/gap={lbs}", 1))
    return cases


def route(case: dict[str, Any]) -> str:
    """How a case's bytes went: requests per phase, and for reads the pages left in the page
    cache (a direct write's buffered fallback is written back and invalidated at once, so
    only the read side shows it)."""
    pages = max(1, -(-case["total"] // PAGE))
    w, r = case.get(schema.WRITE) or {}, case.get(schema.READ) or {}
    cached = r.get("cached_pages")
    how = ("direct" if cached == 0 else f"{cached}/{pages} pages via the page cache"
           if cached else "route unknown")
    return (f"{case['case']}: write {w.get('requests')} request(s) in {w.get('calls')} "
            f"call(s); read {r.get('requests')} request(s) in {r.get('calls')} call(s), {how}")


class MixedIovec(PairWorkload):
    name = "mixed-iovec"
    judged = True
    insists = True

    def cases(self, ctx: Context, dev: str) -> list[tuple[str, int]]:
        return [(c, 1) for c in MIXED_CASES]

    def run(self, ctx: Context) -> list[Record]:
        records: list[Record] = []
        for rec, provider, dev in pair_targets(ctx, self.name, records):
            cases = self.cases(ctx, dev)
            args = ["iovec", "--provider", need_bdf(ctx, provider), "--client", dev,
                    "--seed", str(ctx.seed), "--offset", str(128 << 20)]
            for case, _ in cases:
                args += ["--case", case]
            if "corrupt" in ctx.inject:
                args.append("--corrupt-host")
            step = tool_step(ctx, args)
            judge(ctx, rec, step.data, step)
            self.explain(rec, step.data or {}, dict(cases))
            records.append(rec)
        return records

    def explain(self, rec: Record, data: dict[str, Any], expected: dict[str, int]) -> None:
        cases = data.get(schema.CASES, [])
        rec.data["routes"] = [route(c) for c in cases if schema.WRITE in c]
        bad = [m for c in cases for m in c.get(schema.MISMATCHES, [])]
        if rec.observed == "error" and bad and not rec.detail.startswith("the kernel logged"):
            m = bad[0]
            where = f"segment {m['segment']} ({m['kind']})" if "segment" in m else "the device"
            rec.detail = (f"data corruption in the {m['phase']} phase of "
                          f"{next(c['case'] for c in cases if m in c.get(schema.MISMATCHES, []))}"
                          f": bytes {m['dev_start']}-{m['dev_end']} of {where} hold "
                          f"{m['found']} ({len(bad)} bad range(s) in all)")
        elif rec.observed == "ok":
            fallback = [c for c in cases if (c.get(schema.READ) or {}).get("cached_pages")]
            rec.detail = (f"{len(cases)} case(s), both directions: every byte of every "
                          f"segment verified" + (f"; {len(fallback)} case(s) completed part of "
                                                 f"the iovec through the page cache "
                                                 f"(<= {BIO_MAX_VECS} pages: expected)"
                                                 if fallback else ""))


class Split(MixedIovec):
    name = "split"

    def cases(self, ctx: Context, dev: str) -> list[tuple[str, int]]:
        data, _ = ctx.tool(["limits", "--client", dev], timeout=30)
        limits = (data or {}).get(schema.LIMITS) or {}
        if not all(isinstance(limits.get(k), int) for k in
                   ("max_hw_sectors_kb", "max_segments", "logical_block_size")):
            return [("p2p:1088K", 1), ("p2p:64K/start=512", 1)]  # unknown limits: still split
        return split_cases(limits)

    def explain(self, rec: Record, data: dict[str, Any], expected: dict[str, int]) -> None:
        super().explain(rec, data, expected)
        cases = data.get(schema.CASES, [])
        rec.data["requests"] = {c["case"]: {p: (c.get(p) or {}).get("requests")
                                            for p in (schema.WRITE, schema.READ)}
                                for c in cases}
        rec.data["expected_min_requests"] = expected
        if rec.observed != "ok":
            return
        lim = data.get(schema.LIMITS, {})
        for c in cases:
            for p in (schema.WRITE, schema.READ):
                got = (c.get(p) or {}).get("requests")
                want = expected.get(c["case"], 1)
                if isinstance(got, int) and got < want:
                    rec.observed = "error"
                    rec.detail = (f"{c['case']} {p}: the device completed {got} request(s), "
                                  f"fewer than the {want} the queue limits allow "
                                  f"(max_hw_sectors_kb {lim.get('max_hw_sectors_kb')}, "
                                  f"max_segments {lim.get('max_segments')}): a request "
                                  f"beyond the limits reached the device")
                    return
        rec.detail = (f"{len(cases)} case(s) beyond the client's limits (max_hw_sectors_kb "
                      f"{lim.get('max_hw_sectors_kb')}, max_segments {lim.get('max_segments')}, "
                      f"logical block {lim.get('logical_block_size')}) split and verified: "
                      + "; ".join(f"{c['case']} {(c.get(schema.WRITE) or {}).get('requests')}+"
                                  f"{(c.get(schema.READ) or {}).get('requests')} requests"
                                  for c in cases))
