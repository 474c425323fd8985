"""pool: each provider's p2pmem pool at its limits: allocate until the pool is exhausted
(the documented ENOMEM at mmap, never an oops), release and check ``available`` returns to
its starting value; MAP_PRIVATE and offset mappings refused; a process holding a mapping
killed with O_DIRECT I/O in flight, and ``available`` back again."""

from __future__ import annotations

from ..guest_tool import schema
from ..verdicts.observe import trouble_verdict
from ..verdicts.predict import predict
from ..spec.model import Topology
from .base import Context, Record, Workload, need_bdf
from .judged import client_device, selected_pairs, tool_step

REASON = ("the p2pmem pool is a genalloc of the CMB: mmap of p2pmem/allocate fails with "
          "ENOMEM once it is exhausted, MAP_PRIVATE and offsets are refused with EINVAL, and "
          "every page returns to the pool when its mapping goes (munmap or the holder's death)")


class Pool(Workload):
    name = "pool"
    judged = True
    insists = True

    @classmethod
    def missing(cls, topo: Topology) -> str | None:
        return None if topo.providers() else "no NVMe with a CMB"

    def run(self, ctx: Context) -> list[Record]:
        devices = ctx.block_devices()
        records = []
        providers = [n.name for n in ctx.topology.providers()]
        if ctx.pairs:
            providers = [p for p in providers if p in {q for q, _ in ctx.pairs}]
        for provider in providers:
            client = self.kill_client(ctx, provider)
            rec = Record(name=self.name, provider=provider, client=client,
                         predicted="unsupported" if ctx.kernel_p2pdma is False else "ok",
                         reason=REASON)
            args = ["pool", "--provider", need_bdf(ctx, provider),
                    "--kill-size", str(min(ctx.size * 4, 4 << 20))]
            dev = client_device(ctx, devices, client) if client else None
            if dev:
                args += ["--client", dev]
            step = tool_step(ctx, args)
            data = step.data or {}
            rec.seconds, rec.dmesg, rec.data = round(step.result.seconds, 3), step.dmesg, data
            rec.observed, rec.detail = self.verdict(ctx, data, step.result.timed_out,
                                                    step.dmesg)
            rec.data_verified = None
            records.append(rec)
        return records

    @staticmethod
    def kill_client(ctx: Context, provider: str) -> str:
        """A client the oracle expects to reach the provider, else the provider's own
        namespace (the kill check needs I/O in flight, not a particular path)."""
        for p, c in selected_pairs(ctx):
            if p == provider and predict(ctx.topology, p, c, ctx.cpu,
                                         ctx.kernel_p2pdma).verdict == "ok":
                return c
        return provider

    @staticmethod
    def verdict(ctx: Context, data: dict, timed_out: bool,
                dmesg: dict[str, list[str]]) -> tuple[str, str]:
        trouble = trouble_verdict(dmesg.get("trouble", []))
        if trouble:
            return trouble
        if ctx.kernel_p2pdma is False:
            return "unsupported", "the guest kernel has no CONFIG_PCI_P2PDMA"
        if timed_out:
            return "error", "the pool check timed out"
        if data.get("stage"):
            return ("unsupported" if data.get("error") == schema.NO_P2PMEM else "error",
                    f"{data.get('stage')}: {data.get('error')}")
        ex, mis, kill = (data.get(k) or {} for k in (schema.EXHAUST, schema.MISUSE,
                                                     schema.KILL))
        problems = []
        fail = ex.get("failure") or {}
        if fail.get("errname") != "ENOMEM":
            problems.append(f"exhaustion ended with {fail.get('errname') or 'no failure'} "
                            f"after {ex.get('mapped')} mappings, not ENOMEM")
        if ex.get("touch_failures"):
            problems.append(f"mappings {ex['touch_failures'][:5]} did not hold what was written")
        if not ex.get("returned"):
            problems.append(f"available {ex.get('available_after')} after munmap, "
                            f"{ex.get('start_available')} before")
        if not mis.get("ok"):
            problems.append(f"misuse not refused as documented: {mis}")
        if kill and not kill.get("ok"):
            problems.append(f"after SIGKILL with I/O in flight: {kill}")
        if problems:
            return "error", "; ".join(problems)
        return "ok", (f"{ex.get('mapped')} x {ex.get('chunk', 0) >> 10} KiB mapped and touched, "
                      f"then ENOMEM; available back to {ex.get('start_available')} after "
                      "munmap" + (f" and {kill.get('seconds_to_return')} s after SIGKILL of "
                                  f"a process in state {kill.get('child_state')} with I/O "
                                  "in flight" if kill else "")
                      + "; MAP_PRIVATE and offsets refused")
