"""The process that owns a detached guest (``testbed boot --detach``).

It boots the guest, records the instance as ready, then waits: SIGTERM (from
``testbed stop``) shuts the guest down gracefully; if QEMU dies on its own the
instance is marked failed.  QEMU is this process's child with a parent-death
signal, so it never outlives the supervisor.

Run as ``python -m testbed.supervisor NAME TOPOLOGY [--kernel K] [--accel A]``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback

from . import instances
from .errors import TestbedError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="testbed-supervisor")
    p.add_argument("name")
    p.add_argument("topology")
    p.add_argument("--kernel", default=None)
    p.add_argument("--accel", default=None)
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *a: stopping.append(1))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    import os
    inst = instances.load(args.name) or instances.Instance(name=args.name)
    inst.supervisor_pid = os.getpid()
    inst.save()
    from .guest.boot import BootOptions, boot
    from .spec import load_topology
    try:
        topo = load_topology(args.topology)
        kernel = None
        if args.kernel:
            from .kernels import resolve_kernel
            kernel = resolve_kernel(args.kernel)
        guest = boot(topo, options=BootOptions(kernel=kernel, accel=args.accel,
                                               timeout=args.timeout, label=args.name))
    except (TestbedError, Exception) as exc:
        inst.status = "failed"
        inst.error = str(exc) if isinstance(exc, TestbedError) else traceback.format_exc()
        inst.save()
        return 1
    try:
        inst.status = "ready"
        inst.qemu_pid = guest.qemu.proc.pid
        inst.port = guest.port
        inst.key = str(guest.image.client_key)
        inst.host_public_key = guest.image.host_public_key
        inst.run_dir = str(guest.run_dir.path)
        inst.ssh = guest.ssh_command()
        inst.boot_seconds = guest.boot_seconds
        inst.topology = str(topo.source)
        inst.save()
        while not stopping and guest.qemu.is_running():
            time.sleep(0.2)
        if not stopping:
            inst.status = "failed"
            inst.error = f"QEMU exited on its own (status {guest.qemu.wait(1)})"
            inst.save()
    finally:
        guest.shutdown()
    if stopping:
        instances.remove(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
