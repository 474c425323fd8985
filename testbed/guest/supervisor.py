"""The process that owns a detached guest (``testbed boot --detach``).

It boots the guest, records the instance as ready, then waits: SIGTERM (from
``testbed stop``) shuts the guest down gracefully; if QEMU dies on its own the
instance is marked failed.  QEMU is this process's child with a parent-death
signal, so it never outlives the supervisor.  QEMU serves a second QMP monitor in the
instance's directory (``Instance.monitor``) for later commands: ``testbed run --guest``'s
QMP workloads (:class:`testbed.guest.attach.AttachedGuest`).

Run as ``python -m testbed.guest.supervisor NAME TOPOLOGY [--kernel K] [--accel A] [--gdb]
[--share SPEC ...]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback

from ..errors import TestbedError
from ..kernel.resolve import resolve_kernel
from ..qemu.share import parse_share
from ..qemu.validate import load_checked
from ..util.log import setup as setup_logging
from ..util.process import identify
from . import instances
from .boot import BootOptions, boot

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="testbed-supervisor")
    p.add_argument("name")
    p.add_argument("topology")
    p.add_argument("--kernel", default=None)
    p.add_argument("--accel", default=None)
    p.add_argument("--qemu", default=None)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--gdb", action="store_true")
    p.add_argument("--share", action="append", default=[])
    args = p.parse_args(argv)
    setup_logging(0)

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *a: stopping.append(1))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    name = instances.check_name(args.name)
    inst = instances.load(name) or instances.Instance(name=name)
    inst.supervisor = identify(os.getpid())
    inst.save()
    try:
        topo = load_checked(args.topology, qemu=args.qemu)
        kernel = resolve_kernel(args.kernel, topo.profile) if args.kernel else None
        shares = tuple(parse_share(s) for s in args.share)  # checked by `testbed boot`
        guest = boot(topo, options=BootOptions(kernel=kernel, accel=args.accel,
                                               timeout=args.timeout, label=name,
                                               gdb=args.gdb, shares=shares,
                                               monitor_dir=inst.directory))
    except Exception as exc:  # every failure is recorded for `testbed boot` to report
        inst.status = "failed"
        inst.error = str(exc) if isinstance(exc, TestbedError) else traceback.format_exc()
        inst.save()
        return 1
    try:
        assert guest.machine is not None and guest.machine.proc is not None
        inst.status = "ready"
        inst.qemu = identify(guest.machine.proc.pid)
        inst.port = guest.port
        inst.key = str(guest.image.client_key)
        inst.host_public_key = guest.image.host_public_key
        inst.run_dir = str(guest.run_dir.path)
        inst.ssh = guest.ssh_command()
        inst.boot_seconds = guest.boot_seconds
        inst.topology = str(topo.source)
        inst.gdb_port = guest.gdb_port or 0
        inst.vmlinux = str(guest.vmlinux or "")
        inst.kernel_release = guest.kernel.release or ""
        inst.default_kernel = kernel is None
        inst.kernel_spec = "" if kernel is None else \
            kernel.spec if kernel.kind == "profile" else str(kernel.path)
        inst.shares = [s.spec for s in shares]
        monitor = guest.machine.second_monitor  # removed with QEMU (guest.shutdown)
        inst.monitor = str(monitor.path) if monitor is not None else ""
        inst.save()
        while not stopping and guest.machine.is_running():
            time.sleep(0.2)
        if not stopping:
            inst.status = "failed"
            inst.error = f"QEMU exited on its own (status {guest.machine.wait(1)})"
            inst.save()
    finally:
        guest.shutdown()
    if stopping:
        instances.remove(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
