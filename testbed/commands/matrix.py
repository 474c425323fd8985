"""Run workloads on every topology with every kernel and compare the kernels.

    testbed matrix --topology switch-cmb --topology rootports-cmb-zen \\
                   --kernel default --kernel ~/linux-build [--workload p2p-copy] [--out DIR]

The first --kernel is the baseline. Each topology × kernel is an ordinary
`testbed run` (one guest at a time) with its own results directory under --out
(<topology>/<kernel>/). The matrix has one cell per topology × kernel × pair
(predicted, observed, data verified, MB/s) in matrix.json, matrix.md and
matrix.html (rows: topology and pair, columns: kernels, cells coloured by verdict).

A later kernel's cell is a regression when the baseline's was ok and it is not
(rejected, iommu-fault, unsupported, error, missing) or the baseline's data was
verified and it is not. Exit status: 0 no regression, 1 regressions (listed) or a
run that broke, 2 bad input (unknown topology or workload, bad or duplicate
kernel), checked before anything boots.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..run.matrix import prepare_out, run_matrix
from ..run.plan import plan_matrix
from ..run.render import summary, write_matrix
from . import options

HELP = "run workloads on topologies × kernels; report regressions against the first kernel"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", "-t", action="append", default=[], metavar="TOPOLOGY",
                   help="topology file or library name (repeatable)")
    p.add_argument("--kernel", "-k", action="append", default=[], metavar="KERNEL",
                   type=options.kernel,
                   help="'default', a bzImage, a build tree, an INSTALL_MOD_PATH tree or an "
                        "unpacked kernel package (repeatable; the first is the baseline)")
    p.add_argument("--workload", "-w", action="append", default=[], metavar="NAME",
                   help="workload (repeatable); default: all that apply to each topology")
    p.add_argument("--fio-arg", action="append", default=[], metavar="ARG", dest="fio_args",
                   help="for -w fio, repeatable: a fio option (bs=4k) or a job file in the "
                        "guest; replaces the default jobs")
    p.add_argument("--out", type=Path, help="output directory (must not exist or be empty); "
                                            "default runs/<time>-matrix")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"))
    p.add_argument("--size", type=options.transfer_size, default=1 << 20,
                   help="transfer size per pair (default 1M)")
    p.add_argument("--timeout", type=options.seconds, default=120.0,
                   help="seconds per workload command")


def run(args: argparse.Namespace) -> int:
    plan = plan_matrix(args.topology, args.kernel, args.workload, size=args.size,
                       timeout=args.timeout, accel=args.accel, fio_args=args.fio_args)
    out = prepare_out(args.out)
    log.info("%d topolog%s × %d kernel(s): %s (baseline %s); results in %s",
             len(plan.topologies), "y" if len(plan.topologies) == 1 else "ies",
             len(plan.kernels), ", ".join(k.label for k in plan.kernels),
             plan.kernels[0].label, out)
    m = run_matrix(plan, out)
    write_matrix(m, out)
    print(summary(m, out))
    return m.status
