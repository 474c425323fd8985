"""The command line of p2pdma-guest: one JSON document on stdout per sub-command."""

import argparse
import importlib
import json
import os
import sys

from . import schema
from .usage import USAGE, UsageError, parse_seed, parse_size


def lazy(module, name):
    """The function ``name`` of the tool's module ``module``, imported only when called:
    each call of the tool is a new interpreter in a TCG guest, so it loads only what its
    sub-command runs (importing every workload cost about a second).

        >>> lazy("usage", "parse_size")("4K")
        4096
    """
    def call(*args):
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args)
    return call


trace_clear, trace_read = lazy("trace", "clear"), lazy("trace", "read")


def emit(doc):
    json.dump(doc, sys.stdout, indent=1)
    print()


def run_workload(func, args):
    """Run a workload sub-command: JSON out, 0 when it ran, 2 on bad usage.  With
    ``--observe`` the document carries what the kernel decided for its transfers."""
    observe = getattr(args, "observe", False)
    try:
        if observe:
            trace_clear()
        doc = func(args)
        if observe:
            doc[schema.MECHANISM] = trace_read()
    except UsageError as exc:
        emit({"stage": schema.STAGE_USAGE, "error": str(exc), "errno": None})
        print(f"p2pdma-guest {args.cmd}: {exc}", file=sys.stderr)
        return USAGE
    emit(doc)
    return 0


class Formatter(argparse.HelpFormatter):
    """Help as wide as $COLUMNS, else 100 columns: argparse asks the terminal through
    shutil otherwise, whose imports cost about 0.2 s of every call under TCG."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            cols = os.environ.get("COLUMNS", "")
            width = int(cols) - 2 if cols.isdigit() and int(cols) > 2 else 98
        super().__init__(prog, indent_increment, max_help_position, width)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help (and every sub-command's: they are of its class) uses
    :class:`Formatter`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = Parser(prog="p2pdma-guest")
    sub = p.add_subparsers(dest="cmd", required=True)
    # only the sub-command asked for gets its parser built (all of them for help or a
    # mistyped name): each call of the tool is a new interpreter in a TCG guest
    only = argv[0] if argv and not argv[0].startswith("-") else None
    for name, build in SUBCOMMANDS.items():
        if only is None or only not in SUBCOMMANDS or name == only:
            build(sub)
    args = p.parse_args(argv)
    return args.func(args)


def add_inventory(sub):
    inv = sub.add_parser("inventory", help="PCI tree, NVMe controllers, p2pmem providers")
    inv.add_argument("--wait", type=float, default=0.0,
                     help="seconds to wait for every NVMe to be live")
    inv.add_argument("--expect-nvme", type=int, default=None)
    inv.add_argument("--expect-p2pmem", type=int, default=None)
    inv.add_argument("--load", action="append", default=[], metavar="MODULE",
                     help="modprobe MODULE first (an endpoint's driver that is a module)")
    inv.add_argument("--trace", action="store_true",
                     help="also set up the P2P tracing (as `trace setup`)")
    inv.add_argument("--grouping-symbols", action="store_true",
                     help="also look up the IOMMU grouping functions in /proc/kallsyms (~1 s)")
    inv.set_defaults(func=lazy("inventory", "inventory"))


def add_copy(sub):
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
    cp.set_defaults(func=lambda a: run_workload(lazy("copy", "copy"), a))


def add_passthru(sub):
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
    pt.set_defaults(func=lambda a: run_workload(lazy("passthru", "passthru"), a))


def add_pmr(sub):
    pm = sub.add_parser("pmr", help="write or verify a pattern in the Persistent Memory Region")
    pm.add_argument("--bdf", required=True)
    pm.add_argument("mode", choices=("write", "read"))
    pm.add_argument("--seed", type=parse_seed, required=True)
    pm.add_argument("--size", type=parse_size, default=None, metavar="BYTES",
                    help="default: the PMR BAR, at most 4 MiB")
    pm.add_argument("--unbind", action="store_true",
                    help="if the kernel refuses to mmap the BARs because the driver holds "
                         "them (CONFIG_IO_STRICT_DEVMEM), unbind the driver; it stays unbound")
    pm.set_defaults(func=lambda a: run_workload(lazy("pmr", "pmr"), a))


def add_trace(sub):
    tr = sub.add_parser("trace", help="the kernel's P2P map-type decisions (tracefs probes)")
    tr.add_argument("action", choices=("setup", "read", "teardown"))
    tr.set_defaults(func=lambda a: _trace(a.action))


def _trace(action):
    emit(lazy("trace", action)())
    return 0


def add_coverage(sub):
    cv = sub.add_parser("coverage", help="which kernel functions ran (function tracer counts)")
    cv.add_argument("action", choices=("setup", "read", "teardown"),
                    help="setup reads the functions to trace as JSON on stdin")
    cv.set_defaults(func=lambda a: _emit_call("coverage", a.action))


def _emit_call(module, name, *args):
    emit(lazy(module, name)(*args))
    return 0


def add_nvmet(sub):
    nv = sub.add_parser("nvmet-p2pmem", help="an NVMe target namespace told to use p2pmem")
    nv.add_argument("--device", required=True, metavar="DEV", help="the namespace's block device")
    nv.add_argument("--p2pmem", required=True, metavar="BDF|1",
                    help="the provider, or 1 for any the kernel finds")
    nv.set_defaults(func=lambda a: run_workload(lazy("nvmet", "nvmet_p2pmem"), a))


def add_gcov(sub):
    gc = sub.add_parser("gcov", help="the kernel's gcov counters (CONFIG_GCOV_KERNEL)")
    gc.add_argument("action", choices=("reset", "collect"))
    gc.add_argument("--root", default="", help="the kernel's build tree (as the host has it)")
    gc.set_defaults(func=lambda a: _emit_call("gcov", a.action, a.root))


# the sub-commands of the workloads that cover the paths merged since 6.2
def add_limits(sub):
    lim = sub.add_parser("limits", help="a block device's request queue limits")
    lim.add_argument("--client", metavar="DEV", required=True)
    lim.set_defaults(func=lambda a: run_workload(lambda a: {
        schema.LIMITS: lazy("sysfs", "queue_limits")(a.client)}, a))


def add_iovec(sub):
    iv = sub.add_parser("iovec", help="pwritev/preadv of iovecs mixing p2pmem and host memory")
    iv.add_argument("--provider", metavar="BDF")
    iv.add_argument("--client", metavar="DEV", required=True)
    iv.add_argument("--case", action="append", default=[], metavar="SEGS[/key=BYTES...]",
                    help="e.g. p2p:64K,host:64K  p2p:512x160/gap=512  p2p:64K/start=512")
    iv.add_argument("--offset", type=parse_size, default=0, metavar="BYTES")
    iv.add_argument("--seed", type=parse_seed, default=1)
    iv.add_argument("--corrupt-host", action="store_true",
                    help="invert, on the device, what the first host segment will read")
    iv.set_defaults(func=lambda a: run_workload(lazy("iovec", "iovec"), a))


def add_fio(sub):
    fi = sub.add_parser("fio", help="fio with its buffers in a provider's p2pmem")
    fi.add_argument("--provider", metavar="BDF")
    fi.add_argument("--client", metavar="DEV", required=True)
    fi.add_argument("--buffer", choices=("p2pmem", "host"), default="p2pmem")
    fi.add_argument("--timeout", type=float, default=600.0, help="seconds per fio run")
    fi.add_argument("--corrupt-offset", type=parse_size, default=None, metavar="BYTES",
                    help="write without verifying, invert the 4 KiB block there, verify only")
    fi.add_argument("fio_args", nargs=argparse.REMAINDER, help="-- then fio's own arguments")
    fi.set_defaults(func=lambda a: run_workload(lazy("fio", "fio"), a))


def add_concurrent(sub):
    cc = sub.add_parser("concurrent", help="every pair at once, threads per pair")
    cc.add_argument("--pair", action="append", required=True, metavar="BDF=DEV")
    cc.add_argument("--threads", type=int, default=2)
    cc.add_argument("--size", type=parse_size, default=256 << 10, metavar="BYTES")
    cc.add_argument("--iters", type=int, default=2)
    cc.add_argument("--base-offset", type=parse_size, default=64 << 20, metavar="BYTES")
    cc.add_argument("--seed", type=parse_seed, default=1)
    cc.set_defaults(func=lambda a: run_workload(lazy("concurrent", "concurrent"), a))


def add_pool(sub):
    po = sub.add_parser("pool", help="exhaust and release a provider's p2pmem pool")
    po.add_argument("--provider", metavar="BDF", required=True)
    po.add_argument("--chunk", type=parse_size, default=1 << 20, metavar="BYTES")
    po.add_argument("--client", metavar="DEV", help="for the kill-with-I/O-in-flight check")
    po.add_argument("--kill-size", type=parse_size, default=4 << 20, metavar="BYTES")
    po.add_argument("--kill-delay", type=float, default=0.5, metavar="SECONDS")
    po.set_defaults(func=lambda a: run_workload(lazy("pool", "pool"), a))


def add_p2p_loop(sub):
    lo = sub.add_parser("p2p-loop", help="P2P copies in flight, JSON lines to --log")
    lo.add_argument("--provider", metavar="BDF", required=True)
    lo.add_argument("--client", metavar="DEV", required=True)
    lo.add_argument("--size", type=parse_size, default=8 << 20, metavar="BYTES")
    lo.add_argument("--seconds", type=float, default=60.0)
    lo.add_argument("--max-errors", type=int, default=3)
    lo.add_argument("--seed", type=parse_seed, default=1)
    lo.add_argument("--log", required=True)
    lo.set_defaults(func=lambda a: run_workload(lazy("loop", "p2p_loop"), a))


def add_vfio_nvme(sub):
    vn = sub.add_parser("vfio-nvme", help="the userspace NVMe driver over VFIO, on its own")
    vn.add_argument("--bdf", required=True)
    vn.add_argument("--iommu", choices=("type1", "iommufd"), default="type1")
    vn.add_argument("--size", type=parse_size, default=256 << 10, metavar="BYTES")
    vn.add_argument("--offset", type=parse_size, default=32 << 20, metavar="BYTES")
    vn.add_argument("--seed", type=parse_seed, default=1)
    vn.add_argument("--allow-unsafe-interrupts", action="store_true",
                    help="set the VFIO/iommufd module parameter (a vIOMMU without interrupt "
                         "remapping); restored afterwards")
    vn.set_defaults(func=lambda a: run_workload(lazy("vfionvme", "vfio_nvme"), a))


def add_vfio_p2p(sub):
    vp = sub.add_parser("vfio-p2p", help="P2P to a BAR through VFIO type1 or iommufd")
    vp.add_argument("--provider", metavar="BDF", help="the function whose BAR2 (CMB) is used")
    vp.add_argument("--client", metavar="BDF", help="the NVMe that DMAs to it")
    vp.add_argument("--method", action="append", default=[],
                    choices=("type1", "pfnmap", "dmabuf"))
    vp.add_argument("--size", type=parse_size, default=256 << 10, metavar="BYTES")
    vp.add_argument("--offset", type=parse_size, default=64 << 20, metavar="BYTES")
    vp.add_argument("--seed", type=parse_seed, default=1)
    vp.add_argument("--allow-unsafe-interrupts", action="store_true")
    vp.add_argument("--observe", action="store_true",
                    help="add the IOMMU map events and the dma-buf/VFIO probes")
    vp.add_argument("--probe", action="store_true", help="only report what the kernel offers")
    vp.set_defaults(func=lambda a: run_workload(lazy("vfiop2p", "vfio_p2p"), a))


def add_vfio_revoke(sub):
    vr = sub.add_parser("vfio-revoke", help="a dma-buf mapping of a BAR revoked under the "
                                            "client (iommufd)")
    vr.add_argument("--provider", metavar="BDF")
    vr.add_argument("--client", metavar="BDF")
    vr.add_argument("--trigger", action="append", default=[],
                    choices=("decoding", "reset", "close", "unplug"))
    vr.add_argument("--size", type=parse_size, default=64 << 10, metavar="BYTES")
    vr.add_argument("--offset", type=parse_size, default=64 << 20, metavar="BYTES")
    vr.add_argument("--seed", type=parse_seed, default=1)
    vr.add_argument("--allow-unsafe-interrupts", action="store_true")
    vr.add_argument("--observe", action="store_true")
    vr.add_argument("--control", metavar="FILE",
                    help="unplug: JSON lines for the host (ready, request, attempted, done)")
    vr.set_defaults(func=lambda a: run_workload(lazy("vfiorevoke", "vfio_revoke"), a))


def add_vfio_restore(sub):
    vr = sub.add_parser("vfio-restore", help="give functions bound to vfio-pci by the tool "
                                             "back to their drivers")
    vr.add_argument("--timeout", type=float, default=60.0)
    vr.set_defaults(func=lambda a: run_workload(lambda a: lazy("vfiobind", "restore")(
        a.timeout), a))


def add_hmm_p2p(sub):
    hp = sub.add_parser("hmm-p2p", help="mirror host pages and p2pmem for a client through "
                        "the hmm_p2p_test module (hmm_range_fault + hmm_dma_map_pfn)")
    hp.add_argument("--provider", metavar="BDF", required=True)
    hp.add_argument("--client", metavar="BDF", required=True,
                    help="the PCI device the pages are mapped for")
    hp.add_argument("--p2p-pages", type=int, default=4, metavar="N",
                    help="p2pmem pages between the two host pages")
    hp.set_defaults(func=lambda a: run_workload(lazy("hmmp2p", "hmm_p2p"), a))


def add_kselftest(sub):
    ks = sub.add_parser("kselftest", help="run one kernel selftest program, bounded, with "
                        "its device handed to vfio-pci when asked")
    ks.add_argument("--dir", required=True, help="where the programs were unpacked")
    ks.add_argument("--program", required=True)
    ks.add_argument("--arg", action="append", default=[], help="an argument of the program")
    ks.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    ks.add_argument("--timeout", type=float, default=300.0, help="seconds before it is killed")
    ks.add_argument("--module", action="append", default=[], help="modprobe it first")
    ks.add_argument("--vfio", metavar="BDF", help="bind this device to vfio-pci meanwhile")
    ks.add_argument("--unsafe-interrupts", action="store_true",
                    help="allow VFIO without interrupt remapping (virtio-iommu) meanwhile")
    ks.add_argument("--hugepages", type=int, default=0, help="2 MiB huge pages to reserve")
    ks.set_defaults(func=lambda a: run_workload(lazy("kselftest", "kselftest"), a))


def add_kunit(sub):
    ku = sub.add_parser("kunit", help="the KUnit suites' results from debugfs")
    ku.set_defaults(func=lambda a: run_workload(lambda a: lazy("kselftest", "kunit_results")(),
                                                a))


SUBCOMMANDS = {"inventory": add_inventory, "copy": add_copy, "passthru": add_passthru,
               "pmr": add_pmr, "trace": add_trace, "coverage": add_coverage,
               "gcov": add_gcov, "nvmet-p2pmem": add_nvmet, "limits": add_limits, "iovec": add_iovec,
               "fio": add_fio, "concurrent": add_concurrent, "pool": add_pool,
               "p2p-loop": add_p2p_loop, "vfio-nvme": add_vfio_nvme,
               "vfio-p2p": add_vfio_p2p, "vfio-revoke": add_vfio_revoke,
               "vfio-restore": add_vfio_restore,
               "hmm-p2p": add_hmm_p2p, "kselftest": add_kselftest, "kunit": add_kunit}
