"""``testbed run``: boot (or attach), run workloads in order, collect, judge, write.

Data flows one way: topology -> guest -> workloads -> :class:`RunResult` -> files.

    >>> result, out = run_topology(load_topology("switch-cmb"), RunOptions())  # doctest: +SKIP
    >>> result.status                                                          # doctest: +SKIP
    0

Every input is checked (:func:`check_inputs`) before anything is created or started;
the results directory is made only then.  The results are written whatever
happens, and say ``incomplete`` unless the run got to its end.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..coverage.session import (CoveragePlan, CoverageRequest, CoverageSession, judge_patch,
                                plan_coverage)
from ..errors import BootError, TestbedError, UsageError, did_you_mean
from ..guest.boot import BootOptions, boot
from ..guest.instances import check_name, get_ready
from ..guest.protocol import GuestLike
from ..kernel.prepare import PreparedKernel
from ..kernel.resolve import KernelSpec, resolve_kernel
from ..qemu.accel import requested_accel
from ..qemu.probe import Capabilities, cpu_info, probe_for
from ..qemu.share import Share
from ..qemu.script import to_script
from ..results.model import RunResult
from ..results.writer import make_out_dir, write_results
from ..spec.model import Topology
from ..util.files import check_out_dir
from ..util.timing import Phases, process_age
from ..verdicts.observe import boot_trouble_record
from ..verdicts.record import Record
from ..workloads import WORKLOADS, default_workloads, observed
from ..workloads.base import Context, GuestHung, WorkloadOptions
from .checks import check_workloads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions(WorkloadOptions):
    """How to run: the workloads' options (size, seed, timeout, kernel, execs, pairs,
    fio_args, inject, copy_extra: this object is the workloads' Context.options) and the
    run's own."""

    workloads: tuple[str, ...] = ()  # empty: the default set for the topology
    pushes: tuple[tuple[str, str], ...] = ()
    accel: str | None = None
    guest_name: str | None = None
    out: Path | None = None
    keep: bool = False
    shares: tuple[Share, ...] = ()  # host directories mounted in a guest this run boots
    coverage: CoverageRequest | None = None  # --coverage: which kernel code ran

    def boot_options(self, label: str, observe: bool) -> BootOptions:
        """How a run boots its guest (``observe``: set the P2P tracing up with the first
        inventory)."""
        return BootOptions(kernel=self.kernel, accel=self.accel, keep=self.keep, label=label,
                           observe=observe, shares=self.shares)


def plan(topo: Topology, opts: RunOptions) -> list[str]:
    """The workloads to run, checked before anything boots."""
    names = list(opts.workloads) or default_workloads(topo)
    for n in names:
        if n not in WORKLOADS:
            raise UsageError(f"--workload {n!r}: unknown{did_you_mean(n, WORKLOADS)}; "
                             f"known: {', '.join(WORKLOADS)}")
    if opts.execs and "exec" not in names:
        names.append("exec")
    endpoints = {n.name: n for n in topo.endpoints()}
    clients = {n.name for n in topo.clients()}
    for provider, client in opts.pairs:
        for name in (provider, client):
            if name not in endpoints:
                raise UsageError(f"--pair {provider}:{client}: no endpoint named {name!r} in "
                                 f"{topo.name}{did_you_mean(name, endpoints)}")
        if not endpoints[provider].p2p_memory:
            what = "CMB" if endpoints[provider].kind == "nvme" else "P2P memory"
            raise UsageError(f"--pair {provider}:{client}: {provider} has no {what}, so it "
                             "provides no p2pmem")
        if client not in clients:
            raise UsageError(f"--pair {provider}:{client}: {client} is a "
                             f"{endpoints[client].kind}, which the P2P workloads do not use "
                             f"as a client (clients: {', '.join(sorted(clients))})")
    check_workloads(topo, names, opts)
    for local, _ in opts.pushes:
        p = Path(local)
        if p.is_dir():
            raise UsageError(f"--push {local}: is a directory (push files one by one)")
        if not p.is_file():
            raise UsageError(f"--push {local}: no such file")
    return names


def check_inputs(topo: Topology, opts: RunOptions) -> list[str]:
    """Everything that can be checked before anything is created: the workloads, the
    pushed files, the output directory, the guest name, the accelerator."""
    names = plan(topo, opts)
    if opts.out is not None:
        check_out_dir(opts.out)
    if opts.guest_name is not None and opts.shares:
        raise UsageError(f"--share mounts a directory in a guest this run boots; guest "
                         f"{opts.guest_name!r} is already running (testbed boot --share "
                         "shares with a detached guest)")
    if opts.guest_name is not None:
        check_name(opts.guest_name)
        inst = get_ready(opts.guest_name)  # an unknown or stale instance is bad input: exit 2
        qmp = [n for n in names if WORKLOADS[n].needs_qmp]
        if qmp and not inst.monitor:  # refused up front: never run, then judged a mismatch
            raise UsageError(f"--workload {qmp[0]}: needs the QMP monitor of the guest's QEMU, "
                             f"and detached guest {opts.guest_name!r} offers none to later "
                             f"commands (booted by an older testbed: testbed stop "
                             f"{opts.guest_name}, then boot it again); or run without --guest "
                             "to boot a guest for it")
    requested_accel(opts.accel or topo.machine.accel)
    return names


def coverage_kernel(opts: RunOptions, topo: Topology) -> KernelSpec | None:
    """The kernel whose source a run's coverage maps onto: --kernel, or the one a detached
    guest of ``topo`` booted (--guest; resolved for the topology's machine: a
    ``profile:`` kernel names a build per architecture); both given, they must agree."""
    if opts.guest_name is None:
        return opts.kernel
    inst = get_ready(opts.guest_name)
    booted = resolve_kernel(inst.kernel_spec, topo.profile) if inst.kernel_spec else None
    if opts.kernel is not None and (booted is None or
                                    booted.identity() != opts.kernel.identity()):
        raise UsageError(f"--kernel {opts.kernel.spec}: guest {opts.guest_name!r} runs "
                         f"{inst.kernel_spec or 'the image kernel'} (with --guest, --kernel "
                         "only names the guest's kernel for --coverage)")
    return booted


def run_workloads(guest: GuestLike, topo: Topology, names: list[str], opts: WorkloadOptions,
                  phases: Phases | None = None, coverage: CoverageSession | None = None,
                  caps: Capabilities | None = None) -> tuple[list[Record], Context]:
    """Run ``names`` in order on ``guest``; ``caps``: the run's probe of its QEMU (asked now
    when not given), for the CPU model's vendor and family."""
    caps = caps or probe_for(topo)
    ctx = Context(guest=guest, topology=topo, options=opts, coverage=coverage,
                  cpu=cpu_info(caps, topo.machine.cpu, topo.profile.cpu))
    records: list[Record] = []
    try:  # deltas start now; what the kernel logged before is judged on its own
        trouble = boot_trouble_record(guest.dmesg_delta())
    except TestbedError:
        trouble = None
    if trouble is not None:
        records.append(trouble)
    phases = phases or Phases()
    if observed(names):
        with phases.phase("trace setup"):
            ctx.start_observing()  # before the first P2P I/O: the kernel decides once per pair
    for i, name in enumerate(names):
        log.info("workload %s", name)
        start = time.monotonic()
        workload = WORKLOADS[name]()
        ctx.workload = name
        try:
            new = workload.run(ctx)
        except GuestHung as exc:  # the guest is wedged: nothing more can run on it
            log.error("%s", exc)
            ctx.hung = exc
            records += exc.records + [not_run(n, exc) for n in names[i + 1:]]
            break
        except TestbedError as exc:
            new = [Record(name=name, observed="error" if workload.judged else None,
                          predicted="ok" if workload.judged else None,
                          detail=f"workload failed: {exc}")]
        for rec in new:
            rec.seconds = rec.seconds or round(time.monotonic() - start, 3)
        ctx.dmesg_log.append(f"----- end of {name} -----")
        phases.add(f"workload: {name}", time.monotonic() - start)
        if coverage is not None:
            with phases.phase("coverage read"):
                coverage.checkpoint(name)
        records += new
    return records, ctx


def not_run(name: str, hung: GuestHung) -> Record:
    """The record of a planned workload the run did not get to: the guest hung before."""
    judged = WORKLOADS[name].judged
    return Record(name=name, observed="error" if judged else None,
                  predicted="ok" if judged else None, detail=f"not run: {hung}")


_FIRST_RUN = [True]


def run_topology(topo: Topology, opts: RunOptions) -> tuple[RunResult, Path]:
    """Boot (or attach), run the workloads, collect, shut down, write the results."""
    phases = Phases()
    if _FIRST_RUN[0]:  # the interpreter, imports and validation before this first run
        _FIRST_RUN[0] = False
        phases.add("startup", process_age())
    with phases.phase("checks"):
        names = check_inputs(topo, opts)
        caps = probe_for(topo)
        cov_plan: CoveragePlan | None = None
        if opts.coverage is not None:
            cov_plan = plan_coverage(opts.coverage, coverage_kernel(opts, topo))
        out = make_out_dir(opts.out, topo.name)
    result = RunResult(topology=topo.name, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    result.qemu = {"version": caps.version_str, "binary": caps.path, "name": caps.runner.name,
                   **({"root": caps.runner.root} if caps.runner.root else {})}
    start = time.monotonic()
    guest: GuestLike | None = None
    ctx: Context | None = None
    coverage: CoverageSession | None = None
    console: Path | None = None
    failed_argv: list[str] | None = None
    try:
        with phases.phase("boot"):
            if opts.guest_name:
                from ..guest.attach import attach  # paramiko: imported while QEMU starts
                guest = attach(get_ready(opts.guest_name), topo)
            else:
                guest = boot(topo, options=opts.boot_options(topo.name, observed(names)),
                             caps=caps)
        for name, seconds in guest.phases.to_json().items():
            phases.add(f"boot: {name}", seconds)
        console = guest.console.path
        result.boot_seconds = guest.boot_seconds
        result.qemu.update(accel=guest.accel.name, accel_reason=guest.accel.reason)
        kinfo = guest.inventory.get("kernel", {})
        result.kernel = {"release": kinfo.get("release"), "p2pdma": kinfo.get("p2pdma"),
                         "source": guest.kernel_description}
        prepared = getattr(guest, "kernel", None)  # a guest this process booted
        if isinstance(prepared, PreparedKernel) and prepared.profiles:
            result.kernel.update(profiles="+".join(prepared.profiles),
                                 config_sha256=prepared.config_sha256,
                                 build_tree=str(prepared.build_tree))
        with phases.phase("push"):
            for local, remote in opts.pushes:
                guest.put(local, remote)
        if cov_plan is not None:
            coverage = CoverageSession(guest, cov_plan)
            with phases.phase("coverage setup"):
                coverage.start()
        result.workloads, ctx = run_workloads(guest, topo, names, opts, phases, coverage,
                                              caps)
        if ctx.tracing:
            result.kernel["tracing"] = ctx.tracing
        if ctx.hung is not None:  # not finished: the guest is shut down at once below
            result.error, result.error_kind = str(ctx.hung), ctx.hung.kind
        else:
            result.finished = True
    except TestbedError as exc:
        result.error = str(exc)
        result.error_kind = exc.kind
        if isinstance(exc, BootError):  # a failed boot keeps its console and QEMU logs
            if exc.logs is not None:
                result.logs = str(exc.logs)
            if exc.console_log is not None:
                console = exc.console_log
            failed_argv = exc.argv
    except Exception as exc:  # a defect of the testbed: recorded like any broken run
        trace = out / "traceback.txt"
        trace.write_text(traceback.format_exc())
        result.error = (f"internal error ({type(exc).__name__}: {exc}); please report it "
                        f"with {trace}")
        result.error_kind = "internal"
        log.error("%s", result.error)
    finally:
        collect = time.monotonic()
        dmesg = ""
        hung = ctx is not None and ctx.hung is not None
        if guest is not None:
            try:
                dmesg = guest.run(["dmesg"], timeout=30).stdout
            except TestbedError:
                dmesg = "(the guest did not answer)"
        if coverage is not None and not hung:  # (a wedged guest answers nothing)
            with phases.phase("coverage read"):
                result.coverage = coverage.finish(result.kernel.get("release"))
                result.patch_coverage = judge_patch(coverage.plan, result.coverage)
        console_copy = None
        if console is not None and console.exists():
            console_copy = out / "console.log"
            console_copy.write_bytes(console.read_bytes())
        script = guest.script() if guest is not None else None
        if script is None and failed_argv:
            script = to_script(failed_argv)
        phases.add("collect", time.monotonic() - collect)
        try:
            if guest is not None:
                with phases.phase("shutdown"):
                    guest.shutdown(graceful=not hung)  # a wedged guest cannot power off
        finally:
            result.seconds = time.monotonic() - start
            result.phases = phases.to_json()
            with phases.phase("write results"):
                write_results(out, result, topology=topo, topology_file=topo.source,
                              qemu_script=script,
                              console=console_copy, dmesg=dmesg,
                              dmesg_deltas=[(f"delta {i}", d) for i, d in
                                            enumerate(ctx.dmesg_log if ctx else [])])
    return result, out
