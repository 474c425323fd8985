"""p2p-copy and host-baseline: O_DIRECT transfers between an NVMe and a buffer.

p2p-copy: for every provider P (an NVMe with a CMB) and every other NVMe C, the
buffer is mmapped from P's ``p2pmem/allocate``: C DMA-writes into P's CMB (read)
and DMA-reads from it (write).  host-baseline: the same transfers through a
host-memory buffer, for the throughput ratio.  Data is verified for real: a
seeded pattern, every 4 KiB block checksummed through host memory.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..guest.result import CommandResult
from ..guest_tool import schema
from ..verdicts.observe import observe, pull_dmesg
from ..verdicts.predict import pairs, predict
from .base import Context, PairWorkload, Record, need_bdf


def _mb_per_s(result: dict | None) -> float | None:
    rates = (result or {}).get("mb_per_s") or {}
    vals = [v for v in rates.values() if isinstance(v, (int, float)) and v > 0]
    return round(sum(vals) / len(vals), 2) if vals else None


class P2PCopy(PairWorkload):
    name = "p2p-copy"
    judged = True
    observed = True
    default = True
    buffer = "p2pmem"

    def transfer(self, ctx: Context, provider: str, client: str, devices: dict[str, Any],
                 extra: Sequence[str] = ()
                 ) -> tuple[dict[str, Any] | None, CommandResult, dict[str, list[str]]]:
        dev = devices.get(ctx.topology.nvme(client).serial)
        if dev is None:
            raise LookupError(f"{client}: no block device in the guest")
        args = ["copy", "--provider", need_bdf(ctx, provider), "--client", f"/dev/{dev['block']}",
                "--size", str(ctx.size), "--seed", str(ctx.seed), "--buffer", self.buffer, *extra]
        if self.judged:
            args += ctx.observe_flags()
        ctx.quiet_gap()
        ctx.dmesg_delta()  # start the delta here
        data, res = ctx.tool(args)
        ctx.last_transfer = time.monotonic()
        return data, res, pull_dmesg(ctx.dmesg_delta())

    def run(self, ctx: Context) -> list[Record]:
        devices = ctx.block_devices()
        extra = list(ctx.options.copy_extra)  # the tests' extra guest-tool arguments
        records = []
        for provider, client in ctx.pairs or pairs(ctx.topology):
            pred = predict(ctx.topology, provider, client, ctx.cpu, ctx.kernel_p2pdma)
            rec = Record(name=self.name, provider=provider, client=client,
                         predicted=pred.verdict if self.judged else None,
                         reason=pred.reason if self.judged else None,
                         qemu_limit=pred.qemu_limit if self.judged else False)
            try:
                data, res, dmesg = self.transfer(ctx, provider, client, devices, extra)
            except LookupError as exc:
                rec.observed, rec.detail = ("error", str(exc)) if self.judged else (None, str(exc))
                records.append(rec)
                continue
            verdict, detail = observe(data, dmesg, res.timed_out, ctx.kernel_p2pdma,
                                      ctx.refused_earlier(provider, client))
            rec.observed = verdict if self.judged else None
            rec.detail = detail if res.ok or res.timed_out else \
                f"{detail} (tool exit {res.exit_status}: {res.stderr.strip()[-300:]})"
            rec.data_verified = bool(data and data.get("data_verified"))
            rec.mb_per_s = _mb_per_s(data)
            rec.seconds = round(res.seconds, 3)
            rec.dmesg = dmesg
            if self.judged:
                ctx.judge_mechanism(rec, pred, data)
            rec.data = {k: v for k, v in (data or {}).items() if k != schema.MECHANISM}
            records.append(rec)
        return records


class HostBaseline(P2PCopy):
    """The same transfers through host memory: not judged, gives the MB/s baseline."""

    name = "host-baseline"
    judged = False
    observed = False
    buffer = "host"
