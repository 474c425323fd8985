"""Build (or show) a guest image: Debian trixie userland, the trixie-backports kernel with
CONFIG_PCI_P2PDMA=y, and the testbed's guest tools; for the x86-64 machine (default) or,
with ``--arch aarch64``, the arm64 one.  Cached by recipe hash:
an unchanged recipe rebuilds nothing.  The packages come from the host's own Debian
mirror (its apt sources; TESTBED_DEBIAN_MIRROR=URL overrides it).
"""

from __future__ import annotations

import argparse
import json

from ..image.build import ensure_image
from ..machines import DEFAULT_ARCH, PROFILES

HELP = "build or show the guest image"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build", "show"), nargs="?", default="build")
    p.add_argument("--rebuild", action="store_true", help="build even if cached")
    p.add_argument("--arch", choices=sorted(PROFILES), default=DEFAULT_ARCH,
                   help="the machine whose guest image to build or show (default "
                        f"{DEFAULT_ARCH}; aarch64: Debian arm64, installed inside an arm64 "
                        "guest under TCG, many minutes the first time)")


def run(args: argparse.Namespace) -> int:
    image = ensure_image(rebuild=args.rebuild, profile=PROFILES[args.arch])
    if args.action == "show":
        print(json.dumps(image.manifest(), indent=1))
    else:
        print(f"{image.directory} (kernel {image.kernel_release}, "
              f"CONFIG_PCI_P2PDMA={'y' if image.p2pdma else 'n'})")
    return 0
