"""Check topology files without starting a guest: every problem as FILE:LINE:COL: field: problem.

Exit status 0 when every file is valid, 2 otherwise.
"""

from __future__ import annotations

import sys

from ..spec import SpecError, load_topology

HELP = "check topology files (exit 0 valid, 2 invalid)"


def add_arguments(p) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="topology file or library name")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the checks against the QEMU binary")


def run(args) -> int:
    status = 0
    for f in args.files:
        try:
            topo = load_topology(f, probe_qemu=not args.no_probe)
        except SpecError as exc:
            print(exc, file=sys.stderr)
            status = 2
            continue
        print(f"{f}: ok ({topo.name}: {len(list(topo.nodes()))} devices, "
              f"{len(topo.nvmes())} NVMe)")
    return status
