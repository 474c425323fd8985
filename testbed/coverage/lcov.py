"""An lcov tracefile (``coverage.info``), as ``lcov``/``genhtml`` and CI engines read it.

Functions that could not be traced are left out (they were not measured); in function
mode there are no ``DA`` records (no line was measured).

    >>> from .model import Coverage, FileCov, FunctionCov
    >>> cov = Coverage("function", "src", files={"a.c": FileCov("a.c", {
    ...     "f": FunctionCov("f", 3, 9, "executed", calls=2)})})
    >>> print(to_lcov(cov, "/src", "run"), end="")
    TN:run
    SF:/src/a.c
    FN:3,f
    FNDA:2,f
    FNF:1
    FNH:1
    end_of_record
"""

from __future__ import annotations

import re

from .model import UNTRACEABLE, Coverage


def test_name(text: str) -> str:
    """lcov's TN is a C identifier."""
    return re.sub(r"\W", "_", text) or "testbed"


def to_lcov(cov: Coverage, root: str, name: str) -> str:
    out: list[str] = []
    for path, f in sorted(cov.files.items()):
        out.append(f"TN:{test_name(name)}")
        out.append(f"SF:{root.rstrip('/')}/{path}")
        measured = sorted((fn for fn in f.functions.values() if fn.status != UNTRACEABLE),
                          key=lambda fn: (fn.start, fn.name))
        for fn in measured:
            out.append(f"FN:{fn.start},{fn.name}")
        for fn in measured:
            out.append(f"FNDA:{fn.calls},{fn.name}")
        out.append(f"FNF:{len(measured)}")
        out.append(f"FNH:{sum(1 for fn in measured if fn.calls > 0)}")
        if f.branches is not None:
            found = hit = 0
            for line, counts in sorted(f.branches.items()):
                executed = (f.lines or {}).get(line, 0) > 0
                for i, c in enumerate(counts):
                    out.append(f"BRDA:{line},0,{i},{c if executed else '-'}")
                    found += 1
                    hit += c > 0
            out.append(f"BRF:{found}")
            out.append(f"BRH:{hit}")
        if f.lines is not None:
            for line, c in sorted(f.lines.items()):
                out.append(f"DA:{line},{c}")
            out.append(f"LF:{len(f.lines)}")
            out.append(f"LH:{sum(1 for c in f.lines.values() if c > 0)}")
        out.append("end_of_record")
    return "\n".join(out) + ("\n" if out else "")
