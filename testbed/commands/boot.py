"""Boot a topology and open a shell in the guest; leaving the shell shuts it down.

With --detach, return once SSH is ready and leave the guest running under a
supervisor process; reach it with `testbed ssh NAME`, stop it with `testbed stop NAME`.

--gdb starts QEMU's gdbstub on a free port on 127.0.0.1, boots the kernel with
nokaslr and prints the gdb command (with the kernel's vmlinux when there is one).
--share HOSTDIR[:GUESTDIR][:rw] mounts a host directory in the guest (virtio-9p),
read-only unless :rw.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import BootError, ToolMissing, UsageError
from ..guest import instances
from ..guest.boot import BootOptions, boot
from ..guest.debug import gdb_help
from ..kernel.profile import profile_set
from ..kernel.resolve import PROFILE_PREFIX, KernelSpec, parse_profile_spec, resolve_kernel
from ..qemu.accel import requested_accel
from ..qemu.validate import load_checked
from ..spec.model import Topology
from ..util.process import identify
from . import options

HELP = "boot a topology (interactive shell, or --detach)"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", nargs="?", default="switch-cmb",
                   help="topology file or library name (default: %(default)s)")
    p.add_argument("--detach", action="store_true", help="leave the guest running")
    p.add_argument("--name", type=options.name,
                   help="instance name for --detach (default: the topology name)")
    p.add_argument("--kernel", type=options.kernel,
                   help="custom kernel: profile:NAME[+NAME][@SRC] (built from SRC, default "
                        "debian), bzImage, build tree or unpacked package")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), help="override the topology")
    p.add_argument("--qemu", type=options.qemu, metavar="NAME|PATH", help=options.QEMU_HELP)
    p.add_argument("--timeout", type=options.seconds, default=180.0,
                   help="seconds to wait for SSH")
    p.add_argument("--keep", action="store_true", help="keep the run directory afterwards")
    p.add_argument("--command", "-c", help="run this command in the guest instead of a shell")
    p.add_argument("--gdb", action="store_true",
                   help="QEMU's gdbstub on a free 127.0.0.1 port, the kernel with nokaslr; "
                        "prints the gdb command")
    p.add_argument("--share", action="append", default=[], type=options.share,
                   metavar="HOSTDIR[:GUESTDIR][:rw]", help=options.SHARE_HELP)


def run(args: argparse.Namespace) -> int:
    topo = load_checked(args.topology, qemu=args.qemu)  # bad input fails here, at once
    kernel = resolve_kernel(args.kernel, topo.profile) if args.kernel else None
    if kernel is not None and kernel.profiles:
        print(profile_lines(kernel), file=sys.stderr, flush=True)
    requested_accel(args.accel or topo.machine.accel)
    args.share = options.shares(args.share)
    if args.name is not None and not args.detach:
        raise UsageError("--name names a detached instance: use it with --detach")
    if args.detach:
        return _detach(args, topo)
    if args.command is None and not sys.stdin.isatty():
        raise UsageError("no terminal for an interactive shell: use --command CMD or --detach")
    return _interactive(args, topo, kernel)


def profile_lines(kernel: KernelSpec) -> str:
    """What a profile kernel is: its profile set, .config, build tree and the options each
    profile asked for (base by count: its file lists them)."""
    ps = profile_set(kernel.profiles)
    lines = [f"kernel: profile {ps.name} ({kernel.release}), .config sha256 "
             f"{kernel.config_sha256}", f"  build tree: {kernel.build_tree}"]
    for p in ps.profiles:
        opts = p.options
        if p.name == "base":
            lines.append(f"  base: {len(opts)} options ({p.path})")
        else:
            lines.append(f"  {p.name}: " + " ".join(f"{n}={opts[n]}" for n in opts))
        if p.gcov:
            lines.append(f"  {p.name}: gcov for " + " ".join(p.gcov))
    return "\n".join(lines)


def _interactive(args: argparse.Namespace, topo: Topology, kernel: KernelSpec | None) -> int:
    guest = boot(topo, options=BootOptions(kernel=kernel, accel=args.accel, timeout=args.timeout,
                                           keep=args.keep, gdb=args.gdb, shares=args.share))
    with guest:
        if guest.gdb_port is not None:  # stderr: stdout is the guest command's
            print(gdb_help(guest.gdb_port, guest.vmlinux, guest.kernel.release,
                           default_kernel=kernel is None), file=sys.stderr, flush=True)
        log.info("%s is up (%.1f s, %s); %s", topo.name, guest.boot_seconds, guest.accel.name,
                 "running the command" if args.command else "exit the shell to shut it down")
        if args.command is not None:
            res = guest.run(args.command, timeout=3600)
            sys.stdout.write(res.stdout)
            sys.stderr.write(res.stderr)
            status = res.exit_status
        else:
            try:
                status = subprocess.call(guest.ssh_command(), stdin=sys.stdin)
            except FileNotFoundError:
                raise ToolMissing("ssh", "openssh-client") from None
        log.info("shutting the guest down")
    return status


def _detach(args: argparse.Namespace, topo: Topology) -> int:
    name = instances.check_name(args.name) if args.name is not None \
        else instances.free_name(topo.name)
    inst = instances.create(name)
    inst.topology = str(topo.source)
    inst.save()
    argv = [sys.executable, "-m", "testbed.guest.supervisor", name, str(topo.source),
            "--timeout", str(args.timeout)]
    if args.kernel and args.kernel.startswith(PROFILE_PREFIX):  # the source as an absolute path
        names, source = parse_profile_spec(args.kernel)
        argv += ["--kernel", f"{PROFILE_PREFIX}{'+'.join(names)}@"
                 + (source if source == "debian" else os.path.abspath(source))]
    elif args.kernel:
        argv += ["--kernel", os.path.abspath(args.kernel) if args.kernel != "default"
                 else "default"]
    if args.accel:
        argv += ["--accel", args.accel]
    if args.qemu:
        argv += ["--qemu", topo.machine.qemu]  # resolved against our working directory
    if args.gdb:
        argv.append("--gdb")
    for share in args.share:
        argv += ["--share", share.spec]
    with open(inst.directory / "supervisor.log", "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
    log.info("booting %s as instance %r (supervisor pid %d)", topo.name, name, proc.pid)
    supervisor = identify(proc.pid)
    loaded: instances.Instance | None = inst
    try:
        while True:
            loaded = instances.load(name)
            if loaded and loaded.status in ("ready", "failed"):
                break
            if proc.poll() is not None:
                loaded = instances.load(name)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        current = instances.load(name) or instances.Instance(name=name)
        current.supervisor = current.supervisor or supervisor
        instances.stop(current)
        if proc.poll() is None:  # our own child, whatever identity it had when taken
            proc.terminate()     # (right after fork it may still have been ours)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    if loaded is None or loaded.status != "ready":
        err = loaded.error if loaded else "the supervisor died"
        proc.wait(30)
        instances.remove(name)
        raise BootError(err or "the supervisor exited before the guest was ready")
    print(f"{name}: ready in {loaded.boot_seconds:.1f} s on 127.0.0.1:{loaded.port}")
    print(f"  testbed ssh {name}            # a shell")
    print(f"  testbed ssh {name} -- CMD     # run a command")
    print(f"  testbed stop {name}")
    print(f"  or: {' '.join(loaded.ssh)}")
    for share in loaded.shares:
        print(f"  shared: {share}")
    if loaded.gdb_port:
        print(gdb_help(loaded.gdb_port, Path(loaded.vmlinux) if loaded.vmlinux else None,
                       loaded.kernel_release, default_kernel=loaded.default_kernel))
    return 0
