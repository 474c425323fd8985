"""Build (or show) the default guest image: Debian trixie userland, the trixie-backports
kernel with CONFIG_PCI_P2PDMA=y, and the testbed's guest tools.  Cached by recipe hash:
an unchanged recipe rebuilds nothing.
"""

from __future__ import annotations

import json
import sys

HELP = "build or show the guest image"


def add_arguments(p) -> None:
    p.add_argument("action", choices=("build", "show"), nargs="?", default="build")
    p.add_argument("--rebuild", action="store_true", help="build even if cached")


def run(args) -> int:
    from ..image.build import ensure_image

    def progress(msg: str) -> None:
        print(f"image: {msg}", file=sys.stderr, flush=True)

    image = ensure_image(progress=progress, rebuild=args.rebuild)
    if args.action == "show":
        print(json.dumps(image.manifest(), indent=1))
    else:
        print(f"{image.directory} (kernel {image.kernel_release}, "
              f"CONFIG_PCI_P2PDMA={'y' if image.p2pdma else 'n'})")
    return 0
