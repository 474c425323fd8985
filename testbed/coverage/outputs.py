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

FILES = ("coverage.json", "coverage.info", "coverage.xml")


def write_coverage(out: Path, cov: Coverage, name: str,
                   extra: dict[str, Any] | None = None) -> None:
    doc = cov.to_json()
    if extra:
        doc.update(extra)
    atomic_write(out / "coverage.json", json.dumps(doc, indent=1) + "\n")
    atomic_write(out / "coverage.info", to_lcov(cov, cov.root, name))
    atomic_write(out / "coverage.xml", to_cobertura(cov, cov.root, int(time.time())))


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
