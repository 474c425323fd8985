"""Check topology files without starting a guest: every problem as FILE:LINE:COL: field: problem.

Each file is parsed, then checked against the machine the testbed builds and the
QEMU binary it names (which is run, with --version and -device help, to probe
it; --no-probe skips that).  Exit status 0 when every file is valid, 2 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import SpecError
from ..qemu.devices import DEVICES
from ..qemu.validate import load_checked
from . import options

HELP = "check topology files (exit 0 valid, 2 invalid)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="topology file or library name")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the checks against the QEMU binary (and do not run it)")
    p.add_argument("--qemu", type=options.qemu, metavar="NAME|PATH", help=options.QEMU_HELP)


def run(args: argparse.Namespace) -> int:
    status = 0
    for f in args.files:
        try:
            topo = load_checked(f, probe_qemu=not args.no_probe, qemu=args.qemu)
        except SpecError as exc:
            print(exc, file=sys.stderr)
            status = 2
            continue
        counts: dict[str, int] = {}
        for e in topo.endpoints():
            label = DEVICES[type(e)].label.split()[0]  # NVMe, igb
            counts[label] = counts.get(label, 0) + 1
        what = ", ".join(f"{n} {label}" for label, n in counts.items()) or "0 NVMe"
        print(f"{f}: ok ({topo.name}: {len(list(topo.nodes()))} devices, {what})")
    return status
