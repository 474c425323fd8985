"""A coverage's files: coverage.json (per file: functions and lines executed, traceable,
uncovered ranges, and which cell ran what), coverage.info (lcov) and coverage.xml
(Cobertura)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..util.files import atomic_write
from .cobertura import to_cobertura
from .lcov import to_lcov
from .model import Coverage
from .patch import Patch, PatchCoverage, patch_coverage

FILES = ("coverage.json", "coverage.info", "coverage.xml")


def write_coverage(out: Path, cov: Coverage, name: str, pc: PatchCoverage | None = None
                   ) -> None:
    """The coverage's files; with a patch, its coverage too (patch-coverage.json and .txt)
    and the patch itself in coverage.json (so a matrix judges it on the sum)."""
    doc = cov.to_json()
    if pc is not None and pc.patch is not None:
        doc["patch"] = {**pc.patch.to_json(), "min": pc.minimum}
        atomic_write(out / "patch-coverage.json", json.dumps(pc.to_json(), indent=1) + "\n")
        atomic_write(out / "patch-coverage.txt", pc.summary() + "\n")
    atomic_write(out / "coverage.json", json.dumps(doc, indent=1) + "\n")
    atomic_write(out / "coverage.info", to_lcov(cov, cov.root, name))
    atomic_write(out / "coverage.xml", to_cobertura(cov, cov.root, int(time.time())))


def read_patch(path: Path) -> tuple[Patch, float | None] | None:
    """The patch (and its minimum) a coverage.json was judged on, if any."""
    try:
        d = json.loads(path.read_text()).get("patch")
        return (Patch.from_json(d), d.get("min")) if d else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_coverage(path: Path) -> Coverage | None:
    """A coverage.json read back (None when there is none or it is not one)."""
    try:
        return Coverage.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def brief(cov: Coverage) -> dict[str, Any]:
    """What results.json says about the coverage (the rest is in coverage.json)."""
    return {"mode": cov.mode, "source": cov.source, "cells": cov.cells, "lost": cov.lost,
            "problems": cov.problems, "totals": cov.totals(),
            "files": {p: f.counts() for p, f in sorted(cov.files.items())}}


def judge_again(path: Path, cov: Coverage) -> PatchCoverage | None:
    """The patch a coverage.json was judged on, judged on ``cov`` (a matrix's sum)."""
    found = read_patch(path)
    return patch_coverage(found[0], cov, found[1]) if found else None
