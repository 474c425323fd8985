"""Boot a topology (or use a detached guest), run P2PDMA workloads, judge and save the results.

Exit status 0 when every judged workload's observed verdict equals the oracle's
prediction (or the topology's explicit expectation), 1 when any differs or the run
did not finish, 2 on bad input (checked before anything is created or started).
Results go to --out (default runs/<time>-<topology>/): results.json, junit.xml,
results.ktap, report.md, report.html, topology.svg, console.log, dmesg.txt,
topology.yaml, qemu.sh.  --format ktap prints the results in KTAP (as in
results.ktap) on stdout instead of the summary table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..kernel.resolve import resolve_kernel
from ..machines import X86_64, MachineProfile
from ..qemu.validate import load_checked
from ..results.ktap import to_ktap
from ..results.summary import summary
from ..run.runner import RunOptions, run_topology
from ..workloads import WORKLOADS
from . import options

HELP = "run P2PDMA workloads on a topology and judge them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", help="topology file or library name")
    p.add_argument("--workload", "-w", action="append", default=[], metavar="NAME",
                   help=f"workload to run, repeatable ({', '.join(WORKLOADS)}); default: all "
                        "that apply")
    p.add_argument("--fio-arg", action="append", default=[], metavar="ARG", dest="fio_args",
                   help="for -w fio, repeatable: a fio option (bs=4k, or --fio-arg=--bs=4k) or "
                        "a job file in the guest (push it with --push); replaces the default "
                        "jobs")
    p.add_argument("--push", action="append", default=[], metavar="LOCAL:REMOTE",
                   help="copy a file into the guest before the workloads (its mode is kept)")
    p.add_argument("--exec", action="append", default=[], metavar="CMD", dest="execs",
                   help="run a command in the guest and record it")
    p.add_argument("--out", type=Path, help="results directory (must not exist or be empty)")
    p.add_argument("--guest", metavar="NAME", type=options.name,
                   help="use this detached guest instead of booting")
    p.add_argument("--kernel", type=options.kernel,
                   help="custom kernel: profile:NAME[+NAME][@SRC], bzImage, build tree, "
                        "unpacked package")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"))
    p.add_argument("--qemu", type=options.qemu, metavar="NAME|PATH", help=options.QEMU_HELP)
    p.add_argument("--size", type=options.transfer_size, default=1 << 20,
                   help="transfer size per pair (default 1M)")
    p.add_argument("--timeout", type=options.seconds, default=120.0,
                   help="seconds per workload command")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument("--format", choices=("table", "ktap"), default="table",
                   help="what to print at the end: the summary table (default) or the "
                        "results in KTAP, as kselftest and KUnit print them")
    p.add_argument("--pair", action="append", default=[], type=options.pair,
                   metavar="PROVIDER:CLIENT",
                   help="run the P2P workloads on this pair only (repeatable; PROVIDER:PROVIDER "
                        "uses a controller's own CMB for its own I/O)")
    p.add_argument("--share", action="append", default=[], type=options.share,
                   metavar="HOSTDIR[:GUESTDIR][:rw]", help=options.SHARE_HELP)
    options.add_coverage_arguments(p)


def options_from_args(args: argparse.Namespace,
                      profile: MachineProfile = X86_64) -> RunOptions:
    pushes = []
    for item in args.push:
        local, sep, remote = item.partition(":")
        if not sep or not local or not remote:
            raise UsageError(f"--push {item!r}: expected LOCAL:REMOTE")
        pushes.append((local, remote))
    kernel = resolve_kernel(args.kernel, profile) if args.kernel else None
    return RunOptions(workloads=tuple(args.workload), pushes=tuple(pushes),
                      execs=tuple(args.execs), fio_args=tuple(args.fio_args), kernel=kernel, accel=args.accel, size=args.size,
                      timeout=args.timeout, guest_name=args.guest, out=args.out, keep=args.keep,
                      pairs=tuple(args.pair), shares=options.shares(args.share),
                      coverage=options.coverage_request(args))


def run(args: argparse.Namespace) -> int:
    topo = load_checked(args.topology, qemu=args.qemu)
    opts = options_from_args(args, topo.profile)
    result, out = run_topology(topo, opts)
    print(to_ktap(result) if args.format == "ktap" else summary(result, out),
          end="" if args.format == "ktap" else "\n")
    pc = result.patch_coverage
    if pc is not None and args.format != "ktap":
        print(pc.summary())
    if pc is not None and pc.failed:
        print(f"FAIL: {pc.failed}")
        return 1
    return result.status
