"""hot-unplug: remove a provider with QMP ``device_del`` while P2P copies use its CMB, add
it back with ``device_add``, and judge what the kernel made of it.

For every provider in a hot-pluggable slot (see :mod:`testbed.qemu.hotplug`), step by step:

1. a guest process keeps P2P copies in flight (``p2pdma-guest p2p-loop``: reads into and
   writes from a mapping of the provider's p2pmem, checking the data it moved), with the
   pair's client, or the provider's own namespace when the oracle expects the pair refused;
2. once a copy went through, ``device_del`` and the ``DEVICE_DELETED`` event;
3. the kernel must stay healthy: no oops, ``BUG:``, ``WARNING:`` or hung task in dmesg (the
   hung-task detector is set to 10 s meanwhile), and the process must end on its own or
   die on SIGKILL within the timeout (a process stuck in D state is the failure); in-flight
   I/O must complete with the right data or fail with an error, never move wrong data;
5. ``blockdev-add`` + ``device_add``: the controller comes back at the same slot, its
   p2pmem must be published again with the CMB's size, and the guest must see the tree;
6. a fresh verified copy through the re-added provider (``p2pdma-guest copy``).

The record's verdict is the fresh copy's (so the oracle's prediction for the pair holds)
unless a step failed, which makes it ``error`` naming the step.  It needs the QEMU of a
guest this process booted: an attached guest gets an error record saying so.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from typing import Any

from ..errors import HotplugError, TestbedError
from ..guest.protocol import qmp_of
from ..guest.reinventory import reinventory
from ..guest.tool import GUEST_TOOL
from ..guest_tool import schema
from ..qemu.hotplug import Slot, hotplug_slot, replug, unplug
from ..spec.model import Topology
from ..verdicts.observe import observe, pull_dmesg, trouble_verdict
from ..verdicts.predict import predict
from .base import Context, Record, PairWorkload, need_bdf
from .judged import (
    client_device,
    error_record,
    inject_warning,
    pair_record,
    selected_pairs,
)

log = logging.getLogger(__name__)

LOOP_SIZE = 4 << 20
SETTLE = 30.0  # seconds for the in-flight process to end after the removal
REPLUG_WAIT = 30  # seconds for the re-added controller and its p2pmem
HUNG_TASK_SECONDS = 10
LOG = "/tmp/tb-hot-unplug-{}.jsonl"


def targets(ctx: Context) -> list[tuple[str, str]]:
    """(provider, client) per provider: a client the oracle expects to reach it, if any."""
    out: dict[str, str] = {}
    for p, c in selected_pairs(ctx):
        ok = predict(ctx.topology, p, c, ctx.cpu, ctx.kernel_p2pdma).verdict == "ok"
        if p not in out or ok and predict(ctx.topology, p, out[p], ctx.cpu,
                                          ctx.kernel_p2pdma).verdict != "ok":
            out[p] = c
    return list(out.items())


def slot_problems(topo: Topology) -> str | None:
    """None when some provider can be hot-unplugged, else why none can."""
    why = []
    for provider in topo.providers():
        try:
            hotplug_slot(topo, provider.name)
            return None
        except HotplugError as exc:
            why.append(str(exc))
    return "; ".join(why) or "no provider"


class HotUnplug(PairWorkload):
    name = "hot-unplug"
    judged = True
    insists = True
    needs_qmp = True

    @classmethod
    def missing(cls, topo: Topology) -> str | None:
        problems = super().missing(topo)
        if problems is None and (why := slot_problems(topo)) is not None:
            problems = f"no provider in a hot-pluggable slot ({why})"
        return problems

    def run(self, ctx: Context) -> list[Record]:
        records = []
        for provider, client in targets(ctx):
            rec = pair_record(ctx, self.name, provider, client)
            try:
                slot = hotplug_slot(ctx.topology, provider)
            except HotplugError as exc:  # another provider is in a slot (checked up front)
                rec.predicted = rec.reason = None
                rec.detail = f"skipped: {exc}"
                records.append(rec)
                continue
            if qmp_of(ctx.guest) is None:
                records.append(error_record(rec, (
                    "hot-unplug needs the QEMU's QMP monitor, and this attached guest offers "
                    "none (its instance has no second monitor): boot it again, or run "
                    "without --guest")))
                continue
            start = time.monotonic()
            cycle = Cycle(ctx, rec, slot)
            try:
                cycle.run()
            except TestbedError as exc:
                cycle.fail(f"{type(exc).__name__}: {exc}")
            finally:
                cycle.finish()
            rec.seconds = round(time.monotonic() - start, 3)
            records.append(rec)
        return records


class Cycle:
    """One unplug/replug of one provider, recording every step into the record."""

    def __init__(self, ctx: Context, rec: Record, slot: Slot):
        self.ctx, self.rec, self.slot = ctx, rec, slot
        self.provider = rec.provider or ""
        self.bdf = need_bdf(ctx, self.provider)
        self.steps: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.t0 = time.monotonic()
        self.log = LOG.format(self.provider)
        self.hung_task: str | None = None
        self.copy: tuple[str, str] | None = None
        self.dmesg_parts: list[str] = []  # the cycle's kernel log, in the order it was read
        rec.data = {"steps": self.steps, "slot": {"bus": slot.bus, "kind": slot.port_kind}}

    # -- helpers ----------------------------------------------------------------------------
    def note(self, step: str, **fields: Any) -> None:
        self.steps.append({"step": step, "t": round(time.monotonic() - self.t0, 3), **fields})
        log.info("hot-unplug %s: %s after %.1f s", self.provider, step,
                 time.monotonic() - self.t0)

    def fail(self, problem: str) -> None:
        self.problems.append(problem)
        self.note("problem", detail=problem)

    def sh(self, cmd: str, timeout: float = 30.0) -> str:
        return self.ctx.guest.run(cmd, timeout=timeout).stdout

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.sh(f"cat {self.log} 2>/dev/null").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # -- the steps --------------------------------------------------------------------------
    def run(self) -> None:
        ctx, rec = self.ctx, self.rec
        # the copies in flight need a path the kernel allows: the pair's when the oracle
        # expects it to work, else the provider's own namespace (its own CMB)
        through = rec.client if rec.predicted == "ok" else self.provider
        dev = client_device(ctx, ctx.block_devices(), through or "")
        if dev is None:
            raise HotplugError(f"{through}: no block device in the guest", self.provider,
                               "client")
        old = self.sh("cat /proc/sys/kernel/hung_task_timeout_secs 2>/dev/null").strip()
        if old.isdigit():
            self.hung_task = old
            self.sh(f"echo {HUNG_TASK_SECONDS} > /proc/sys/kernel/hung_task_timeout_secs")
        ctx.dmesg_delta()  # the delta of the whole cycle starts here
        inject_warning(ctx)
        loop = shlex.join([GUEST_TOOL, "p2p-loop", "--provider", self.bdf, "--client", dev,
                           "--size", str(LOOP_SIZE), "--seconds", "90", "--log", self.log])
        # the shell notes the loop's exit status (128+N: killed by signal N) in the log
        script = loop + '; echo "{\\"event\\": \\"exit\\", \\"status\\": $?}" >> ' + self.log
        self.sh(f"rm -f {self.log}; setsid sh -c {shlex.quote(script)} </dev/null >/dev/null "
                "2>&1 &")
        events = self.wait_for(lambda ev: any(e.get(schema.EVENT) in ("iter", "done", "exit")
                                              for e in ev), 60)
        start = next((e for e in events if e.get(schema.EVENT) == schema.LOOP_START), {})
        pid = start.get("pid")
        first = next((e for e in events if e.get(schema.EVENT) != schema.LOOP_START), {})
        self.note("transfer", pid=pid, client=through, first=first,
                  in_flight=first.get("ok") is True)
        if not pid:
            raise HotplugError(f"the P2P loop did not start: {events[-3:]}", self.provider,
                               "transfer")
        qmp = qmp_of(ctx.guest)
        assert qmp is not None
        self.note("device_del", **unplug(qmp, self.slot))
        self.after_removal(pid)
        ctx.last_transfer = time.monotonic()  # the loop's DMA ended by now at the latest
        self.note("device_add", **replug(qmp, self.slot, ctx.guest.run_path))
        self.after_replug()

    def wait_for(self, done: Any, seconds: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while True:
            events = self.events()
            if done(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.5)

    def after_removal(self, pid: int) -> None:
        gone = self.sh(f"test -e /sys/bus/pci/devices/{self.bdf} && echo present || echo gone")
        self.note("removed", guest_sees=gone.strip())
        if gone.strip() != "gone":
            self.fail(f"{self.bdf} is still in the guest after DEVICE_DELETED")
        events = self.wait_for(lambda ev: any(e.get(schema.EVENT) == "exit" for e in ev), SETTLE)
        if not any(e.get(schema.EVENT) == "exit" for e in events):
            state = self.sh(f"cat /proc/{pid}/stat 2>/dev/null | sed 's/.*) //' | cut -c1; "
                            f"cat /proc/{pid}/wchan 2>/dev/null").split()
            self.sh(f"kill -9 {pid} 2>/dev/null; sleep 2")
            alive = self.sh(f"test -e /proc/{pid} && echo alive || echo dead").strip()
            self.note("stuck", state=state, after_sigkill=alive)
            if alive == "alive":
                self.fail(f"the process with I/O in flight (pid {pid}, state "
                          f"{' '.join(state)}) survived SIGKILL {SETTLE:.0f} s after the removal")
            elif state[:1] == ["D"]:
                self.fail(f"the process with I/O in flight (pid {pid}) sat in D state "
                          f"({' '.join(state[1:])}) {SETTLE:.0f} s after the removal")
            events = self.events()
        iters = [e for e in events if e.get(schema.EVENT) == schema.LOOP_ITER]
        wrong = [e for e in iters if e.get("ok") and e.get("verified") is False]
        failed = [e for e in iters if not e.get("ok")]
        errnos = sorted({e.get("errno") for e in failed}, key=str)
        exit_line = next((e for e in events if e.get(schema.EVENT) == "exit"), {})
        self.note("in-flight I/O", iterations=len(iters), ok=len(iters) - len(failed),
                  failed=len(failed), errnos=errnos, first_error=failed[0] if failed else None,
                  exit_status=exit_line.get("status"), wrong_data=len(wrong))
        self.rec.data["loop"] = events[-12:]
        if wrong:
            self.fail(f"a copy completed with wrong data after the removal: {wrong[0]}")
        if exit_line and exit_line.get("status") not in (0, None):
            self.fail(f"the process with I/O in flight exited with status "
                      f"{exit_line.get('status')} (128+N: killed by signal N)")

    def after_replug(self) -> None:
        diffs = reinventory(self.ctx.guest, REPLUG_WAIT)
        bdf = self.ctx.guest.names.get(self.provider, "")
        p2p = self.ctx.guest.inventory.get("pci", {}).get(bdf, {}).get("p2pmem") or {}
        self.note("republished", bdf=bdf, p2pmem=p2p, tree_differences=diffs)
        if p2p.get("published") != "1" or diffs:
            self.fail(f"the re-added {self.provider} is not back as it was: p2pmem "
                      f"{p2p or 'absent'}" + (f"; {'; '.join(diffs[:3])}" if diffs else ""))
            return
        self.fresh_copy()

    def fresh_copy(self) -> None:
        ctx, rec = self.ctx, self.rec
        dev = client_device(ctx, ctx.block_devices(), rec.client or "")
        if dev is None:
            self.fail(f"{rec.client}: no block device after the replug")
            return
        # the copy is judged like p2p-copy's, from ITS kernel log: a translating vIOMMU's
        # fault is the expected outcome there (before, an empty log turned it into "data
        # corruption with no IOMMU fault logged"); the fault printk ratelimit must have
        # recovered from the loop's transfers first
        self.dmesg_parts.append(ctx.dmesg_delta())
        ctx.quiet_gap()
        data, res = ctx.tool(["copy", "--provider", need_bdf(ctx, self.provider), "--client",
                              dev, "--size", str(min(ctx.size, 4 << 20)), "--offset",
                              str(512 << 20), "--seed", str(ctx.seed + 7)])
        ctx.last_transfer = time.monotonic()
        own = ctx.dmesg_delta()
        self.dmesg_parts.append(own)
        verdict, detail = observe(data, pull_dmesg(own), res.timed_out, ctx.kernel_p2pdma,
                                  ctx.refused_earlier(self.provider, rec.client or ""))
        rec.data_verified = bool(data and data.get("data_verified"))
        rates = [v for v in ((data or {}).get("mb_per_s") or {}).values() if v]
        rec.mb_per_s = round(sum(rates) / len(rates), 2) if rates else None
        self.note("fresh copy", verdict=verdict, detail=detail, data_verified=rec.data_verified,
                  mb_per_s=rec.mb_per_s)
        self.copy = (verdict, detail)

    def finish(self) -> None:
        ctx, rec = self.ctx, self.rec
        if self.hung_task is not None:
            try:
                self.sh(f"echo {self.hung_task} > /proc/sys/kernel/hung_task_timeout_secs")
            except TestbedError:
                pass
        delta = "\n".join([*self.dmesg_parts, ctx.dmesg_delta()])
        rec.dmesg = pull_dmesg(delta)
        trouble = trouble_verdict(rec.dmesg.get("trouble", []))
        if trouble:
            rec.observed, rec.detail = trouble
        elif self.problems:
            rec.observed, rec.detail = "error", "; ".join(self.problems)
        elif self.copy is None:
            rec.observed, rec.detail = "error", "the cycle did not get to the fresh copy"
        else:
            verdict, detail = self.copy
            rec.observed = verdict
            flight = next((s for s in self.steps if s["step"] == "in-flight I/O"), {})
            dele = next((s for s in self.steps if s["step"] == "device_del"), {})
            rec.detail = (f"kernel healthy through device_del ({dele.get('seconds')} s to "
                          f"DEVICE_DELETED) and device_add on {self.slot.bus} "
                          f"({self.slot.port_kind}); in-flight I/O: {flight.get('ok')} copies "
                          f"completed with the right data, {flight.get('failed')} failed with "
                          f"errno {flight.get('errnos')}; p2pmem published again; fresh copy: "
                          f"{detail}")
