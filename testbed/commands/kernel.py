"""Guest kernels from source: Debian's kernel source, and kernels built for the testbed.

    testbed kernel source debian [--package linux-source-7.3] [--update]
    testbed kernel build KSRC [--output DIR]

``source debian`` fetches Debian's kernel source package (linux-source-7.3 from
trixie-backports: the source of the image's own kernel) with the host's apt
configuration, or a private one with the host's mirror when the host's release
lacks it, unpacks it once into the cache and prints the tree's path.

``build``: out of tree (make O=DIR): defconfig, kvm_guest.config, the testbed's
fragment (guest-images/kernel/p2pdma.config: CONFIG_PCI_P2PDMA, ZONE_DEVICE,
NVMe, virtio, ext4, the IOMMU drivers ... all built in) merged with
scripts/kconfig/merge_config.sh, olddefconfig; every =y option of the fragment
is checked in the final .config; then make -j$(nproc) bzImage. The bzImage
boots the default image with no initramfs or modules:

    testbed run switch-cmb --kernel DIR/arch/x86/boot/bzImage

A second build of the same output directory keeps the configuration (unless the
fragment changed or --reconfigure) and only rebuilds what changed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import UsageError
from ..kernel.build import build_kernel, default_build_dir
from ..kernel.source import DEFAULT_PACKAGE, DEFAULT_SUITE, debian_source

log = logging.getLogger(__name__)

HELP = "Debian's kernel source; build a P2PDMA guest kernel from a Linux source tree"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                           parser_class=type(p))
    b = sub.add_parser("build", help="build a guest kernel from a Linux source tree")
    b.add_argument("ksrc", type=Path, metavar="KSRC", help="Linux source tree")
    b.add_argument("--output", "-O", type=Path, metavar="DIR",
                   help="build directory (make O=DIR); default: under the testbed cache")
    b.add_argument("--fragment", type=Path, metavar="FILE",
                   help="config fragment (default guest-images/kernel/p2pdma.config)")
    b.add_argument("--jobs", "-j", type=int, metavar="N", help="make -jN (default: nproc)")
    b.add_argument("--reconfigure", action="store_true",
                   help="redo defconfig/fragment/olddefconfig even if up to date")
    s = sub.add_parser("source", help="fetch and unpack a kernel source; print its tree")
    s.add_argument("origin", choices=("debian",),
                   help="debian: Debian's kernel source package (the image kernel's source)")
    s.add_argument("--package", default=DEFAULT_PACKAGE,
                   help=f"the source package (default {DEFAULT_PACKAGE})")
    s.add_argument("--suite", default=DEFAULT_SUITE,
                   help=f"the suite it comes from (default {DEFAULT_SUITE})")
    s.add_argument("--update", action="store_true",
                   help="ask apt for a newer upload even when one is unpacked")


def run(args: argparse.Namespace) -> int:
    if args.action == "source":
        src = debian_source(args.package, args.suite, update=args.update)
        log.info("%s %s", src.package, src.version)
        print(src.tree)
        return 0
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs: at least 1")
    output = args.output or default_build_dir(args.ksrc)
    result = build_kernel(args.ksrc, output, fragment=args.fragment, jobs=args.jobs,
                          reconfigure=args.reconfigure)
    log.info("kernel %s built in %.0f s", result.release or "?", result.seconds)
    print(result.bzimage)
    return 0
