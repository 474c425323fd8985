"""Merging the shards of one matrix plan into one matrix: one matrix.json / .md / .html
with the regressions computed across the whole, and every run directory beside it.

Shards of different plans are refused, as are a shard given twice and a missing one: a
merged matrix is the whole plan or nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError
from .cells import Matrix
from .render import write_matrix
from .shard import parse_shard


def _load(d: Path) -> dict[str, Any]:
    f = d / "matrix.json"
    if not f.is_file():
        raise UsageError(f"{d}: no matrix.json (not the output directory of a matrix shard)")
    try:
        data = json.loads(f.read_text())
        if not isinstance(data, dict) or "cells" not in data or "runs" not in data:
            raise ValueError("not a matrix")
    except ValueError as exc:
        raise UsageError(f"{f}: unreadable ({exc})") from None
    return data


def merge(dirs: Sequence[Path], out: Path) -> Matrix:
    """Merge the shard directories ``dirs`` into ``out`` (an empty or new directory)."""
    if not dirs:
        raise UsageError("matrix merge: give the shard directories to merge")
    docs = [(Path(d), _load(Path(d))) for d in dirs]
    plans = {data.get("plan_id") or "?" for _, data in docs}
    if len(plans) != 1 or "?" in plans:
        raise UsageError("matrix merge: the directories come from different plans ("
                         + ", ".join(f"{d}: {data.get('plan_id') or 'no plan id'}"
                                     for d, data in docs) + ")")
    seen: dict[int, Path] = {}
    total = None
    for d, data in docs:
        if not data.get("shard"):
            raise UsageError(f"matrix merge: {d} is a whole matrix, not a shard")
        k, n = parse_shard(str(data["shard"]))
        if total is not None and n != total:
            raise UsageError(f"matrix merge: {d} is shard {k}/{n}, the others are of {total}")
        total = n
        if k in seen:
            raise UsageError(f"matrix merge: shard {k}/{n} given twice ({seen[k]} and {d})")
        seen[k] = d
    assert total is not None
    missing = [f"{k}/{total}" for k in range(1, total + 1) if k not in seen]
    if missing:
        raise UsageError(f"matrix merge: missing shard(s) {', '.join(missing)} of plan "
                         f"{plans.pop()}")
    parts = [(d, Matrix.from_json(data)) for d, data in docs]
    first = parts[0][1]
    merged = Matrix(kernels=[dict(k) for k in first.kernels], topologies=list(first.topologies),
                    started=min(m.started for _, m in parts), plan_id=first.plan_id,
                    seconds=max(m.seconds for _, m in parts),
                    planned={t: list(ws) for t, ws in first.planned.items()},
                    qemus=[dict(q) for q in first.qemus], mbps_tolerance=first.mbps_tolerance)
    for d, m in sorted(parts, key=lambda dm: parse_shard(str(dm[1].shard))[0]):
        merged.boots += m.boots
        merged.runs += m.runs
        merged.cells += m.cells
        for mine, theirs in zip(merged.kernels, m.kernels):
            for key in ("release", "p2pdma"):
                if mine.get(key) is None and theirs.get(key) is not None:
                    mine[key] = theirs[key]
        for entry in d.iterdir():  # the run directories (everything but the matrix files)
            if entry.is_dir():
                shutil.copytree(entry, out / entry.name, dirs_exist_ok=True, symlinks=True)
    merged.sort()
    write_matrix(merged, out)
    return merged
