"""Guest kernels from source: Debian's kernel source, and kernels built for the testbed.

    testbed kernel source debian [--package linux-source-7.3] [--update]
    testbed kernel build KSRC --profile base [--profile vfio-iommufd ...] [--check]
    testbed kernel profiles
    testbed kernel build KSRC [--output DIR]          (defconfig + the testbed fragment)

``source debian`` fetches Debian's kernel source package (linux-source-7.3 from
trixie-backports: the source of the image's own kernel) with the host's apt
configuration, or a private one with the host's mirror when the host's release
lacks it, unpacks it once into the cache and prints the tree's path.

``build --profile``: a small kernel from allnoconfig + the profiles
(testbed/kernel/profiles/*.config; base is always included), every option the
profiles ask for checked in the final .config (an option Kconfig dropped is an
error naming the unmet dependency), built with ccache in a kept build tree under
the cache, once per input (source content, profiles, compiler). KSRC "debian" is
Debian's kernel source (see ``source``). Boot it with --kernel profile:NAMES:

    testbed kernel build debian --profile vfio-iommufd --profile coverage
    testbed run switch-cmb --kernel profile:base+vfio-iommufd+coverage

``build`` without --profile: out of tree (make O=DIR): defconfig, kvm_guest.config, the testbed's
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
from ..kernel.profile import available, load
from ..kernel.profile_build import ARCHES, build_profile_kernel
from ..kernel.source import DEFAULT_PACKAGE, DEFAULT_SUITE, debian_source
from ..machines import DEFAULT_ARCH

log = logging.getLogger(__name__)

HELP = "Debian's kernel source; build a P2PDMA guest kernel from a Linux source tree"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True,
                           parser_class=type(p))
    b = sub.add_parser("build", help="build a guest kernel from a Linux source tree")
    b.add_argument("ksrc", metavar="KSRC",
                   help="Linux source tree, or 'debian' (Debian's linux-source-7.3)")
    b.add_argument("--profile", "-p", action="append", metavar="NAME", default=[],
                   help="kernel profile (repeat, or NAME+NAME); base is always included; "
                        "see 'testbed kernel profiles'")
    b.add_argument("--arch", default=DEFAULT_ARCH, choices=tuple(ARCHES),
                   help=f"architecture of a profile kernel (default {DEFAULT_ARCH})")
    b.add_argument("--check", action="store_true",
                   help="with --profile: configure and check the options, compile nothing")
    b.add_argument("--output", "-O", type=Path, metavar="DIR",
                   help="build directory (make O=DIR); default: under the testbed cache")
    b.add_argument("--fragment", type=Path, metavar="FILE",
                   help="config fragment (default guest-images/kernel/p2pdma.config)")
    b.add_argument("--jobs", "-j", type=int, metavar="N", help="make -jN (default: nproc)")
    b.add_argument("--reconfigure", action="store_true",
                   help="redo defconfig/fragment/olddefconfig even if up to date")
    sub.add_parser("profiles", help="list the kernel profiles and what they are for")
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
    if args.action == "profiles":
        for name in available():
            p = load(name)
            extra = f"  (gcov: {len(p.gcov)} paths)" if p.gcov else ""
            print(f"{name:14} {p.summary}{extra}")
        return 0
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs: at least 1")
    if args.profile:
        names = [n.strip() for arg in args.profile for n in arg.split("+")]
        k = build_profile_kernel(args.ksrc, names, arch=args.arch, jobs=args.jobs,
                                 output=args.output, check_only=args.check)
        if k is None:
            return 0
        log.info("profile kernel %s: %s, build tree %s; boot it with --kernel %s",
                 k.name, k.release, k.tree, k.spec)
        print(k.image)
        return 0
    if args.check or args.arch != DEFAULT_ARCH:
        raise UsageError("--check and --arch go with --profile")
    if args.ksrc == "debian":
        raise UsageError("KSRC debian: give --profile (the defconfig build takes a tree path)")
    output = args.output or default_build_dir(Path(args.ksrc))
    result = build_kernel(Path(args.ksrc), output, fragment=args.fragment, jobs=args.jobs,
                          reconfigure=args.reconfigure)
    log.info("kernel %s built in %.0f s", result.release or "?", result.seconds)
    print(result.bzimage)
    return 0
