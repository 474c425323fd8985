"""The command line of p2pdma-guest: one JSON document on stdout per sub-command."""

import argparse
import json
import sys

from . import schema, trace
from .copy import copy
from .dio import USAGE, UsageError, parse_seed, parse_size
from .inventory import inventory
from .passthru import passthru
from .pmr import pmr


def emit(doc):
    json.dump(doc, sys.stdout, indent=1)
    print()


def run_workload(func, args):
    """Run a workload sub-command: JSON out, 0 when it ran, 2 on bad usage.  With
    ``--observe`` the document carries what the kernel decided for its transfers."""
    observe = getattr(args, "observe", False)
    try:
        if observe:
            trace.clear()
        doc = func(args)
        if observe:
            doc[schema.MECHANISM] = trace.read()
    except UsageError as exc:
        emit({"stage": schema.STAGE_USAGE, "error": str(exc), "errno": None})
        print(f"p2pdma-guest {args.cmd}: {exc}", file=sys.stderr)
        return USAGE
    emit(doc)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="p2pdma-guest")
    sub = p.add_subparsers(dest="cmd", required=True)
    inv = sub.add_parser("inventory", help="PCI tree, NVMe controllers, p2pmem providers")
    inv.add_argument("--wait", type=float, default=0.0,
                     help="seconds to wait for every NVMe to be live")
    inv.add_argument("--expect-nvme", type=int, default=None)
    inv.add_argument("--expect-p2pmem", type=int, default=None)
    inv.add_argument("--trace", action="store_true",
                     help="also set up the P2P tracing (as `trace setup`)")
    inv.add_argument("--grouping-symbols", action="store_true",
                     help="also look up the IOMMU grouping functions in /proc/kallsyms (~1 s)")
    inv.set_defaults(func=inventory)

    cp = sub.add_parser("copy", help="O_DIRECT read into / write from a p2pmem buffer")
    cp.add_argument("--provider", metavar="BDF", help="p2pmem provider, e.g. 0000:03:00.0")
    cp.add_argument("--client", metavar="DEV", required=True,
                    help="block device, e.g. /dev/nvme1n1")
    cp.add_argument("--size", type=parse_size, required=True, metavar="BYTES")
    cp.add_argument("--offset", type=parse_size, default=0, metavar="BYTES",
                    help="region A = [offset, offset+size), region B follows it")
    cp.add_argument("--seed", type=parse_seed, default=1)
    cp.add_argument("--buffer", choices=("p2pmem", "host"), default="p2pmem")
    cp.add_argument("--corrupt-block", type=int, default=None, metavar="K",
                    help="overwrite block K of region A on the device before the read")
    cp.add_argument("--observe", action="store_true",
                    help="add what the kernel decided (p2pdma-guest trace setup first)")
    cp.set_defaults(func=lambda a: run_workload(copy, a))

    pt = sub.add_parser("passthru", help="NVMe Write/Read passthrough with a p2pmem buffer")
    pt.add_argument("--provider", metavar="BDF", required=True)
    pt.add_argument("--ctrl", metavar="CHARDEV", required=True,
                    help="/dev/nvmeX or /dev/ngXnY")
    pt.add_argument("--nsid", type=int, required=True)
    pt.add_argument("--size", type=parse_size, required=True, metavar="BYTES")
    pt.add_argument("--offset-lba", type=int, default=0, metavar="L")
    pt.add_argument("--seed", type=parse_seed, default=1)
    pt.add_argument("--block", metavar="DEV", default=None,
                    help="the namespace's block device (default: found through sysfs)")
    pt.add_argument("--timeout-ms", type=int, default=0,
                    help="per-command timeout (0: the driver's io_timeout)")
    pt.add_argument("--observe", action="store_true",
                    help="add what the kernel decided (p2pdma-guest trace setup first)")
    pt.set_defaults(func=lambda a: run_workload(passthru, a))

    pm = sub.add_parser("pmr", help="write or verify a pattern in the Persistent Memory Region")
    pm.add_argument("--bdf", required=True)
    pm.add_argument("mode", choices=("write", "read"))
    pm.add_argument("--seed", type=parse_seed, required=True)
    pm.add_argument("--size", type=parse_size, default=None, metavar="BYTES",
                    help="default: the PMR BAR, at most 4 MiB")
    pm.add_argument("--unbind", action="store_true",
                    help="if the kernel refuses to mmap the BARs because the driver holds "
                         "them (CONFIG_IO_STRICT_DEVMEM), unbind the driver; it stays unbound")
    pm.set_defaults(func=lambda a: run_workload(pmr, a))

    tr = sub.add_parser("trace", help="the kernel's P2P map-type decisions (tracefs probes)")
    tr.add_argument("action", choices=("setup", "read", "teardown"))
    tr.set_defaults(func=lambda a: _trace(a.action))

    args = p.parse_args(argv)
    return args.func(args)


def _trace(action):
    emit({"setup": trace.setup, "read": trace.read, "teardown": trace.teardown}[action]())
    return 0
