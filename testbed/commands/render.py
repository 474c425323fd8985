"""Print the QEMU command line of a topology (a runnable shell script, or the argv as
JSON), or a drawing of it (--format svg or dot).

By default the machine the topology describes (CPU, memory, vIOMMU, PCIe tree,
NVMe); --boot adds everything a boot adds (firmware, the guest image's kernel,
initrd and command line, the boot disk overlay, the NIC with SSH forwarding),
from the cached guest image.  The script creates the sparse backing files in
$RUN_DIR (default: a fixed temporary path) before it execs QEMU.

--format svg draws the topology with Graphviz's dot (Debian: graphviz): root
complex, vIOMMU, host bridges, ports, switches, NVMe with CMB/PMR sizes, and the
path the oracle predicts for every (provider, client) pair; --format dot prints
the Graphviz source.  -o FILE writes the output to FILE instead of stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from ..qemu.accel import resolve_accel
from ..qemu.cmdline import BootMedia, backing_files, build, machine_argv, run_dir_files
from ..qemu.probe import probe_for
from ..qemu.script import quote, to_script
from ..qemu.probe import cpu_info
from ..qemu.validate import load_checked
from ..results.graphviz import to_svg
from ..results.picture import predicted_records, topology_dot
from ..util.files import atomic_write
from . import options

HELP = "print the QEMU command line of a topology"
PLACEHOLDER = "/tmp/p2pdma-testbed-run"
SSH_PORT = 10022
FORMATS = ("script", "json", "svg", "dot")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="topology file or library name")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="script (default): a shell script; json: the argv; svg: a drawing of "
                        "the topology and its predicted P2P paths; dot: its Graphviz source")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write to FILE instead of stdout")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--boot", action="store_true",
                   help="the whole boot command line (needs the guest image built)")
    p.add_argument("--qemu", type=options.qemu, metavar="NAME|PATH", help=options.QEMU_HELP)
    p.add_argument("--run-dir", default=PLACEHOLDER,
                   help="directory for backing files (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    fmt = args.format or ("json" if args.json else "script")
    if args.json and fmt != "json":
        raise UsageError(f"--json and --format {fmt}: choose one")
    if fmt in ("svg", "dot") and args.boot:
        raise UsageError(f"--boot and --format {fmt}: a drawing has no boot command line")
    if args.output is not None:
        check_output(args.output)
    if fmt in ("svg", "dot"):
        text = drawing(args.file, fmt, args.qemu)
    else:
        text = command_line(args, fmt)
    if args.output is not None:
        try:
            atomic_write(args.output, text, mode=0o644)
        except OSError as exc:
            raise UsageError(f"-o {args.output}: {exc.strerror or exc}") from None
    else:
        print(text, end="")
    return 0


def check_output(path: Path) -> None:
    """-o FILE: a new file, or a regular file to replace, in an existing directory."""
    if not str(path).strip() or "\0" in str(path):
        raise UsageError("-o: an empty file name")
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_file():
            raise UsageError(f"-o {path}: exists and is not a regular file")
    elif not path.parent.is_dir():
        raise UsageError(f"-o {path}: no such directory {str(path.parent)!r}")


def drawing(file: str, fmt: str, qemu: str | None = None) -> str:
    """The topology with the oracle's predicted path for every pair, as SVG or DOT."""
    topo = load_checked(file, qemu=qemu)
    cpu = cpu_info(probe_for(topo), topo.machine.cpu, topo.profile.cpu)
    dot = topology_dot(topo, predicted_records(topo, cpu),
                       title=f"{topo.name}: predicted P2P paths"
                             + (f" ({topo.description})" if topo.description else ""))
    return to_svg(dot) if fmt == "svg" else dot


def command_line(args: argparse.Namespace, fmt: str) -> str:
    if not args.run_dir.strip() or "\0" in args.run_dir:
        raise UsageError("--run-dir: an empty path")
    run_dir = Path(args.run_dir)
    if not run_dir.is_absolute():
        run_dir = Path.cwd() / run_dir
    topo = load_checked(args.file, qemu=args.qemu)
    caps = probe_for(topo)
    accel = resolve_accel(topo.machine.accel, caps, allow_probe=False, profile=topo.profile)
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
        argv = build(topo, caps.runner, run_dir, accel.name, media=media,
                     console=run_dir / "console.log")
    else:
        argv = machine_argv(topo, caps.runner, run_dir, accel.name)
    if fmt == "json":
        return json.dumps(argv, indent=1) + "\n"
    about = f"topology {topo.name}: {topo.description}".rstrip(": ")
    prelude = [*(f"# {line}" for line in about.splitlines() or [""]),
               f"# accel: {accel.name} ({accel.reason})",
               *([f"# {caps.describe()}: its own loader, firmware and modules"]
                 if caps.runner.root else []),
               *caps.runner.exports(), 'mkdir -p "$RUN_DIR"']
    # only the testbed's own files move with $RUN_DIR; a user's file stays where it is
    owned = run_dir_files(topo, run_dir, [run_dir / "boot.qcow2", run_dir / "console.log"]
                          if args.boot else [])
    for bf in backing_files(topo, run_dir):
        if bf.user_file:
            continue  # the user's own file: the script never creates or truncates it
        q = quote(str(bf.path), str(run_dir), owned)
        prelude.append(f"[ -e {q} ] || truncate -s {bf.size} {q}")
    return to_script(argv, run_dir=str(run_dir), prelude=prelude, owned=owned)
