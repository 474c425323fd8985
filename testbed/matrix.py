"""A topology × kernel matrix: every workload on every topology with every kernel.

    plan = plan_matrix(["switch-cmb"], ["default", "/build/linux"], workloads=["p2p-copy"])
    matrix = run_matrix(plan, out=Path("runs/m1"), progress=print)
    matrix.status       # 1 when a later kernel regressed against the first (the baseline)

Each (topology, kernel) run is an ordinary ``testbed run`` (:func:`run_topology`)
with its own results directory under the matrix's output directory; the runs are
sequential (one guest at a time: under TCG two guests on two cores only slow
each other down). The matrix keeps one *cell* per topology × kernel × pair
(workload, provider, client): predicted, observed, data_verified, MB/s.

A cell is a **regression** when the baseline kernel's cell for the same row was
``ok`` and the later kernel's is anything else (``rejected``, ``iommu-fault``,
``unsupported``, ``error``, missing because the run broke), or when the
baseline's data was verified and the later kernel's is not.

Files: ``matrix.json``, ``matrix.md``, ``matrix.html`` and one directory per
run, ``<topology>/<kernel>/`` (results.json, console.log, dmesg.txt, ...).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import jinja2

from .errors import UsageError

TEMPLATES = Path(__file__).resolve().parent / "templates"

# what a cell can show, in the order a legend lists them
VERDICTS = ("ok", "rejected", "iommu-fault", "unsupported", "error", "missing")


# -- the plan: everything checked before anything boots ------------------------------

@dataclass
class KernelEntry:
    label: str
    spec: str
    kernel: object | None  # testbed.kernels.CustomKernel, or None for the image's
    description: str
    release: str | None = None
    p2pdma: bool | None = None


@dataclass
class MatrixPlan:
    topologies: list  # testbed.spec.Topology
    kernels: list[KernelEntry]
    workloads: tuple[str, ...] = ()
    size: int = 1 << 20
    timeout: float = 120.0
    accel: str | None = None
    boot_retries: int = 1  # retries of a run whose boot timed out (not: panicked)


def boot_timed_out(error: str) -> bool:
    """True for a boot that ran out of time without a console failure line.

    >>> boot_timed_out("switch-cmb: the guest never printed 'x' within the boot timeout")
    True
    >>> boot_timed_out("switch-cmb: the guest failed to boot: Kernel panic - not syncing")
    False
    """
    first = (error or "").splitlines()[0] if error else ""
    return "within the boot timeout" in first or "no SSH within" in first


def _disambiguate(entries: list[KernelEntry]) -> None:
    """Make labels unique: ``7.3.4 (build)`` / ``7.3.4 (build-patched)``."""
    groups: dict[str, list[KernelEntry]] = {}
    for e in entries:
        groups.setdefault(e.label, []).append(e)
    for label, group in groups.items():
        if len(group) < 2:
            continue
        parts = [Path(str(getattr(e.kernel, "image_file", e.spec))).resolve().parts
                 for e in group]
        n = min(len(p) for p in parts)
        idx = next((i for i in range(n) if len({p[i] for p in parts}) > 1), None)
        for i, e in enumerate(group):
            tag = parts[i][idx] if idx is not None else f"#{i + 1}"
            e.label = f"{label} ({tag})"
        if len({e.label for e in group}) < len(group):
            for i, e in enumerate(group):
                e.label = f"{label} #{i + 1}"


def plan_matrix(topologies: list[str], kernels: list[str], workloads: list[str] = (),
                size: int = 1 << 20, timeout: float = 120.0,
                accel: str | None = None) -> MatrixPlan:
    """Load every topology and resolve every kernel; UsageError on bad input."""
    from .kernels import resolve_kernel
    from .runner import RunOptions, plan
    from .spec import load_topology

    if not topologies:
        raise UsageError("--topology: give at least one topology")
    if not kernels:
        raise UsageError("--kernel: give at least one kernel (the first is the baseline; "
                         "'default' is the image's)")
    topos = []
    seen_topos: dict[str, str] = {}
    for t in topologies:
        topo = load_topology(t)
        key = str(topo.source.resolve()) if topo.source else topo.name
        if key in seen_topos or topo.name in {x.name for x in topos}:
            raise UsageError(f"--topology {t}: given twice")
        seen_topos[key] = t
        topos.append(topo)
    entries: list[KernelEntry] = []
    identities: dict[str, str] = {}
    for spec in kernels:
        k = resolve_kernel(spec)
        ident = "default" if k is None else k.identity()
        if ident in identities:
            raise UsageError(f"--kernel {spec}: the same kernel as --kernel {identities[ident]} "
                             "(each kernel once; the first is the baseline)")
        identities[ident] = spec
        if k is None:
            entries.append(KernelEntry("default", "default", None, "the image's kernel"))
        else:
            entries.append(KernelEntry(k.label, spec, k, k.description, k.release, k.p2pdma))
    _disambiguate(entries)
    for topo in topos:
        plan(topo, RunOptions(workloads=tuple(workloads)))  # unknown workload -> UsageError
    return MatrixPlan(topos, entries, tuple(workloads), size, timeout, accel)


# -- cells, regressions ---------------------------------------------------------------

@dataclass
class Cell:
    topology: str
    kernel: str
    workload: str
    provider: str | None
    client: str | None
    predicted: str | None = None
    observed: str | None = None
    data_verified: bool | None = None
    mb_per_s: float | None = None
    detail: str = ""

    @property
    def row(self) -> tuple[str, str, str, str]:
        return (self.topology, self.workload, self.provider or "", self.client or "")

    @property
    def verdict(self) -> str:
        """What the cell shows: the observed verdict; informational rows: ok/error by data."""
        if self.observed:
            return self.observed
        if self.predicted is None:
            if self.data_verified is True:
                return "ok"
            return "missing" if self.data_verified is None and not self.detail else "error"
        return "missing"

    @property
    def as_predicted(self) -> bool | None:
        if self.predicted is None or self.observed is None:
            return None
        return self.predicted == self.observed

    def to_json(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d


@dataclass
class RunEntry:
    topology: str
    kernel: str
    directory: str
    status: int
    error: str = ""
    release: str | None = None
    p2pdma: bool | None = None
    boot_seconds: float = 0.0
    seconds: float = 0.0
    first_attempt_error: str = ""  # a boot timeout that was retried


@dataclass
class Regression:
    topology: str
    workload: str
    provider: str | None
    client: str | None
    kernel: str
    baseline_kernel: str
    was: str
    now: str
    reason: str

    def __str__(self) -> str:
        pair = f"{self.provider or '?'} -> {self.client or '?'}"
        return (f"{self.topology} {self.workload} {pair}: {self.baseline_kernel} {self.was}, "
                f"{self.kernel} {self.now} ({self.reason})")


@dataclass
class Matrix:
    kernels: list[dict]          # label, spec, description, release, p2pdma
    topologies: list[str]
    runs: list[RunEntry] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0

    @property
    def labels(self) -> list[str]:
        return [k["label"] for k in self.kernels]

    @property
    def baseline(self) -> str:
        return self.labels[0]

    def rows(self) -> list[tuple[str, str, str, str]]:
        """Every row (topology, workload, provider, client), in first-seen order per topology."""
        seen: dict[tuple, None] = {}
        for topo in self.topologies:
            for c in self.cells:
                if c.topology == topo:
                    seen.setdefault(c.row, None)
        return list(seen)

    def cell(self, row: tuple, kernel: str) -> Cell | None:
        """The cell of ``row`` for ``kernel``; when that run happened but has no such
        pair (it broke, or the pair vanished), a placeholder saying so; None when the
        run has not happened (yet)."""
        for c in self.cells:
            if c.row == row and c.kernel == kernel:
                return c
        run = self.run(row[0], kernel)
        if run is None:
            return None
        if run.error:
            return Cell(row[0], kernel, row[1], row[2] or None, row[3] or None, None, "error",
                        None, None, f"the run broke: {run.error.splitlines()[0]}")
        return Cell(row[0], kernel, row[1], row[2] or None, row[3] or None, None, "missing",
                    None, None, "no such pair in this run")

    def run(self, topology: str, kernel: str) -> RunEntry | None:
        for r in self.runs:
            if r.topology == topology and r.kernel == kernel:
                return r
        return None

    def regressions(self) -> list[Regression]:
        return find_regressions(self)

    @property
    def incomplete(self) -> list[RunEntry]:
        """Runs that broke before their workloads finished (boot failure, ...)."""
        return [r for r in self.runs if r.error]

    @property
    def status(self) -> int:
        """1 when any cell regressed against the baseline or a run broke; else 0."""
        return 1 if self.regressions() or self.incomplete else 0

    def to_json(self) -> dict:
        regs = self.regressions()
        return {
            "started": self.started, "seconds": round(self.seconds, 1),
            "baseline": self.baseline, "kernels": self.kernels, "topologies": self.topologies,
            "runs": [asdict(r) for r in self.runs],
            "cells": [c.to_json() for row in self.rows() for label in self.labels
                      if (c := self.cell(row, label)) is not None],
            "regressions": [asdict(r) for r in regs],
            "incomplete": [f"{r.topology} × {r.kernel}: {r.error.splitlines()[0]}"
                           for r in self.incomplete],
            "status": self.status,
        }


def _worse(base: Cell, later: Cell) -> str | None:
    """Why ``later`` is a regression against ``base`` (None: it is not)."""
    detail = f": {later.detail.splitlines()[0]}" if later.detail else ""
    informational = base.observed is None and later.observed is None  # e.g. host-baseline
    if base.verdict == "ok" and later.verdict != "ok" and not informational:
        return f"was ok, now {later.verdict}{detail}"
    if base.data_verified is True and later.data_verified is not True:
        return f"data no longer verified{detail}"
    return None


def find_regressions(m: Matrix) -> list[Regression]:
    out = []
    if not m.kernels:
        return out
    base = m.baseline
    for row in m.rows():
        b = m.cell(row, base)
        if b is None:
            continue
        for label in m.labels[1:]:
            later = m.cell(row, label)
            if later is None:
                continue  # that run has not happened
            why = _worse(b, later)
            if why:
                out.append(Regression(row[0], row[1], row[2] or None, row[3] or None, label,
                                      base, b.verdict, later.verdict, why))
    return out


def cells_from_result(topology: str, kernel: str, result) -> list[Cell]:
    """The cells of one run: every judged record and every record with a pair."""
    cells = []
    for r in result.workloads:
        if r.name in ("inventory", "exec") or r.command is not None:
            continue
        if not (r.judged or r.provider or r.client):
            continue
        cells.append(Cell(topology, kernel, r.name, r.provider, r.client, r.predicted,
                          r.observed, r.data_verified, r.mb_per_s, r.detail or ""))
    return cells


def add_run(m: Matrix, topology: str, kernel: str, result, directory: Path | str) -> None:
    """Record one run's result (a :class:`testbed.results.model.RunResult`)."""
    kinfo = result.kernel or {}
    m.runs.append(RunEntry(topology, kernel, str(directory), result.status, result.error or "",
                           kinfo.get("release"), kinfo.get("p2pdma"),
                           round(result.boot_seconds, 2), round(result.seconds, 2)))
    m.cells += cells_from_result(topology, kernel, result)


# -- rendering --------------------------------------------------------------------------

def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]))
    env.filters["mbps"] = lambda v: "" if v is None else f"{v:.1f} MB/s"
    return env


def _view(m: Matrix) -> dict:
    regs = m.regressions()
    reg_keys = {(r.topology, r.workload, r.provider or "", r.client or "", r.kernel)
                for r in regs}
    rows = []
    for row in m.rows():
        cells = []
        for label in m.labels:
            c = m.cell(row, label)
            cells.append({"cell": c, "kernel": label,
                          "regression": (*row, label) in reg_keys})
        rows.append({"topology": row[0], "workload": row[1],
                     "pair": f"{row[2]} → {row[3]}" if row[2] or row[3] else "",
                     "predicted": next((c["cell"].predicted for c in cells
                                        if c["cell"] and c["cell"].predicted), None),
                     "cells": cells})
    run_dirs = {(r.topology, r.kernel): r.directory for r in m.runs}
    return {"m": m, "rows": rows, "regressions": regs, "incomplete": m.incomplete,
            "status": m.status, "verdicts": VERDICTS, "run_dirs": run_dirs}


def render_md(m: Matrix) -> str:
    return _env().get_template("matrix.md.j2").render(**_view(m))


def render_html(m: Matrix) -> str:
    return _env().get_template("matrix.html.j2").render(**_view(m))


def write_matrix(m: Matrix, out: Path) -> None:
    for name, text in (("matrix.json", json.dumps(m.to_json(), indent=1) + "\n"),
                       ("matrix.md", render_md(m)), ("matrix.html", render_html(m))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def summary(m: Matrix, out: Path | None = None) -> str:
    """The terminal table: one line per row, one column per kernel."""
    header = ["TOPOLOGY", "WORKLOAD", "PAIR", *m.labels]
    lines = [header]
    for row in m.rows():
        cols = []
        for label in m.labels:
            c = m.cell(row, label)
            if c is None:
                cols.append("-")
                continue
            text = c.verdict + (" (data not verified)" if c.verdict == "ok"
                                and c.data_verified is False else "")
            if c.mb_per_s is not None:
                text += f" {c.mb_per_s:.1f}"
            cols.append(text)
        lines.append([row[0], row[1], f"{row[2]}->{row[3]}" if row[2] or row[3] else "", *cols])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out_lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    regs = m.regressions()
    for r in regs:
        out_lines.append(f"REGRESSION: {r}")
    for r in m.incomplete:
        out_lines.append(f"INCOMPLETE: {r.topology} × {r.kernel}: {r.error.splitlines()[0]}")
    verdict = "FAIL" if m.status else "PASS"
    n_cells = len(m.rows()) * (len(m.labels) - 1)
    out_lines.append(f"{verdict}: {len(regs)} regression(s) against the baseline {m.baseline} "
                     f"in {n_cells} cell(s) of {len(m.labels) - 1} later kernel(s)"
                     + (f"; {len(m.incomplete)} run(s) incomplete" if m.incomplete else "")
                     + (f"; matrix in {out}" if out else ""))
    return "\n".join(out_lines)


def _keep_console(result, rdir: Path) -> None:
    """A run whose boot failed has no console.log of its own; the boot error names the
    copy it preserved: put that in the run's directory."""
    console = rdir / "console.log"
    m = re.search(r"full console log: (\S+)", result.error or "")
    if not m or (console.exists() and console.stat().st_size):
        return
    try:
        shutil.copyfile(m.group(1), console)
    except OSError:
        pass


# -- running -------------------------------------------------------------------------

def slug(text: str) -> str:
    """A directory name for a label.

    >>> slug("7.3.4 (build-patched)")
    '7.3.4-build-patched'
    """
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")
    return s or "kernel"


def default_out() -> Path:
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-matrix"
    path, n = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    return path


def prepare_out(out: Path | None) -> Path:
    out = out or default_out()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not empty (a matrix never overwrites "
                         "another)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create: {exc.strerror}") from None
    return out


def run_matrix(plan: MatrixPlan, out: Path, progress: Callable[[str], None] = lambda m: None,
               run=None) -> Matrix:
    """Run every topology × kernel in order; ``run`` defaults to :func:`run_topology`."""
    from .runner import RunOptions, run_topology
    run = run or run_topology
    m = Matrix(kernels=[{"label": k.label, "spec": k.spec, "description": k.description,
                         "release": k.release, "p2pdma": k.p2pdma} for k in plan.kernels],
               topologies=[t.name for t in plan.topologies],
               started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    start = time.monotonic()
    total = len(plan.topologies) * len(plan.kernels)
    i = 0
    for topo in plan.topologies:
        for k in plan.kernels:
            i += 1
            d = out / slug(topo.name) / slug(k.label)
            progress(f"[{i}/{total}] {topo.name} × {k.label}")
            opts = RunOptions(workloads=plan.workloads, kernel=k.kernel, accel=plan.accel,
                              size=plan.size, timeout=plan.timeout, out=d)
            result, rdir = run(topo, opts, lambda msg: progress(f"  {msg}"))
            _keep_console(result, rdir)
            first_error = ""
            if boot_timed_out(result.error) and plan.boot_retries > 0:
                # A TCG guest on an overloaded host sometimes stalls in early boot (RCU
                # stall, no console output): that is not the kernel's fault, so one retry.
                # A panic or any other failure is reported as it is.
                first_error = result.error.splitlines()[0]
                kept = d.with_name(d.name + ".attempt1")
                shutil.rmtree(kept, ignore_errors=True)
                rdir.rename(kept)
                progress(f"[{i}/{total}] {topo.name} × {k.label}: boot timed out "
                         f"({first_error}); retrying once, first attempt kept in {kept}")
                opts = dataclasses.replace(opts, out=d)
                result, rdir = run(topo, opts, lambda msg: progress(f"  {msg}"))
                _keep_console(result, rdir)
            idx = plan.kernels.index(k)
            if m.kernels[idx]["release"] is None and result.kernel.get("release"):
                m.kernels[idx]["release"] = result.kernel.get("release")
            if m.kernels[idx]["p2pdma"] is None:
                m.kernels[idx]["p2pdma"] = result.kernel.get("p2pdma")
            add_run(m, topo.name, k.label, result, rdir.relative_to(out)
                    if rdir.is_relative_to(out) else rdir)
            if first_error:
                m.runs[-1].first_attempt_error = first_error
            progress(f"[{i}/{total}] {topo.name} × {k.label}: "
                     + (f"run broke: {result.error.splitlines()[0]}" if result.error else
                        f"{len(cells_from_result(topo.name, k.label, result))} cells"))
            m.seconds = time.monotonic() - start
            write_matrix(m, out)  # partial results survive an interrupt
    return m
