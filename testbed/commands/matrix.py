"""Run workloads on every topology with every kernel and compare the kernels.

    testbed matrix [run] -t switch-cmb -t rootports-cmb-zen -k default -k ~/linux-build \
                   [-q host -q 11.1] [-w p2p-copy] [--out DIR] [--shard K/N] [--jobs N]
    testbed matrix plan -t ... -k ... [-w ...] --json [--shards N]
    testbed matrix merge SHARD_DIR... --out DIR

The first --kernel is the baseline. Each topology × kernel is a boot: an ordinary
`testbed run` with its own results directory under --out (<topology>/<kernel>/). The
matrix has one cell per topology × kernel × pair in matrix.json, matrix.md and
matrix.html. A later kernel's cell is a regression when the baseline's was ok and it is
not, or the baseline's data was verified and it is not; the same verdict reached by
another map type is a mechanism regression.

With --qemu (-q, repeatable: host, an installed QEMU's name or version, a path; see
`testbed qemu`) every topology runs on every QEMU as well: a column per kernel × QEMU,
the first QEMU the baseline of that axis.  With the same kernel, a later QEMU's cell is a
QEMU regression when its verdict is worse, its map type differs, its MB/s fell by more
than --mbps-tolerance (default 50 %), or its run broke where the baseline's did not.

`plan` prints the boots and cells (and, with --shards N, how they fall into N shards)
as JSON for a CI engine's matrix; `--shard K/N` runs only shard K (whole boots,
balanced by expected cost, the same on every runner); `merge` joins the shards of one
plan into one matrix.  --jobs runs several boots at a time on one machine.

Exit status: 0 no regression, 1 regressions (listed) or a run that broke, 2 bad input
(unknown topology or workload, bad or duplicate kernel, shards of different plans, a
missing or repeated shard), checked before anything boots.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import UsageError
from ..run.matrix import default_jobs, prepare_out, run_matrix
from ..run.merge import merge
from ..run.plan import plan_matrix
from ..run.coverage import KernelCoverage, patch_failure
from ..run.render import summary, write_matrix
from ..run.shard import parse_shard, plan_json
from . import options

HELP = "run workloads on topologies × kernels (× QEMUs); report regressions against the first"
SHORT_QUIET = False  # -q is --qemu here (beside -k); --quiet stays
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("run", "plan", "merge"), default="run",
                   help="run the matrix (default), print its plan, or merge shards")
    p.add_argument("dirs", nargs="*", type=Path, metavar="SHARD_DIR",
                   help="with merge: the shards' output directories")
    p.add_argument("--topology", "-t", action="append", default=[], metavar="TOPOLOGY",
                   help="topology file or library name (repeatable)")
    p.add_argument("--kernel", "-k", action="append", default=[], metavar="KERNEL",
                   type=options.kernel,
                   help="'default', profile:NAME[+NAME][@SRC], a bzImage, a build tree, an "
                        "INSTALL_MOD_PATH tree or an "
                        "unpacked kernel package (repeatable; the first is the baseline)")
    p.add_argument("--qemu", "-q", action="append", default=[], metavar="QEMU",
                   type=options.qemu,
                   help="host, an installed QEMU's name or version (11.1), or a path "
                        "(repeatable; the first is the QEMU baseline)")
    p.add_argument("--mbps-tolerance", type=options.percent, default=50.0, metavar="PCT",
                   help="with several QEMUs: a drop in MB/s larger than this is a QEMU "
                        "regression (default %(default).0f)")
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
    p.add_argument("--shard", metavar="K/N", help="run only shard K of N (whole boots)")
    p.add_argument("--jobs", "-j", type=options.positive_int, metavar="N",
                   help="boots at a time (default: what the cores and memory hold)")
    p.add_argument("--json", action="store_true", help="with plan: print JSON")
    p.add_argument("--shards", type=options.positive_int, metavar="N",
                   help="with plan: also show how the boots fall into N shards")
    options.add_coverage_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.action == "merge":
        if args.topology or args.kernel or args.workload or args.shard or args.coverage \
                or args.qemu:
            raise UsageError("matrix merge takes shard directories and --out only")
        if args.out is None:
            raise UsageError("matrix merge: --out DIR is required")
        out = prepare_out(args.out)
        m = merge(args.dirs, out)
        print(summary(m, out))
        return _with_coverage(m.status, write_matrix(m, out))
    if args.dirs:
        raise UsageError(f"unexpected argument {str(args.dirs[0])!r} (shard directories go "
                         "with `matrix merge`)")
    shard = parse_shard(args.shard) if args.shard else None
    plan = plan_matrix(args.topology, args.kernel, args.workload, size=args.size,
                       timeout=args.timeout, accel=args.accel, fio_args=args.fio_args,
                       coverage=options.coverage_request(args),
                       qemus=args.qemu, mbps_tolerance=args.mbps_tolerance / 100)
    if args.action == "plan":
        doc = plan_json(plan, args.shards)
        if args.json:
            print(json.dumps(doc, indent=1))
        else:
            for b in doc["boots"]:
                print(f"{b['id']}: {', '.join(b['workloads'])} (~{b['cost']:.0f} s)")
            for s in doc.get("shards", []):
                print(f"shard {s['shard']}: {', '.join(s['boots'])} (~{s['cost']:.0f} s)")
        return 0
    out = prepare_out(args.out)
    jobs = args.jobs or default_jobs(plan)
    qemus = (f" × {len(plan.qemus)} QEMU(s): " + ", ".join(
        f"{q.label} ({q.version})" for q in plan.qemus)) if plan.qemus else ""
    log.info("%d topolog%s × %d kernel(s): %s (baseline %s)%s%s; %d boot(s) at a time; "
             "results in %s", len(plan.topologies), "y" if len(plan.topologies) == 1 else "ies",
             len(plan.kernels), ", ".join(k.label for k in plan.kernels),
             plan.kernels[0].label, qemus, f"; shard {shard[0]}/{shard[1]}" if shard else "",
             jobs, out)
    m = run_matrix(plan, out, shard=shard, jobs=jobs)
    covs = write_matrix(m, out)
    print(summary(m, out))
    return _with_coverage(m.status, covs)


def _with_coverage(status: int, covs: list[KernelCoverage]) -> int:
    """Print each kernel's summed coverage (and patch coverage); 1 when a kernel that
    carries the patch falls short of --min-patch-coverage."""
    for k in covs:
        t = k.total.totals()["functions"]
        print(f"coverage {k.label}: {t['executed']} of {t['traceable']} traceable functions "
              f"executed in {len(k.total.files)} file(s)")
        if k.patch is not None:
            print(f"patch coverage {k.label}: {k.patch.summary()}")
    why = patch_failure(covs)
    if why:
        print(f"FAIL: {why}")
        return 1
    return status
