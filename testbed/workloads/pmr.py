"""pmr: write a pattern into an NVMe's persistent memory region, restart QEMU with
the same backing file, and read it back."""

from __future__ import annotations

from ..spec.model import Topology
from .base import Context, Record, Workload, need_bdf


class Pmr(Workload):
    name = "pmr"
    judged = True
    default = True
    insists = True

    @classmethod
    def missing(cls, topo: Topology) -> str | None:
        return None if any(n.pmr for n in topo.nvmes()) else "no NVMe with a PMR"

    def run(self, ctx: Context) -> list[Record]:
        records = []
        targets = [n for n in ctx.topology.nvmes() if n.pmr]
        for nvme in targets:
            rec = Record(name=self.name, provider=nvme.name, predicted="ok",
                         reason="the PMR is a file-backed memory region: data written before "
                                "a QEMU restart must read back after it")
            write, res = ctx.tool(["pmr", "--bdf", need_bdf(ctx, nvme.name), "write",
                                   "--seed", str(ctx.seed), "--unbind"])
            rec.data["write"] = write or {"stdout": res.stdout[-500:], "stderr": res.stderr[-500:]}
            if not (write and write.get("data_verified", write.get("ok", False))):
                rec.observed, rec.detail = "error", f"PMR write failed: {res.describe()[:800]}"
                records.append(rec)
                continue
            records.append(rec)
        if not targets:
            return []
        if not ctx.guest.can_restart:
            for rec in records:
                rec.observed = rec.observed or "error"
                rec.detail = rec.detail or "this guest cannot be restarted (attached instance)"
            return records
        seconds = ctx.restart_guest()
        for rec, nvme in zip(records, targets):
            if rec.observed:
                continue
            read, res = ctx.tool(["pmr", "--bdf", need_bdf(ctx, nvme.name), "read",
                                  "--seed", str(ctx.seed), "--unbind"])
            rec.data["read"] = read or {"stdout": res.stdout[-500:], "stderr": res.stderr[-500:]}
            rec.data_verified = bool(read and read.get("data_verified"))
            rec.observed = "ok" if rec.data_verified else "error"
            rec.detail = (f"pattern survived a QEMU restart ({seconds:.1f} s)" if rec.data_verified
                          else f"PMR content lost or wrong after restart: "
                               f"{(read or {}).get('mismatched_blocks', [])[:10]}")
        return records
