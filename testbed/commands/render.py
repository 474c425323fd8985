"""Print the QEMU command line of a topology: a runnable shell script, or the argv as JSON.

By default the machine the topology describes (CPU, memory, vIOMMU, PCIe tree,
NVMe); --boot adds everything a boot adds (firmware, the guest image's kernel,
initrd and command line, the boot disk overlay, the NIC with SSH forwarding),
from the cached guest image.  The script creates the sparse backing files in
$RUN_DIR (default: a fixed temporary path) before it execs QEMU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from ..qemu.accel import resolve_accel
from ..qemu.cmdline import BootMedia, backing_files, build, machine_argv
from ..qemu.probe import probe
from ..qemu.script import quote, to_script
from ..qemu.validate import load_checked

HELP = "print the QEMU command line of a topology"
PLACEHOLDER = "/tmp/p2pdma-testbed-run"
SSH_PORT = 10022


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="topology file or library name")
    p.add_argument("--json", action="store_true", help="print the argv as a JSON list")
    p.add_argument("--boot", action="store_true",
                   help="the whole boot command line (needs the guest image built)")
    p.add_argument("--run-dir", default=PLACEHOLDER,
                   help="directory for backing files (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    if not args.run_dir.strip() or "\0" in args.run_dir:
        raise UsageError("--run-dir: an empty path")
    run_dir = Path(args.run_dir)
    if not run_dir.is_absolute():
        run_dir = Path.cwd() / run_dir
    topo = load_checked(args.file)
    caps = probe(topo.machine.qemu)
    accel = resolve_accel(topo.machine.accel, caps, allow_probe=False)
    if args.boot:
        from ..guest.boot import (  # only --boot needs these
            default_kernel,
            kernel_cmdline,
        )
        from ..image.build import cached_image  # (a guest's modules: slow to import)
        image = cached_image()
        if image is None:
            raise UsageError("--boot: the guest image is not built yet (testbed image build)")
        kernel = default_kernel(image)
        media = BootMedia(kernel=kernel.kernel, initrd=kernel.initrd,
                          cmdline=tuple(kernel_cmdline(topo, image.cmdline)),
                          disk=run_dir / "boot.qcow2", ssh_port=SSH_PORT)
        argv = build(topo, caps.path, run_dir, accel.name, media=media,
                     console=run_dir / "console.log")
    else:
        argv = machine_argv(topo, caps.path, run_dir, accel.name)
    if args.json:
        print(json.dumps(argv, indent=1))
        return 0
    about = f"topology {topo.name}: {topo.description}".rstrip(": ")
    prelude = [*(f"# {line}" for line in about.splitlines() or [""]),
               f"# accel: {accel.name} ({accel.reason})", 'mkdir -p "$RUN_DIR"']
    for bf in backing_files(topo, run_dir):
        if bf.user_file:
            continue  # the user's own file: the script never creates or truncates it
        q = quote(str(bf.path), str(run_dir))
        prelude.append(f"[ -e {q} ] || truncate -s {bf.size} {q}")
    print(to_script(argv, run_dir=str(run_dir), prelude=prelude), end="")
    return 0
