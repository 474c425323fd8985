"""Start each topology's QEMU paused and compare its real PCI tree with the spec.

Exit status 0 when every topology matches, 1 when any differs, 2 on bad input.
"""

from __future__ import annotations

import argparse

from ..qemu.validate import load_checked
from ..qemu.verify import verify
from . import options

HELP = "compare a live (paused) QEMU's PCI tree with the spec"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="topology file or library name")
    p.add_argument("--qemu", type=options.qemu, metavar="NAME|PATH", help=options.QEMU_HELP)


def run(args: argparse.Namespace) -> int:
    topos = [load_checked(f, qemu=args.qemu) for f in args.files]  # all bad input first, before any QEMU
    status = 0
    for f, topo in zip(args.files, topos):
        diffs = verify(topo)
        if diffs:
            status = 1
            print(f"{f}: MISMATCH")
            for d in diffs:
                print(f"  {d}")
        else:
            print(f"{f}: ok (QEMU matches the spec: {len(list(topo.nodes()))} devices)")
    return status
