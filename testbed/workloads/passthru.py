"""passthru: NVMe read/write commands through the passthrough ioctl with the data
buffer in p2pmem (the userspace P2PDMA series' second path)."""

from __future__ import annotations

import time

from ..verdicts.observe import observe, pull_dmesg
from ..verdicts.predict import pairs, predict
from ..guest_tool import schema
from .base import Context, PairWorkload, Record, need_bdf


class Passthru(PairWorkload):
    name = "passthru"
    judged = True
    observed = True
    default = True

    def run(self, ctx: Context) -> list[Record]:
        devices = ctx.block_devices()
        records = []
        seen_clients = set()
        for provider, client in ctx.pairs or pairs(ctx.topology):
            # one provider per client keeps the run short
            if client in seen_clients and not ctx.pairs:
                continue
            seen_clients.add(client)
            pred = predict(ctx.topology, provider, client, ctx.cpu, ctx.kernel_p2pdma)
            rec = Record(name=self.name, provider=provider, client=client,
                         predicted=pred.verdict, reason=pred.reason, qemu_limit=pred.qemu_limit)
            dev = devices.get(ctx.topology.nvme(client).serial)
            if dev is None or not dev.get("ctrl"):
                rec.observed, rec.detail = "error", f"{client}: no NVMe device in the guest"
                records.append(rec)
                continue
            ctx.quiet_gap()
            ctx.dmesg_delta()
            data, res = ctx.tool(["passthru", "--provider", need_bdf(ctx, provider),
                                  "--ctrl", f"/dev/{dev['generic']}", "--nsid", "1",
                                  "--size", str(min(ctx.size, 256 << 10)),
                                  "--seed", str(ctx.seed), *ctx.observe_flags()])
            ctx.last_transfer = time.monotonic()
            dmesg = pull_dmesg(ctx.dmesg_delta())
            rec.observed, rec.detail = observe(data, dmesg, res.timed_out, ctx.kernel_p2pdma,
                                               ctx.refused_earlier(provider, client))
            rec.data_verified = bool(data and data.get("data_verified"))
            ctx.judge_mechanism(rec, pred, data)
            rec.seconds, rec.dmesg = round(res.seconds, 3), dmesg
            rec.data = {k: v for k, v in (data or {}).items() if k != schema.MECHANISM}
            records.append(rec)
        return records
