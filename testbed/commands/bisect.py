"""Judge the checked-out kernel tree for `git bisect run`, in one command.

    cd ~/linux && git bisect start BAD GOOD
    git bisect run testbed bisect switch-cmb -w p2p-copy --build-dir ~/kbuild

Each step builds the tree in the build directory (out of tree, configured once:
later steps only rebuild what changed), boots it on the topology, runs the
workloads and compares every judged verdict (and the mechanism, where both sides
observed it) with --baseline (a results.json of a good kernel) or, without one,
with the oracle.  --kernel uses a prebuilt kernel instead of building.

Exit status, as git bisect run reads it:
  0    good: everything as the baseline (or the oracle) says
  1    bad: a verdict or mechanism differs, a pair is missing, the guest broke
  125  skip: the tree does not build, or the kernel does not boot
  128  abort: bad input or a host problem (a 2 would mark the commit bad)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import TestbedError, UsageError
from ..kernel.profile import parse_names, profile_set
from ..kernel.resolve import resolve_kernel
from ..qemu.validate import load_checked
from ..results.baseline import load_baseline
from ..results.summary import summary
from ..spec.model import Topology
from ..run.bisect import ABORT, BisectOptions, bisect_step
from ..run.runner import RunOptions
from ..workloads import WORKLOADS
from . import options

HELP = "one step of `git bisect run`: build, boot, judge (exit 0/1/125)"
USAGE_STATUS = ABORT  # argparse errors too: exit 2 would tell git bisect "bad"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", help="topology file or library name")
    p.add_argument("--source", "-C", type=Path, metavar="KSRC",
                   help="the kernel source tree to build (default: the current directory, "
                        "where git bisect runs)")
    p.add_argument("--build-dir", "-O", type=Path, metavar="DIR",
                   help="build directory, reused by every step (default: the one "
                        "`testbed kernel build KSRC` uses)")
    p.add_argument("--kernel", type=options.kernel, metavar="KERNEL",
                   help="judge this prebuilt kernel (default, profile:NAME[+NAME][@SRC], a bzImage, "
                        "a build tree) "
                        "instead of building")
    p.add_argument("--workload", "-w", action="append", default=[], metavar="NAME",
                   help=f"workload to run, repeatable ({', '.join(WORKLOADS)}); default: all "
                        "that apply")
    p.add_argument("--pair", action="append", default=[], type=options.pair,
                   metavar="PROVIDER:CLIENT", help="run the P2P workloads on this pair only")
    p.add_argument("--baseline", type=Path, metavar="RESULTS_JSON",
                   help="judge against this run's observed verdicts (a results.json of a good "
                        "kernel) instead of the oracle")
    p.add_argument("--out", type=Path, help="results directory of this step (default: "
                   "BUILD_DIR/bisect-runs/<time>-<topology>-<commit>, or runs/ with --kernel)")
    p.add_argument("--jobs", "-j", type=int, metavar="N", help="make -jN (default: nproc)")
    p.add_argument("--profile", action="append", default=[], metavar="NAME",
                   help="build each commit as this profile kernel (repeat or NAME+NAME; base "
                        "is always included) instead of defconfig + the testbed fragment")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"))
    p.add_argument("--timeout", type=options.seconds, default=120.0,
                   help="seconds per workload command")
    p.add_argument("--size", type=options.transfer_size, default=1 << 20,
                   help="transfer size per pair (default 1M)")
    options.add_coverage_arguments(p)


def bisect_options(args: argparse.Namespace, topo: Topology) -> BisectOptions:
    """The options of one bisect step on ``topo`` (whose machine a kernel must boot)."""
    if args.kernel is not None and (args.source is not None or args.build_dir is not None):
        raise UsageError("--kernel judges a prebuilt kernel: it goes without --source and "
                         "--build-dir")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs: at least 1")
    run = RunOptions(workloads=tuple(args.workload), pairs=tuple(args.pair), out=args.out,
                     accel=args.accel, timeout=args.timeout, size=args.size,
                     coverage=options.coverage_request(args))
    baseline = load_baseline(args.baseline) if args.baseline is not None else None
    if args.kernel is not None:
        if args.profile:
            raise UsageError("--profile builds the source: it does not go with --kernel "
                             "(use --kernel profile:NAME[+NAME] for a prebuilt profile kernel)")
        return BisectOptions(kernel=resolve_kernel(args.kernel, topo.profile), run=run,
                             baseline=baseline)
    profiles = tuple(profile_set([n for a in args.profile for n in parse_names(a)]).names) \
        if args.profile else ()
    return BisectOptions(source=(args.source or Path.cwd()).absolute(),
                         build_dir=args.build_dir.absolute() if args.build_dir else None,
                         run=run, baseline=baseline, jobs=args.jobs, profiles=profiles)


def run(args: argparse.Namespace) -> int:
    try:
        topo = load_checked(args.topology)
        step = bisect_step(topo, bisect_options(args, topo))
    except TestbedError as exc:  # not the tree's doing: stop the bisection
        print(f"testbed: {exc}", file=sys.stderr, flush=True)
        print(f"bisect: abort (exit {ABORT}): {exc.kind}; the bisection stops", flush=True)
        return ABORT
    if step.result is not None and step.result.workloads:
        print(summary(step.result, step.out))
    elif step.out is not None:
        print(f"results (console.log, qemu.sh) in {step.out}")
    for line in step.differences:
        print(f"  differs: {line}")
    where = f" {step.commit}" if step.commit else ""
    print(f"bisect:{where} {step.word} (exit {step.status}): {step.reason}", flush=True)
    return step.status
