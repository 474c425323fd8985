"""vfio-revoke: a dma-buf mapping of the provider's BAR in the client's iommufd IOAS,
revoked when the exporter's memory goes away (see :mod:`testbed.verdicts.vfio`).

Per (provider, client) pair, records ``vfio-revoke-decoding``, ``-reset``, ``-close`` (one
guest call) and ``-unplug`` (a guest call in the background while this process removes
the provider with QMP ``device_del`` and puts it back with ``device_add``).  Each is
judged ``revoked`` (the client's DMA faults in the vIOMMU, the CMB is not written, the
command fails or times out, and a new export afterwards works), ``not-revoked`` or
``error``; any WARNING or BUG in the kernel log is an ``error``.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from ..errors import HotplugError, TestbedError
from ..guest.protocol import qmp_of
from ..guest.reinventory import reinventory
from ..guest.tool import GUEST_TOOL
from ..guest_tool import schema
from ..qemu.hotplug import hotplug_slot, replug, unplug
from ..verdicts.observe import pull_dmesg
from ..verdicts.vfio import METHODS, REVOKE, TRIGGERS, VfioKernel, predict_vfio, record_name
from ..verdicts.vfio_observe import GAVE_UP_UNSUPPORTED, observe_revoke, revoke_mechanism
from .base import Context, Record
from .judged import error_record, selected_pairs, tool_step
from .vfio import OFFSET, VfioWorkload, group_view, restore

SIZE = 64 << 10
TIMEOUT = 300.0  # three triggers, each with its fault-log spacing, exports and transfers
CONTROL = "/tmp/tb-vfio-revoke-{}.jsonl"
WAIT = {"ready": 120.0, "attempted": 90.0, "done": 180.0}


class VfioRevoke(VfioWorkload):
    name = "vfio-revoke"
    methods = REVOKE

    def run(self, ctx: Context) -> list[Record]:
        ctx.start_observing()
        kernel = self.probe(ctx)
        out: list[Record] = []
        for provider, client in selected_pairs(ctx):
            out += self.revoke_pair(ctx, kernel, provider, client)
        return out

    def revoke_pair(self, ctx: Context, kernel: VfioKernel, provider: str, client: str
                    ) -> list[Record]:
        groups = group_view(ctx, (provider, client))
        preds = {t: predict_vfio(ctx.topology, provider, client, f"revoke-{t}", kernel, groups)
                 for t in TRIGGERS}
        recs = {t: Record(name=record_name(f"revoke-{t}"), provider=provider, client=client,
                          predicted=p.verdict, reason=p.reason, qemu_limit=p.qemu_limit,
                          predicted_map_type=p.map_type) for t, p in preds.items()}
        pbdf, cbdf = ctx.guest.names.get(provider), ctx.guest.names.get(client)
        if not pbdf or not cbdf or self.probe_problem:
            why = self.probe_problem or f"{provider if not pbdf else client}: not in the guest"
            return [error_record(r, why) for r in recs.values()]
        base = ["--provider", pbdf, "--client", cbdf, "--size", str(SIZE), "--offset",
                str(OFFSET), "--seed", str(ctx.seed)]
        if ctx.observing:
            base.append("--observe")
        if any(p.unsafe_interrupts for p in preds.values()):
            base.append("--allow-unsafe-interrupts")
        # decoding, reset, close: one call
        nothing = all(p.verdict == "unsupported" for p in preds.values())
        step = tool_step(ctx, ["vfio-revoke", *base, "--trigger", "decoding", "--trigger",
                               "reset", "--trigger", "close"], timeout=TIMEOUT,
                         quiet=not nothing)
        doc = step.data or {}
        back = restore(ctx) if step.result.timed_out or not step.data else None
        for t in ("decoding", "reset", "close"):
            tdoc = (doc.get("triggers") or {}).get(t)
            self.judge_revoke(recs[t], t, doc, tdoc, step.dmesg, step.result.timed_out, pbdf)
            recs[t].seconds = round(step.result.seconds, 3)
            if back is not None:
                recs[t].data["safety_net"] = back
        if doc.get("stage") in GAVE_UP_UNSUPPORTED:
            # the guest said why it cannot revoke at all (no IOMMUFD, a client that is not
            # NVMe, no IOMMU group): the unplug trigger needs no call of its own
            self.judge_revoke(recs["unplug"], "unplug", doc, None, step.dmesg,
                              step.result.timed_out, pbdf)
        else:
            self.unplug_pair(ctx, recs["unplug"], provider, base, pbdf)
        return list(recs.values())

    def judge_revoke(self, rec: Record, trigger: str, whole: dict[str, Any],
                     tdoc: dict[str, Any] | None, dmesg: dict[str, list[str]],
                     timed_out: bool, pbdf: str) -> None:
        rec.observed, rec.detail = observe_revoke(trigger, whole, tdoc, dmesg, timed_out)
        rec.dmesg = dmesg
        after = (tdoc or {}).get("after") or {}
        rec.data_verified = bool(after.get("ok")) if tdoc else None
        rec.data = {"trigger": trigger, **{k: v for k, v in (tdoc or {}).items()
                                           if k != schema.MECHANISM},
                    "before": whole.get("before"), "session": whole.get("session")}
        if after:
            rec.data["after"] = {k: v for k, v in after.items() if k != schema.MECHANISM}
        if whole.get("stage"):
            rec.data.update(stage=whole["stage"], error=whole.get("error"))
        if rec.predicted_map_type and tdoc:
            rec.observed_map_type, rec.mechanism, rec.mechanism_problem = \
                revoke_mechanism(tdoc, pbdf)

    def unplug_pair(self, ctx: Context, rec: Record, provider: str, base: list[str],
                    pbdf: str) -> None:
        """The unplug trigger: the guest tool in the background, QMP from here."""
        if rec.predicted == "unsupported":  # the guest tool says why, quickly
            step = tool_step(ctx, ["vfio-revoke", *base, "--trigger", "unplug", "--control",
                                   CONTROL.format(provider)], timeout=120, quiet=False)
            self.judge_revoke(rec, "unplug", step.data or {}, None, step.dmesg,
                              step.result.timed_out, pbdf)
            return
        qmp = qmp_of(ctx.guest)
        try:
            slot = hotplug_slot(ctx.topology, provider)
        except HotplugError as exc:
            error_record(rec, f"{provider} cannot be hot-unplugged: {exc}")
            return
        if qmp is None:
            error_record(rec, "the unplug trigger needs the QMP monitor of a guest this "
                              "process booted (this guest is attached)")
            return
        control = CONTROL.format(provider)
        start = time.monotonic()
        ctx.quiet_gap()
        ctx.dmesg_delta()
        argv = [GUEST_TOOL, "vfio-revoke", *base, "--trigger", "unplug", "--control", control]
        started = ctx.guest.run(f"rm -f {control}; setsid sh -c "
                                f"{shlex.quote(shlex.join(argv))} </dev/null >/dev/null 2>&1 "
                                "& echo $!", timeout=30)
        pid = started.stdout.strip()
        steps: dict[str, Any] = {}
        doc: dict[str, Any] = {}
        try:
            events = self.wait(ctx, control, "ready", WAIT["ready"])
            if "ready" not in events:
                raise TestbedError(f"the guest tool never got ready: {events.get('done')}")
            steps["device_del"] = unplug(qmp, slot)
            events = self.wait(ctx, control, "attempted", WAIT["attempted"])
            steps["device_add"] = replug(qmp, slot, ctx.guest.run_path)
            events = self.wait(ctx, control, "done", WAIT["done"])
            doc = (events.get("done") or {}).get("doc") or {}
        except TestbedError as exc:
            steps["problem"] = str(exc)
        if not doc and pid.isdigit():  # it may still hold the devices: end it first
            steps["stopped"] = self.stop(ctx, int(pid))
        delta = ctx.dmesg_delta()
        ctx.last_transfer = time.monotonic()
        if not doc:
            steps["safety_net"] = restore(ctx)
        steps["tree_differences"] = reinventory(ctx.guest, 30)
        dmesg = pull_dmesg(delta)
        tdoc = (doc.get("triggers") or {}).get("unplug")
        self.judge_revoke(rec, "unplug", doc, tdoc, dmesg, not doc, pbdf)
        rec.data["qmp"] = steps
        if steps.get("problem"):  # what went wrong on this side says more than a timeout
            rec.observed, rec.detail = "error", f"unplug: {steps['problem']}"
        if steps["tree_differences"] and rec.observed != "error":
            rec.observed, rec.detail = "error", (
                "the re-plugged provider is not back as it was: "
                + "; ".join(steps["tree_differences"][:3]))
        rec.seconds = round(time.monotonic() - start, 3)

    @staticmethod
    def stop(ctx: Context, pid: int, seconds: float = 60.0) -> str:
        """End the background guest tool (its process group): SIGTERM lets it close its
        devices and give them back (its finally blocks run), SIGKILL after ``seconds``."""
        script = (f"kill -TERM -- -{pid} 2>/dev/null || {{ echo gone; exit 0; }}; "
                  f"i=0; while kill -0 -- -{pid} 2>/dev/null; do "
                  f"i=$((i+1)); [ $i -gt {int(seconds * 2)} ] && "
                  f"{{ kill -KILL -- -{pid}; echo killed; exit 0; }}; sleep 0.5; done; "
                  "echo terminated")
        res = ctx.guest.run(script, timeout=seconds + 30)
        return res.stdout.strip() or res.describe()[:200]

    @staticmethod
    def wait(ctx: Context, control: str, event: str, seconds: float) -> dict[str, Any]:
        """The control file's events by name once ``event`` (or ``done``) is there."""
        deadline = time.monotonic() + seconds
        while True:
            events: dict[str, Any] = {}
            for line in ctx.guest.run(f"cat {control} 2>/dev/null", timeout=30
                                      ).stdout.splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                events[ev.get("event")] = ev
            if event in events or "done" in events:
                return events
            if time.monotonic() > deadline:
                raise TestbedError(f"the guest tool did not report {event!r} within "
                                   f"{seconds:.0f} s (events: {sorted(events)})")
            time.sleep(0.5)


class VfioP2P(VfioRevoke):
    """The whole family per pair: type1, pfnmap and dmabuf in one hand-over, then the
    revocations."""

    name = "vfio-p2p"
    methods = METHODS

    def run(self, ctx: Context) -> list[Record]:
        ctx.start_observing()
        kernel = self.probe(ctx)
        out: list[Record] = []
        for provider, client in selected_pairs(ctx):
            out += self.pair(ctx, kernel, provider, client)
            out += self.revoke_pair(ctx, kernel, provider, client)
        return out
