"""python -m testbed.image [--rebuild]: build (or find) the guest image, print its manifest."""

from __future__ import annotations

import argparse
import json
import sys

from testbed.errors import TestbedError
from testbed.image.build import ensure_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.image", description=__doc__)
    parser.add_argument("--rebuild", action="store_true", help="build even if cached")
    args = parser.parse_args(argv)
    try:
        image = ensure_image(progress=lambda line: print(line, file=sys.stderr, flush=True),
                             rebuild=args.rebuild)
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(json.dumps(image.manifest(), indent=2))
    print(f"# image directory: {image.directory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
