"""hmm-p2p: the on-demand-paging P2P mapping path (hmm_range_fault + hmm_dma_map_pfn),
which no other workload reaches (it needs an RDMA NIC with ODP on real hardware).

The project's module ``kernel-modules/hmm_p2p_test`` is built against the kernel under
test (:func:`testbed.image.buildroot.kernel_build_env`: its build tree, or Debian's
linux-headers for the image kernel; cached), copied into the guest, loaded for this
workload and unloaded after it.  For every (provider, client) pair the guest tool maps
``host | p2pmem x N | host`` and asks the module to mirror it for the client; the result
is judged against the oracle (:func:`testbed.verdicts.hmm.judge_hmm`): a bus-address pair
must give P2PDMA_BUS and the page's PCI bus address, a host-bridge pair P2PDMA and a
physical address or IOVA, a rejected pair a refusal; the host pages, the unmap and the
invalidation by the module's notifier are checked too.  A kernel without HMM_MIRROR,
P2PDMA or the hmm_dma_map API gets one record: ``unsupported (why)``.
"""

from __future__ import annotations

import shlex

from ..errors import TestbedError
from ..image.buildroot import kernel_build_env
from ..kernel.extmod import HMM_P2P_TEST, ModuleUnsupported, build_module
from ..verdicts.cmdline import kernel_view
from ..verdicts.hmm import MAP_TYPE_VERDICT, judge_hmm
from ..verdicts.observe import trouble_verdict
from ..verdicts.predict import predict
from .base import Context, PairWorkload, Record, need_bdf
from .judged import error_record, pair_dmesg, selected_pairs, tool_step

REMOTE_KO = "/tmp/hmm_p2p_test.ko"
P2P_PAGES = 4
LOAD_TIMEOUT = 60.0
NOTE = ("hmm-p2p only maps (no DMA is issued), so the kernel's mapping decision itself is "
        "judged")


def unsupported_record(why: str) -> Record:
    """Not judged: the kernel cannot run the module (KTAP: a SKIP saying why)."""
    return Record(name=HmmP2P.name, detail=f"unsupported ({why})")


class HmmP2P(PairWorkload):
    name = "hmm-p2p"
    judged = True
    insists = True

    def run(self, ctx: Context) -> list[Record]:
        release = ctx.guest.inventory.get("kernel", {}).get("release") or "?"
        try:
            ko = build_module(HMM_P2P_TEST, kernel_build_env(ctx.kernel, release))
        except ModuleUnsupported as exc:
            return [unsupported_record(exc.why)]
        ctx.guest.put(ko, REMOTE_KO)
        module = HMM_P2P_TEST.name
        load = ctx.guest.run(f"rmmod {module} 2>/dev/null; insmod {shlex.quote(REMOTE_KO)}",
                             timeout=LOAD_TIMEOUT)
        if not load.ok:
            return [error_record(Record(name=self.name), f"insmod {module} failed: "
                                 f"{(load.stderr or load.stdout).strip()[-300:]}")]
        records: list[Record] = []
        try:
            for provider, client in selected_pairs(ctx):
                records.append(self.pair(ctx, provider, client))
        finally:
            unload = ctx.guest.run(f"rmmod {module}", timeout=LOAD_TIMEOUT)
            if not unload.ok:
                records.append(error_record(Record(name=self.name), f"rmmod {module} failed: "
                                            f"{(unload.stderr or unload.stdout).strip()[-300:]}"))
        return records

    def pair(self, ctx: Context, provider: str, client: str) -> Record:
        pred = predict(ctx.topology, provider, client, ctx.cpu, ctx.kernel_p2pdma)
        predicted = MAP_TYPE_VERDICT.get(pred.map_type, pred.verdict)
        rec = Record(name=self.name, provider=provider, client=client, predicted=predicted,
                     reason=f"{pred.reason} ({NOTE})" if pred.qemu_limit else pred.reason,
                     predicted_map_type=pred.map_type if pred.map_type in MAP_TYPE_VERDICT
                     else None)
        try:
            pbdf, cbdf = need_bdf(ctx, provider), need_bdf(ctx, client)
        except TestbedError as exc:
            return error_record(rec, str(exc))
        step = tool_step(ctx, ["hmm-p2p", "--provider", pbdf, "--client", cbdf,
                               "--p2p-pages", str(P2P_PAGES)])
        rec.seconds = round(step.result.seconds, 3)
        rec.dmesg = pair_dmesg(step.dmesg, pbdf, cbdf)
        rec.data = step.data or {"stdout": step.result.stdout[-500:],
                                 "stderr": step.result.stderr[-500:]}
        if step.result.timed_out:
            return error_record(rec, "the guest tool timed out")
        trouble = trouble_verdict(step.delta)
        j = judge_hmm(step.data, rec.predicted_map_type, kernel_view(ctx.topology).translating)
        rec.observed, rec.detail = j.verdict, j.detail
        if trouble:
            rec.observed, rec.detail = trouble
        elif not step.result.ok and j.verdict != "error":
            rec.observed = "error"
            rec.detail += f" (tool exit {step.result.exit_status})"
        rec.observed_map_type = j.map_type
        rec.mechanism = {"source": "hmm_p2p_test", "checks": j.checks}
        rec.mechanism_problem = "; ".join(j.problems)
        return rec
