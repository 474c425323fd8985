"""Print the QEMU command line of a topology: a runnable shell script, or the argv as JSON.

The script creates the sparse backing files in $RUN_DIR (default: a fresh
temporary directory) before it execs QEMU.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..qemu.accel import resolve_accel
from ..qemu.cmdline import backing_files, machine_argv
from ..qemu.probe import probe
from ..qemu.script import quote, to_script
from ..spec import load_topology

HELP = "print the QEMU command line of a topology"
PLACEHOLDER = "/tmp/p2pdma-testbed-run"


def add_arguments(p) -> None:
    p.add_argument("file", metavar="FILE", help="topology file or library name")
    p.add_argument("--json", action="store_true", help="print the argv as a JSON list")
    p.add_argument("--run-dir", default=PLACEHOLDER,
                   help="directory for backing files (default: %(default)s)")


def run(args) -> int:
    topo = load_topology(args.file)
    caps = probe(topo.machine.qemu)
    accel = resolve_accel(topo.machine.accel, caps, allow_probe=False)
    argv = machine_argv(topo, caps.path, Path(args.run_dir), accel.name)
    if args.json:
        print(json.dumps(argv, indent=1))
        return 0
    about = f"topology {topo.name}: {topo.description}".rstrip(": ")
    prelude = [*(f"# {line}" for line in about.splitlines() or [""]),
               f"# accel: {accel.name} ({accel.reason})", 'mkdir -p "$RUN_DIR"']
    for bf in backing_files(topo, Path(args.run_dir)):
        q = quote(str(bf.path), args.run_dir)
        prelude.append(f"[ -e {q} ] || truncate -s {bf.size} {q}")
    print(to_script(argv, run_dir=args.run_dir, prelude=prelude), end="")
    return 0
