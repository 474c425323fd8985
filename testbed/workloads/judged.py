"""What the newer judged workloads share: the pairs they run on, one guest-tool command
with its own dmesg delta, and a record judged from the tool's transfer document.

Every record is judged per pair (the oracle's verdict and reason against what the guest
showed, :func:`testbed.verdicts.observe.observe`), and a kernel oops, ``BUG:``,
``WARNING:``, KASAN or hung-task line in the command's dmesg delta makes it an ``error``
that names the line.  ``inject=("warning",)`` writes such a line into the kernel log while
the command runs: a self-check that the classifier is wired in.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from ..guest.result import CommandResult
from ..verdicts.observe import observe, pull_dmesg
from ..verdicts.predict import pairs, predict
from .base import Context, Record

INJECTED_WARNING = ("WARNING: CPU: 0 PID: 1 at testbed/self-check.c:1 "
                    "testbed_injected_warning+0x0/0x0 (written by the testbed's inject=warning)")


@dataclass
class Step:
    """One guest-tool command: its JSON, its result, and what dmesg said meanwhile."""

    data: dict[str, Any] | None
    result: CommandResult
    dmesg: dict[str, list[str]] = field(default_factory=dict)
    delta: str = ""


def selected_pairs(ctx: Context) -> list[tuple[str, str]]:
    all_pairs = pairs(ctx.topology)
    return [p for p in all_pairs if not ctx.pairs or p in ctx.pairs]


def pair_record(ctx: Context, name: str, provider: str, client: str | None) -> Record:
    """A record with the oracle's prediction for the pair (a pool or unplug record with no
    client is predicted ``ok`` by the caller)."""
    if client is None:
        return Record(name=name, provider=provider)
    pred = predict(ctx.topology, provider, client, ctx.cpu, ctx.kernel_p2pdma)
    return Record(name=name, provider=provider, client=client, predicted=pred.verdict,
                  reason=pred.reason, qemu_limit=pred.qemu_limit)


def client_device(ctx: Context, devices: dict[str, dict], client: str) -> str | None:
    dev = devices.get(ctx.topology.nvme(client).serial)
    return f"/dev/{dev['block']}" if dev else None


def pair_targets(ctx: Context, name: str, records: list[Record]
                 ) -> list[tuple[Record, str, str]]:
    """(record, provider, client block device) of every selected pair; a pair whose client
    has no block device in the guest gets its error record in ``records`` instead."""
    devices = ctx.block_devices()
    out = []
    for provider, client in selected_pairs(ctx):
        rec = pair_record(ctx, name, provider, client)
        dev = client_device(ctx, devices, client)
        if dev is None:
            records.append(error_record(rec, f"{client}: no block device in the guest"))
        else:
            out.append((rec, provider, dev))
    return out


def tool_step(ctx: Context, args: list[str], timeout: float | None = None,
              quiet: bool = True) -> Step:
    """Run the guest tool with a dmesg delta of its own (and the self-check line, if asked);
    ``quiet=False`` skips the wait for the fault printk ratelimit (a call that moves no
    data through an IOMMU, e.g. one expected to say unsupported)."""
    if quiet:
        ctx.quiet_gap()
    ctx.dmesg_delta()  # the delta starts here
    inject_warning(ctx)
    data, res = ctx.tool(args, timeout=timeout)
    ctx.last_transfer = time.monotonic()
    delta = ctx.dmesg_delta()
    return Step(data, res, pull_dmesg(delta), delta)


def inject_warning(ctx: Context) -> None:
    """With ``inject=("warning",)``: a WARNING line into the kernel log, now."""
    if "warning" in ctx.inject:
        ctx.guest.check(f"echo {shlex.quote('<4>' + INJECTED_WARNING)} > /dev/kmsg", timeout=30)


def pair_dmesg(dmesg: dict[str, list[str]], provider_bdf: str | None,
               client_bdf: str | None) -> dict[str, list[str]]:
    """A shared delta seen from one pair: refusals of other pairs are not this pair's."""
    out = dict(dmesg)
    if "rejected" in out:
        mine = [ln for ln in out["rejected"] if (provider_bdf or "?") in ln
                and (client_bdf or "?") in ln]
        if mine:
            out["rejected"] = mine
        else:
            del out["rejected"]
    return out


def judge(ctx: Context, rec: Record, data: dict[str, Any] | None, step: Step,
          dmesg: dict[str, list[str]] | None = None) -> Record:
    """Fill ``rec`` from a transfer document (observe's verdict, data, MB/s, dmesg)."""
    dmesg = step.dmesg if dmesg is None else dmesg
    refused = bool(rec.provider and rec.client and
                   ctx.refused_earlier(rec.provider, rec.client))
    verdict, detail = observe(data, dmesg, step.result.timed_out, ctx.kernel_p2pdma, refused)
    if not step.result.ok and not step.result.timed_out:
        detail += f" (tool exit {step.result.exit_status}: {step.result.stderr.strip()[-300:]})"
    rec.observed, rec.detail = verdict, detail
    rec.data_verified = bool(data and data.get("data_verified"))
    rates = [v for v in ((data or {}).get("mb_per_s") or {}).values()
             if isinstance(v, (int, float)) and v > 0]
    rec.mb_per_s = round(sum(rates) / len(rates), 2) if rates else None
    rec.seconds = round(step.result.seconds, 3)
    rec.dmesg = dmesg
    rec.data = data or {"stdout": step.result.stdout[-500:], "stderr": step.result.stderr[-500:]}
    return rec


def error_record(rec: Record, detail: str) -> Record:
    rec.observed, rec.detail = "error", detail
    if rec.predicted is None:
        rec.predicted = "ok"
    return rec
