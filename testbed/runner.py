"""``testbed run``: boot (or attach), run workloads in order, collect, judge, write.

Data flows one way: topology -> guest -> workloads -> :class:`RunResult` -> files.

    >>> result = run_topology(load_topology("switch-cmb"), RunOptions())   # doctest: +SKIP
    >>> result.status
    0
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import TestbedError, UsageError
from .qemu.probe import cpu_info, probe
from .results.model import RunResult
from .results.writer import make_out_dir, write_results
from .workloads import WORKLOADS, default_workloads
from .workloads.base import Context, Record


@dataclass(frozen=True)
class RunOptions:
    workloads: tuple[str, ...] = ()  # empty: the default set for the topology
    pushes: tuple[tuple[str, str], ...] = ()
    execs: tuple[str, ...] = ()
    kernel: object | None = None
    accel: str | None = None
    size: int = 1 << 20
    seed: int = 1
    timeout: float = 120.0
    guest_name: str | None = None
    out: Path | None = None
    keep: bool = False
    copy_extra: tuple[str, ...] = field(default=())  # extra args for p2p-copy (tests)


def plan(topo, opts: RunOptions) -> list[str]:
    """The workloads to run, checked before anything boots."""
    names = list(opts.workloads) or default_workloads(topo)
    for n in names:
        if n not in WORKLOADS:
            from .spec.problems import did_you_mean
            raise UsageError(f"--workload {n!r}: unknown{did_you_mean(n, WORKLOADS)}; "
                             f"known: {', '.join(WORKLOADS)}")
    if "pmr" in opts.workloads and not any(n.pmr for n in topo.nvmes()):
        raise UsageError(f"--workload pmr: topology {topo.name} has no NVMe with a PMR")
    if opts.execs and "exec" not in names:
        names.append("exec")
    for local, _ in opts.pushes:
        if not Path(local).is_file():
            raise UsageError(f"--push {local}: no such file")
    return names


def run_workloads(guest, topo, names: list[str], opts: RunOptions,
                  progress: Callable[[str], None] = lambda m: None) -> tuple[list[Record], Context]:
    caps = probe(topo.machine.qemu)
    ctx = Context(guest=guest, topology=topo, cpu=cpu_info(caps, topo.machine.cpu),
                  timeout=opts.timeout, size=opts.size, seed=opts.seed, execs=list(opts.execs))
    records: list[Record] = []
    try:
        guest.dmesg_delta()  # deltas start now, not at boot
    except TestbedError:
        pass
    for name in names:
        progress(f"workload {name}")
        start = time.monotonic()
        try:
            workload = WORKLOADS[name]()
            new = workload.run(ctx, extra=list(opts.copy_extra)) \
                if name == "p2p-copy" and opts.copy_extra else workload.run(ctx)
        except TestbedError as exc:
            new = [Record(name=name, observed="error" if WORKLOADS[name].judged else None,
                          predicted="ok" if WORKLOADS[name].judged else None,
                          detail=f"workload failed: {exc}")]
        for rec in new:
            rec.seconds = rec.seconds or round(time.monotonic() - start, 3)
        ctx.dmesg_log.append(f"----- end of {name} -----")
        records += new
    return records, ctx


def run_topology(topo, opts: RunOptions, progress: Callable[[str], None] = lambda m: None
                 ) -> tuple[RunResult, Path]:
    names = plan(topo, opts)
    out = make_out_dir(opts.out, topo.name)
    result = RunResult(topology=topo.name, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    caps = probe(topo.machine.qemu)
    result.qemu = {"version": caps.version_str, "binary": caps.path}
    start = time.monotonic()
    guest = None
    ctx = None
    console = None
    failed_argv = None
    try:
        if opts.guest_name:
            from .commands.ssh import get_ready
            from .guest.attach import AttachedGuest
            guest = AttachedGuest(get_ready(opts.guest_name), topo)
        else:
            from .guest.boot import BootOptions, boot
            guest = boot(topo, options=BootOptions(kernel=opts.kernel, accel=opts.accel,
                                                   keep=opts.keep, label=topo.name),
                         progress=progress)
        console = guest.console.path
        result.boot_seconds = guest.boot_seconds
        result.qemu.update(accel=guest.accel.name, accel_reason=guest.accel.reason)
        kinfo = guest.inventory.get("kernel", {})
        result.kernel = {"release": kinfo.get("release"), "p2pdma": kinfo.get("p2pdma"),
                         "source": getattr(guest.kernel, "description", None) if guest.kernel
                         else None}
        for local, remote in opts.pushes:
            guest.put(local, remote)
        result.workloads, ctx = run_workloads(guest, topo, names, opts, progress)
    except TestbedError as exc:
        result.error = str(exc)
        logs = getattr(exc, "logs", None)  # a failed boot keeps its console and QEMU logs
        if logs is not None and (Path(logs) / "console.log").exists():
            console = Path(logs) / "console.log"
        failed_argv = getattr(exc, "argv", None)
    finally:
        dmesg = ""
        if guest is not None:
            try:
                dmesg = guest.run(["dmesg"], timeout=30).stdout
            except TestbedError:
                dmesg = "(the guest did not answer)"
        result.seconds = time.monotonic() - start
        console_copy = None
        if console is not None and console.exists():
            console_copy = out / "console.log"
            console_copy.write_bytes(console.read_bytes())
        script = guest.script() if guest is not None and guest.argv else None
        if script is None and failed_argv:
            from .qemu.script import to_script
            script = to_script(failed_argv)
        write_results(out, result, topology_file=topo.source, qemu_script=script,
                      console=console_copy, dmesg=dmesg,
                      dmesg_deltas=[(f"delta {i}", d) for i, d in
                                    enumerate(ctx.dmesg_log if ctx else [])])
        if guest is not None:
            guest.shutdown()
    return result, out
