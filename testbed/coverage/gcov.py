"""Line and branch coverage on a gcov kernel (the ``coverage`` profile: CONFIG_GCOV_KERNEL
and GCOV_PROFILE for the P2P files): the guest's .gcda files, turned into line counts on
the host by gcov itself (``gcov --json-format``) with the build tree's .gcno files.

    plan = plan_gcov(source, files, defs)        # None: not a gcov kernel
    collector = GcovCollector(guest, plan)
    collector.start()                            # counters to zero, before the workloads
    collector.checkpoint("p2p-copy")             # counts now minus counts before: its lines
    files = collector.files()                    # {path: FileCov} with lines and branches

The gcov that reads the data must be the one of the gcc that built the kernel (the .gcno
format changes between versions): the build's CONFIG_CC_VERSION_TEXT names it, and a
kernel built by another gcc is refused with both versions named.  Counts are never reset
after the start: each checkpoint takes the difference to the previous one, so nothing that
ran between a read and a reset is lost.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TestbedError, ToolMissing, UsageError
from ..guest.protocol import GuestLike
from ..guest.tool import GUEST_TOOL
from .ctags import Definition
from .model import EXECUTED, NOT_EXECUTED, UNTRACEABLE, FileCov, FunctionCov
from .source import SourceTree

log = logging.getLogger(__name__)
COLLECT_TIMEOUT = 300.0


class GcovError(TestbedError):
    kind = "gcov"


@dataclass(frozen=True)
class GcovPlan:
    build: Path  # the build tree (.gcno beside each profiled object)
    root: Path  # the source tree
    files: tuple[str, ...]  # the requested files that were compiled with coverage
    gcov: str  # the gcov of the gcc that built the kernel


def compiler_version(config_text: str) -> str | None:
    """The gcc version a kernel's .config says built it.

    >>> compiler_version('CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14+deb12u1) 12.2.0"')
    '12.2.0'
    >>> compiler_version('CONFIG_CC_VERSION_TEXT="clang version 18.1.8"') is None
    True
    """
    m = re.search(r'^CONFIG_CC_VERSION_TEXT="gcc[^"]*?(\d+\.\d+\.\d+)"', config_text, re.M)
    return m[1] if m else None


def find_gcov(version: str) -> str:
    """The gcov of gcc ``version`` (gcov-<major> or gcov), or UsageError."""
    major = version.split(".")[0]
    seen = []
    for name in (f"gcov-{major}", "gcov"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        first = out.splitlines()[0] if out else "?"
        if re.search(rf"\b{re.escape(version)}\b", first):
            return path
        seen.append(f"{name}: {first}")
    if not seen:
        raise ToolMissing("gcov", package=f"gcc-{major}")
    raise UsageError(f"the kernel was built by gcc {version}; no matching gcov here "
                     f"({'; '.join(seen)}): install gcc-{major} (gcov-{major})")


def plan_gcov(source: SourceTree, files: list[str]) -> GcovPlan | None:
    """The gcov plan for a kernel whose build tree has gcov notes for some of ``files``."""
    build = source.build
    if build is None or not (build / ".config").is_file():
        return None
    config = (build / ".config").read_text(errors="replace")
    if "\nCONFIG_GCOV_KERNEL=y" not in "\n" + config:
        return None
    profiled = tuple(f for f in files if (build / f).with_suffix(".gcno").is_file())
    if not profiled:
        return None
    version = compiler_version(config)
    if version is None:
        raise UsageError(f"{build}/.config: CONFIG_CC_VERSION_TEXT names no gcc; gcov data "
                         "can only be read with the gcov of the compiler that built it")
    return GcovPlan(build, source.root, profiled, find_gcov(version))


@dataclass
class FileCounts:
    """gcov's view of one source file (cumulative since the reset)."""

    lines: dict[int, int] = field(default_factory=dict)
    branches: dict[int, list[int]] = field(default_factory=dict)
    functions: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # start, end, n


def parse_gcov_json(text: str, rel: str) -> FileCounts:
    """gcov --json-format --stdout output -> the counts of source file ``rel`` (the other
    files in it are headers its functions inlined)."""
    out = FileCounts()
    for line in text.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        for f in doc.get("files", []):
            name = str(f.get("file", ""))
            if not (name == rel or name.endswith("/" + rel)):
                continue
            for fn in f.get("functions", []):
                prev = out.functions.get(fn["name"], (0, 0, 0))
                out.functions[fn["name"]] = (int(fn["start_line"]), int(fn["end_line"]),
                                             prev[2] + int(fn["execution_count"]))
            for ln in f.get("lines", []):
                n = int(ln["line_number"])
                out.lines[n] = out.lines.get(n, 0) + int(ln["count"])
                counts = [int(b["count"]) for b in ln.get("branches", [])]
                if counts:
                    old = out.branches.get(n)
                    out.branches[n] = [a + b for a, b in zip(old, counts)] \
                        if old and len(old) == len(counts) else counts
    return out


def run_gcov(plan: GcovPlan, tar_bytes: bytes) -> dict[str, FileCounts]:
    """The counts of every planned file, from a tar of .gcda files (paths relative to the
    build tree), by gcov in a scratch directory (the build tree is never written)."""
    out: dict[str, FileCounts] = {}
    with tempfile.TemporaryDirectory(prefix="testbed-gcov-") as tmp:
        work = Path(tmp)
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:*") as tar:
            for member in tar.getmembers():
                target = (work / member.name).resolve()
                if not member.isfile() or not target.is_relative_to(work.resolve()) or \
                        not member.name.endswith(".gcda"):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is not None:
                    target.write_bytes(src.read())
        for rel in plan.files:
            obj_dir = work / Path(rel).parent
            stem = Path(rel).stem
            obj_dir.mkdir(parents=True, exist_ok=True)  # no .gcda: gcov counts nothing run
            (obj_dir / f"{stem}.gcno").symlink_to(plan.build / Path(rel).with_suffix(".gcno"))
            argv = [plan.gcov, "--json-format", "--stdout", "--branch-counts",
                    "--branch-probabilities", "--object-directory", str(obj_dir),
                    Path(rel).name]
            try:
                proc = subprocess.run(argv, cwd=obj_dir, capture_output=True, text=True,
                                      timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise GcovError(f"gcov {rel}: {exc}") from None
            if proc.returncode != 0 or not proc.stdout.strip():
                raise GcovError(f"gcov {rel} failed: {proc.stderr.strip()[-300:]}")
            out[rel] = parse_gcov_json(proc.stdout, rel)
    return out


def _minus(now: FileCounts, before: FileCounts | None) -> FileCounts:
    if before is None:
        return now
    return FileCounts(
        {n: c - before.lines.get(n, 0) for n, c in now.lines.items()},
        {n: [a - b for a, b in zip(cs, before.branches.get(n, [0] * len(cs)))]
         for n, cs in now.branches.items()},
        {k: (s, e, c - before.functions.get(k, (0, 0, 0))[2])
         for k, (s, e, c) in now.functions.items()})


class GcovCollector:
    """A guest's gcov counts over one run, per cell."""

    def __init__(self, guest: GuestLike, plan: GcovPlan):
        self.guest = guest
        self.plan = plan
        self.before: dict[str, FileCounts] = {}  # the guest's counters at the last read
        self.total: dict[str, FileCounts] = {}  # the sum of what every cell ran
        self.cell_lines: dict[str, dict[str, set[int]]] = {}  # file -> cell -> lines
        self.cell_funcs: dict[str, dict[str, dict[str, int]]] = {}  # file -> fn -> cell -> n
        self.cells: list[str] = []
        self.problems: list[str] = []
        self.active = False

    def _tool(self, action: str) -> dict[str, Any]:
        res = self.guest.run(shlex.join([GUEST_TOOL, "gcov", action, "--root",
                                         str(self.plan.build)]), timeout=COLLECT_TIMEOUT)
        try:
            doc = json.loads(res.stdout)
        except ValueError:
            raise GcovError(f"gcov {action}: {res.describe()[:300]}") from None
        if not doc.get("ok"):
            raise GcovError(f"gcov {action}: {doc.get('why')}")
        return doc

    def start(self) -> None:
        """Counters to zero (the boot's probing is not the workloads')."""
        doc = self._tool("reset")
        if not doc.get("found"):
            self.problems.append(f"the guest has no gcov data for {self.plan.build}")
        self.before = {}
        self.active = True

    def checkpoint(self, cell: str) -> None:
        if not self.active:
            return
        doc = self._tool("collect")
        now = run_gcov(self.plan, base64.b64decode(doc["tar"]))
        if cell not in self.cells:
            self.cells.append(cell)
        for rel, counts in now.items():
            delta = _minus(counts, self.before.get(rel))
            tot = self.total.setdefault(rel, FileCounts())
            for n, c in delta.lines.items():
                tot.lines[n] = tot.lines.get(n, 0) + c
                if c > 0:
                    self.cell_lines.setdefault(rel, {}).setdefault(cell, set()).add(n)
            for n, cs in delta.branches.items():
                old = tot.branches.get(n)
                tot.branches[n] = [a + b for a, b in zip(old, cs)] if old else list(cs)
            for name, (s, e, c) in delta.functions.items():
                prev = tot.functions.get(name, (s, e, 0))
                tot.functions[name] = (s, e, prev[2] + c)
                if c > 0:
                    per = self.cell_funcs.setdefault(rel, {}).setdefault(name, {})
                    per[cell] = per.get(cell, 0) + c
        self.before = now

    def suspend(self, cell: str) -> None:
        self.checkpoint(cell)
        self.active = False

    def resume(self) -> None:
        """After a restart the counters begin again from zero (after a reset)."""
        self.start()

    def files(self, defs: dict[str, list[Definition]]) -> dict[str, FileCov]:
        """Per file: gcov's functions and lines, with ctags' definitions for the names gcov
        does not have (no out-of-line code: inlined or not built)."""
        out: dict[str, FileCov] = {}
        for rel in self.plan.files:
            counts = self.total.get(rel, FileCounts())
            f = FileCov(rel, lines=dict(counts.lines), branches=dict(counts.branches),
                        line_cells=self.cell_lines.get(rel, {}))
            for name, (s, e, c) in counts.functions.items():
                f.functions[name] = FunctionCov(name, s, e, EXECUTED if c > 0 else NOT_EXECUTED,
                                                calls=c,
                                                cells=self.cell_funcs.get(rel, {}).get(name, {}))
            for d in defs.get(rel, []):
                if d.name not in f.functions:
                    f.functions[d.name] = FunctionCov(
                        d.name, d.start, d.end, UNTRACEABLE,
                        "no code of its own in the gcov notes: inlined, or not built")
            if rel not in self.total:
                f.note = "no gcov data was collected for this file"
            out[rel] = f
        return out
