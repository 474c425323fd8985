"""Build a guest kernel from a Linux source tree, configured for the testbed.

    testbed kernel build KSRC [--output DIR]

Out of tree (make O=DIR): defconfig, kvm_guest.config, the testbed's fragment
(guest-images/kernel/p2pdma.config: CONFIG_PCI_P2PDMA, ZONE_DEVICE, NVMe,
virtio, ext4, the IOMMU drivers ... all built in) merged with
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

log = logging.getLogger(__name__)

HELP = "build a P2PDMA guest kernel from a Linux source tree"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build",), help="what to do (build)")
    p.add_argument("ksrc", type=Path, metavar="KSRC", help="Linux source tree")
    p.add_argument("--output", "-O", type=Path, metavar="DIR",
                   help="build directory (make O=DIR); default: under the testbed cache")
    p.add_argument("--fragment", type=Path, metavar="FILE",
                   help="config fragment (default guest-images/kernel/p2pdma.config)")
    p.add_argument("--jobs", "-j", type=int, metavar="N", help="make -jN (default: nproc)")
    p.add_argument("--reconfigure", action="store_true",
                   help="redo defconfig/fragment/olddefconfig even if up to date")


def run(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs: at least 1")
    output = args.output or default_build_dir(args.ksrc)
    result = build_kernel(args.ksrc, output, fragment=args.fragment, jobs=args.jobs,
                          reconfigure=args.reconfigure)
    log.info("kernel %s built in %.0f s", result.release or "?", result.seconds)
    print(result.bzimage)
    return 0
