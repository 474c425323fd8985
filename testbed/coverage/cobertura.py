"""A Cobertura XML report (``coverage.xml``), the format CI engines (GitLab, Jenkins,
Azure) display.

One package per directory, one class per source file, one method per traceable function.
With line coverage (gcov) the lines are the executable lines; in function mode each
function is one line, its first, so the rates there are function rates.

    >>> from .model import Coverage, FileCov, FunctionCov
    >>> cov = Coverage("function", "src", files={"drivers/pci/p2pdma.c": FileCov(
    ...     "drivers/pci/p2pdma.c", {"f": FunctionCov("f", 3, 9, "executed", calls=2),
    ...                              "g": FunctionCov("g", 11, 12, "not-executed")})})
    >>> xml = to_cobertura(cov, "/src", timestamp=0)
    >>> 'line-rate="0.5"' in xml and 'filename="drivers/pci/p2pdma.c"' in xml
    True
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET

from .model import UNTRACEABLE, Coverage, FileCov


def _rate(hit: int, total: int) -> str:
    return f"{hit / total:.4g}" if total else "1"


def _lines(f: FileCov) -> dict[int, int]:
    """line -> hits: the executable lines, or each traceable function's first line."""
    if f.lines is not None:
        return dict(f.lines)
    return {fn.start: fn.calls for fn in f.functions.values() if fn.status != UNTRACEABLE}


def _branch_attrs(f: FileCov, line: int) -> dict[str, str]:
    counts = (f.branches or {}).get(line)
    if not counts:
        return {"branch": "false"}
    taken = sum(1 for c in counts if c > 0)
    return {"branch": "true",
            "condition-coverage": f"{100 * taken // len(counts)}% ({taken}/{len(counts)})"}


def to_cobertura(cov: Coverage, root: str, timestamp: int) -> str:
    all_lines = {p: _lines(f) for p, f in cov.files.items()}
    hit = sum(1 for ls in all_lines.values() for c in ls.values() if c > 0)
    total = sum(len(ls) for ls in all_lines.values())
    br = [c for f in cov.files.values() for cs in (f.branches or {}).values() for c in cs]
    top = ET.Element("coverage", {
        "line-rate": _rate(hit, total), "branch-rate": _rate(sum(c > 0 for c in br), len(br)),
        "lines-covered": str(hit), "lines-valid": str(total),
        "branches-covered": str(sum(c > 0 for c in br)), "branches-valid": str(len(br)),
        "complexity": "0", "version": "p2pdma-testbed", "timestamp": str(timestamp)})
    ET.SubElement(ET.SubElement(top, "sources"), "source").text = root
    packages = ET.SubElement(top, "packages")
    by_dir: dict[str, list[str]] = {}
    for path in sorted(cov.files):
        by_dir.setdefault(posixpath.dirname(path), []).append(path)
    for d, paths in by_dir.items():
        ph = sum(1 for p in paths for c in all_lines[p].values() if c > 0)
        pt = sum(len(all_lines[p]) for p in paths)
        pkg = ET.SubElement(packages, "package", {"name": d.replace("/", ".") or ".",
                                                  "line-rate": _rate(ph, pt),
                                                  "branch-rate": "0", "complexity": "0"})
        classes = ET.SubElement(pkg, "classes")
        for path in paths:
            f = cov.files[path]
            lines = all_lines[path]
            fb = [c for cs in (f.branches or {}).values() for c in cs]
            cls = ET.SubElement(classes, "class", {
                "name": posixpath.basename(path), "filename": path,
                "line-rate": _rate(sum(c > 0 for c in lines.values()), len(lines)),
                "branch-rate": _rate(sum(c > 0 for c in fb), len(fb)), "complexity": "0"})
            methods = ET.SubElement(cls, "methods")
            for fn in sorted(f.functions.values(), key=lambda x: x.start):
                if fn.status == UNTRACEABLE:
                    continue
                mine = {n: c for n, c in lines.items() if fn.start <= n <= fn.end}
                m = ET.SubElement(methods, "method", {
                    "name": fn.name, "signature": "",
                    "line-rate": _rate(sum(c > 0 for c in mine.values()), len(mine)),
                    "branch-rate": "0", "complexity": "0"})
                ml = ET.SubElement(m, "lines")
                for n, c in sorted(mine.items()):
                    ET.SubElement(ml, "line", {"number": str(n), "hits": str(c),
                                               **_branch_attrs(f, n)})
            cl = ET.SubElement(cls, "lines")
            for n, c in sorted(lines.items()):
                ET.SubElement(cl, "line", {"number": str(n), "hits": str(c),
                                           **_branch_attrs(f, n)})
    ET.indent(top)
    return '<?xml version="1.0" ?>\n' + ET.tostring(top, encoding="unicode") + "\n"
