"""inventory: p2pmem providers, NVMe CMB/PMR registers, kernel release and P2PDMA config."""

from __future__ import annotations

import re

from ..guest.protocol import Seen
from .base import Context, Record, Workload


class Inventory(Workload):
    name = "inventory"
    default = True

    def run(self, ctx: Context) -> list[Record]:
        data, res = ctx.tool(["inventory"], timeout=60)
        if data:
            ctx.guest.update(Seen(data, ctx.guest.names))
        inv = ctx.guest.inventory
        providers = {bdf: d["p2pmem"] for bdf, d in inv.get("pci", {}).items() if "p2pmem" in d}
        regs = {}
        for name, ctrl in inv.get("nvme", {}).items():
            r = ctx.guest.run(["nvme", "show-regs", f"/dev/{name}", "-H"], timeout=30)
            regs[ctrl.get("serial") or name] = _cmb_pmr_lines(r.stdout or r.stderr)
        by_bdf = {v: k for k, v in ctx.guest.names.items()}
        return [Record(
            name=self.name, detail=f"{len(providers)} p2pmem provider(s)",
            data={"kernel": inv.get("kernel", {}),
                  "providers": [{"bdf": bdf, "device": by_bdf.get(bdf), **v}
                                for bdf, v in providers.items()],
                  "nvme": inv.get("nvme", {}), "registers": regs},
            seconds=res.seconds)]


def _cmb_pmr_lines(text: str) -> list[str]:
    keep = re.compile(r"^(cmb|pmr)\w*\s*:|Controller Memory Buffer|Persistent Memory Region",
                      re.I)
    return [ln.rstrip() for ln in text.splitlines() if keep.search(ln)][:40]
