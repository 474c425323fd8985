"""Boot a topology and open a shell in the guest; leaving the shell shuts it down.

With --detach, return once SSH is ready and leave the guest running under a
supervisor process; reach it with `testbed ssh NAME`, stop it with `testbed stop NAME`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .. import instances
from ..errors import BootError, ToolMissing, UsageError
from ..spec import load_topology

HELP = "boot a topology (interactive shell, or --detach)"


def add_arguments(p) -> None:
    p.add_argument("topology", nargs="?", default="switch-cmb",
                   help="topology file or library name (default: %(default)s)")
    p.add_argument("--detach", action="store_true", help="leave the guest running")
    p.add_argument("--name", help="instance name for --detach (default: the topology name)")
    p.add_argument("--kernel", help="custom kernel: bzImage, build tree or unpacked package")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), help="override the topology")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for SSH")
    p.add_argument("--keep", action="store_true", help="keep the run directory afterwards")
    p.add_argument("--command", "-c", help="run this command in the guest instead of a shell")


def _progress(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    topo = load_topology(args.topology)  # bad input fails here, before anything starts
    kernel = None
    if args.kernel and args.kernel != "default":
        from ..kernels import resolve_kernel
        kernel = resolve_kernel(args.kernel)
    if args.detach:
        return _detach(args, topo)
    from ..guest.boot import BootOptions, boot
    if args.command is None and not sys.stdin.isatty():
        raise UsageError("no terminal for an interactive shell: use --command CMD or --detach")
    guest = boot(topo, options=BootOptions(kernel=kernel, accel=args.accel, timeout=args.timeout,
                                           keep=args.keep), progress=_progress)
    with guest:
        _progress(f"{topo.name} is up ({guest.boot_seconds:.1f} s, {guest.accel.name}); "
                  + ("running the command" if args.command else "exit the shell to shut it down"))
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
        _progress("shutting the guest down")
    return status


def _detach(args, topo) -> int:
    name = instances.check_name(args.name) if args.name else instances.free_name(topo.name)
    inst = instances.create(name)
    inst.topology = str(topo.source)
    inst.save()
    log = open(inst.directory / "supervisor.log", "wb")
    argv = [sys.executable, "-m", "testbed.supervisor", name, str(topo.source),
            "--timeout", str(args.timeout)]
    if args.kernel:
        argv += ["--kernel", os.path.abspath(args.kernel) if args.kernel != "default" else "default"]
    if args.accel:
        argv += ["--accel", args.accel]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, close_fds=True)
    _progress(f"booting {topo.name} as instance {name!r} (supervisor pid {proc.pid})")
    try:
        while True:
            inst = instances.load(name)
            if inst and inst.status in ("ready", "failed"):
                break
            if proc.poll() is not None:
                inst = instances.load(name)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        instances.stop(instances.load(name) or instances.Instance(name=name,
                                                                  supervisor_pid=proc.pid))
        raise
    if inst is None or inst.status != "ready":
        err = inst.error if inst else "the supervisor died"
        proc.wait(30)
        instances.remove(name)
        raise BootError(err or "the supervisor exited before the guest was ready")
    print(f"{name}: ready in {inst.boot_seconds:.1f} s on 127.0.0.1:{inst.port}")
    print(f"  testbed ssh {name}            # a shell")
    print(f"  testbed ssh {name} -- CMD     # run a command")
    print(f"  testbed stop {name}")
    print(f"  or: {' '.join(inst.ssh)}")
    return 0
