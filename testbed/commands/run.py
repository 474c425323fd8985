"""Boot a topology (or use a detached guest), run P2PDMA workloads, judge and save the results.

Exit status 0 when every judged workload's observed verdict equals the oracle's
prediction (or the topology's explicit expectation), 1 when any differs, 2 on
bad input.  Results go to --out (default runs/<time>-<topology>/): results.json,
junit.xml, report.md, console.log, dmesg.txt, topology.yaml, qemu.sh.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from ..results.summary import summary
from ..runner import RunOptions, run_topology
from ..spec import load_topology
from ..spec.units import parse_size
from ..workloads import WORKLOADS

HELP = "run P2PDMA workloads on a topology and judge them"


def add_arguments(p) -> None:
    p.add_argument("topology", help="topology file or library name")
    p.add_argument("--workload", "-w", action="append", default=[], metavar="NAME",
                   help=f"workload to run, repeatable ({', '.join(WORKLOADS)}); default: all "
                        "that apply")
    p.add_argument("--push", action="append", default=[], metavar="LOCAL:REMOTE",
                   help="copy a file into the guest before the workloads")
    p.add_argument("--exec", action="append", default=[], metavar="CMD", dest="execs",
                   help="run a command in the guest and record it")
    p.add_argument("--out", type=Path, help="results directory (must not exist or be empty)")
    p.add_argument("--guest", metavar="NAME", help="use this detached guest instead of booting")
    p.add_argument("--kernel", help="custom kernel (bzImage, build tree, unpacked package)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"))
    p.add_argument("--size", default="1M", help="transfer size per pair (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per workload command")
    p.add_argument("--keep", action="store_true", help="keep the run directory")


def transfer_size(text: str) -> int:
    """--size as bytes: a multiple of 4K between 4K and 64M (UsageError otherwise)."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--size: {exc}") from None
    if size < 4096 or size % 4096 or size > (64 << 20):
        raise UsageError("--size: a multiple of 4K between 4K and 64M")
    return size


def options_from_args(args) -> RunOptions:
    pushes = []
    for item in args.push:
        local, sep, remote = item.partition(":")
        if not sep or not local or not remote:
            raise UsageError(f"--push {item!r}: expected LOCAL:REMOTE")
        pushes.append((local, remote))
    size = transfer_size(args.size)
    kernel = None
    if args.kernel and args.kernel != "default":
        from ..kernels import resolve_kernel
        kernel = resolve_kernel(args.kernel)
    return RunOptions(workloads=tuple(args.workload), pushes=tuple(pushes),
                      execs=tuple(args.execs), kernel=kernel, accel=args.accel, size=size,
                      timeout=args.timeout, guest_name=args.guest, out=args.out, keep=args.keep)


def run(args) -> int:
    topo = load_topology(args.topology)
    opts = options_from_args(args)

    def progress(msg: str) -> None:
        print(f"testbed: {msg}", file=sys.stderr, flush=True)

    result, out = run_topology(topo, opts, progress)
    print(summary(result, out))
    return result.status
