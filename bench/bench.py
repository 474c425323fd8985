#!/usr/bin/env python3
"""The testbed's speed, measured against a floor in the same run (`make bench`).

Each figure is a *section*: a module in bench/sections/ with a ``SECTION`` (its name, its
order, and a function that measures, prints as it goes and returns its headline lines).
A new figure is a new module there (kernel build times, another QEMU, another
architecture...); nothing here changes.  The sections of the project itself:

1. ``ratio``: floor vs testbed, paired (floor, testbed, floor, testbed, ...) so a drifting
   machine affects both: the *floor* is the same QEMU machine (switch-cmb's devices, the
   image's kernel through qboot and its PVH entry) booting a busybox initramfs that powers
   off at once; the *testbed* is a whole `testbed boot switch-cmb -c true` (start-up, boot,
   SSH, the guest-side tree check, one command, shutdown).  Goal: median ratio <= 1.3.
2. ``phases``: the phases of one `testbed run switch-cmb -w p2p-copy` (from its
   results.json) and "everything else": the wall time that is neither the guest booting
   nor the judged copies.  Goal: <= 0.5 s.
3. ``scaling``: boot time by the number of NVMe controllers (2 to 64, 8 per switch).
4. ``kernel``: kernel profiles: cold builds, a one-file change, the profile kernel's boot
   (bench/kernel.py; ``--skip kernel`` leaves them out: the cold builds take minutes).
5. ``arm64``: `testbed boot switch-cmb-arm64 -c true` beside the x86 boot and an arm64
   floor, paired (goal: arm64 <= 2x x86; builds the arm64 image first when not cached).

    .venv/bin/python bench/bench.py [--runs 5] [--only ratio,phases] [--skip scaling]
                                    [--scaling 2,8,16,32,64]

Timings are wall-clock seconds from Python's monotonic clock around whole processes, and
the CPU seconds the operating system accounted to them and their children (steadier than
wall time on a shared machine).  The first line says the date and the load.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TESTBED = [sys.executable, "-m", "testbed"]


@dataclass
class Context:
    """What every section gets: the options, a scratch directory, the helpers below."""

    args: argparse.Namespace
    work: Path


@dataclass(frozen=True)
class Section:
    name: str  # what --only / --skip take
    title: str
    run: Callable[[Context], list[str]]  # prints as it measures; returns headline lines
    order: int = 100  # the project's own: 10, 20, 30; others after
    options: Callable[[argparse.ArgumentParser], None] = field(default=lambda p: None)


def sections() -> list[Section]:
    """Every ``SECTION`` of bench/sections/*.py, in order."""
    import sections as package
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"sections.{info.name}")
        section = getattr(module, "SECTION", None)
        if isinstance(section, Section):
            found.append(section)
    return sorted(found, key=lambda s: (s.order, s.name))


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # user + system seconds of the process and the children it waited for


def timed(argv: list[str], timeout: float = 600, check: bool = True, **kw) -> Timing:
    """Run ``argv`` to its end (output thrown away unless ``kw`` says otherwise)."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=timeout, check=check, **kw)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


def stats(values: list[float], digits: int = 2) -> str:
    return (f"min {min(values):.{digits}f}  median {statistics.median(values):.{digits}f}  "
            f"max {max(values):.{digits}f}")


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main() -> int:
    found = sections()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="paired runs (default: %(default)s)")
    p.add_argument("--only", default="", help="comma-separated sections: "
                   + ", ".join(s.name for s in found))
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    for s in found:
        s.options(p)
    args = p.parse_args()
    only = {x for x in args.only.split(",") if x}
    skip = {x for x in args.skip.split(",") if x}
    unknown = (only | skip) - {s.name for s in found}
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    chosen = [s for s in found if (not only or s.name in only) and s.name not in skip]
    os.environ.setdefault("TESTBED_STATE", tempfile.mkdtemp(prefix="testbed-bench-state-"))
    print(f"p2pdma-testbed bench, {machine_line()}", flush=True)
    headlines: list[tuple[str, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="testbed-bench-") as tmp:
        for i, s in enumerate(chosen, 1):
            print(f"\n{i}. {s.title}", flush=True)
            d = Path(tmp) / s.name
            d.mkdir()
            headlines.append((s.title, s.run(Context(args, d))))
    print(f"\nsummary ({machine_line()})")
    for title, lines in headlines:
        for line in lines:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.modules.setdefault("bench", sys.modules[__name__])  # the sections import this module
    sys.exit(main())
