"""Show the coverage a run or a matrix measured, against the goals, and judge a patch on it
without running anything again.

    testbed coverage runs/20261203-switch-cmb                # per file, and the goals
    testbed coverage runs/m1 --patch-coverage ../fix.patch --min-patch-coverage 80

DIR is the output directory of `testbed run --coverage` or `testbed matrix --coverage`
(its coverage.json).  Exit status: 0, 1 when --min-patch-coverage is not met, 2 on bad
input (no coverage in DIR, a patch that is not one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..coverage.goals import judge_goals
from ..coverage.model import Coverage
from ..coverage.patch import load_patch, patch_coverage
from ..errors import UsageError
from ..util.table import format_table
from . import options

HELP = "show a run's or a matrix's coverage and the goals; judge a patch on it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path, metavar="DIR",
                   help="output directory of a run or matrix with --coverage")
    p.add_argument("--patch-coverage", metavar="A..B|FILE.patch",
                   help="judge this patch on the coverage (a git range in the kernel source)")
    p.add_argument("--min-patch-coverage", type=options.percent, metavar="N",
                   help="exit 1 when less than N%% of the patch's changed lines ran")
    p.add_argument("--coverage-source", type=Path, metavar="DIR",
                   help="the kernel source tree for a git range (default: the coverage's)")


def load(directory: Path) -> dict[str, Coverage]:
    """{label: coverage} of a run (one) or a matrix (one per kernel)."""
    f = directory / "coverage.json"
    try:
        doc = json.loads(f.read_text())
    except OSError:
        raise UsageError(f"{directory}: no coverage.json (run or matrix with --coverage)") \
            from None
    except ValueError as exc:
        raise UsageError(f"{f}: unreadable ({exc})") from None
    try:
        if "kernels" in doc:
            return {k: Coverage.from_json(v) for k, v in doc["kernels"].items()}
        return {doc.get("kernel") or "run": Coverage.from_json(doc)}
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{f}: not a coverage document ({exc})") from None


def table(cov: Coverage) -> str:
    rows = [["FILE", "FUNCTIONS run/traceable/defined", "LINES run/executable", "NOTE"]]
    for path, f in sorted(cov.files.items()):
        c = f.counts()
        fn = c["functions"]
        ln = c.get("lines")
        rows.append([path, f"{fn['executed']}/{fn['traceable']}/{fn['defined']}",
                     f"{ln['executed']}/{ln['executable']}" if ln else "-", f.note[:60]])
    return format_table(rows)


def run(args: argparse.Namespace) -> int:
    if args.min_patch_coverage is not None and not args.patch_coverage:
        raise UsageError("--min-patch-coverage: give the patch with --patch-coverage")
    covs = load(args.directory)
    status = 0
    carried = 0
    for label, cov in covs.items():
        print(f"== {label}: {cov.mode} coverage from {cov.source}; cells: "
              f"{', '.join(cov.cells) or 'none'}")
        print(table(cov))
        for p in cov.problems:
            print(f"note: {p}")
        goals = judge_goals(cov)
        if goals:
            print("goals (functions executed / measurable):")
            for g in goals:
                print("  " + g.line())
        if args.patch_coverage:
            root = args.coverage_source or (Path(cov.root) if cov.root else None)
            pc = patch_coverage(load_patch(args.patch_coverage, root), cov,
                                args.min_patch_coverage)
            print(f"patch coverage: {pc.summary()}")
            carried += pc.carried
            if pc.failed and pc.carried:
                print(f"FAIL: {label}: {pc.failed}")
                status = 1
    if args.min_patch_coverage is not None and not carried:
        print("FAIL: no kernel's source carries the patch")
        status = 1
    return status
