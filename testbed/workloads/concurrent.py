"""concurrent: every pair at once, both directions, several threads per pair, each thread
with its own p2pmem buffer, client region and verified pattern.  One guest command runs
them all; each pair is judged from its own threads (nothing lost, nothing crossed: a block
from another thread names its seed and block) and the refusals that name it."""

from __future__ import annotations

from ..guest_tool import schema
from .base import Context, Record, PairWorkload, need_bdf
from .judged import judge, pair_dmesg, pair_targets, tool_step

THREADS = 3
ITERATIONS = 2
MAX_SIZE = 256 << 10
BUDGET = 8 << 20  # bytes per iteration over all threads (fabric-large has 42 pairs)
MAX_THREADS = 48


class Concurrent(PairWorkload):
    name = "concurrent"
    judged = True
    insists = True

    def run(self, ctx: Context) -> list[Record]:
        records: list[Record] = []
        todo = [(rec, need_bdf(ctx, provider), dev)
                for rec, provider, dev in pair_targets(ctx, self.name, records)]
        if not todo:
            return records
        threads = max(2, min(THREADS, MAX_THREADS // len(todo)))
        size = max(16 << 10, min(ctx.size, MAX_SIZE, BUDGET // (len(todo) * threads)))
        size -= size % 4096
        args = ["concurrent", "--threads", str(threads), "--iters", str(ITERATIONS),
                "--size", str(size), "--seed", str(ctx.seed)]
        for _, bdf, dev in todo:
            args += ["--pair", f"{bdf}={dev}"]
        step = tool_step(ctx, args)
        docs = (step.data or {}).get(schema.PAIRS, [])
        pools = (step.data or {}).get(schema.AVAILABLE, {})
        for i, (rec, bdf, _) in enumerate(todo):
            doc = docs[i] if i < len(docs) else None
            client_bdf = ctx.guest.names.get(rec.client or "")
            judge(ctx, rec, doc, step, pair_dmesg(step.dmesg, bdf, client_bdf))
            rec.data["pool"] = {k: v.get(bdf) for k, v in pools.items()}
            rec.seconds = round(float((step.data or {}).get("seconds") or rec.seconds), 3)
            if rec.observed == "ok":
                rec.detail = (f"{len(todo)} pair(s) at once, {threads} threads each, "
                              f"{ITERATIONS} x {size // 1024} KiB both ways per thread: every "
                              "block verified in p2pmem and through host memory")
            elif rec.observed == "error" and doc and doc.get("mismatches") and \
                    not rec.detail.startswith("the kernel"):
                m = doc["mismatches"][0]
                rec.detail = (f"lost or crossed data: iteration {m['iteration']} read back "
                              f"through {m['where']}: blocks {m['blocks'][:6]} hold "
                              f"{m['details'][0]['found'] if m['details'] else '?'}")
            records.append(rec)
        return records

