"""The matrix as files and text: matrix.json, matrix.md, matrix.html, results.ktap, the
terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from ..util.files import atomic_write
from ..util.table import format_table
from .cells import VERDICTS, Matrix, column_label
from .coverage import KernelCoverage, slug, write_matrix_coverage
from .ktap import matrix_ktap

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]))
    env.filters["mbps"] = lambda v: "" if v is None else f"{v:.1f} MB/s"
    env.filters["slug"] = slug
    return env


def _view(m: Matrix, coverage: list[KernelCoverage] | None = None) -> dict[str, Any]:
    regs = m.regressions()
    qemu_regs = m.qemu_regressions()
    reg_keys = {(r.topology, r.workload, r.provider or "", r.client or "", r.kernel, r.qemu)
                for r in regs + m.mechanism_regressions() + qemu_regs}
    rows = []
    for row in m.rows():
        cells: list[dict[str, Any]] = []
        for label, q in m.columns:
            c = m.cell(row, label, q)
            cells.append({"cell": c, "kernel": label, "qemu": q,
                          "regression": (*row, label, q) in reg_keys})
        rows.append({"topology": row[0], "workload": row[1],
                     "pair": f"{row[2]} → {row[3]}" if row[2] or row[3] else "",
                     "predicted": next((c["cell"].predicted for c in cells
                                        if c["cell"] and c["cell"].predicted), None),
                     "cells": cells})
    run_dirs = {(r.topology, r.kernel, r.qemu): r.directory for r in m.runs}
    kernels = {k["label"]: k for k in m.kernels}
    columns = [{"label": column_label(k, q), "kernel": kernels[k], "qemu": q,
                "baseline": (k, q) == (m.baseline, m.baseline_qemu)} for k, q in m.columns]
    return {"m": m, "rows": rows, "regressions": regs, "columns": columns,
            "qemu_regressions": qemu_regs,
            "mechanism_regressions": m.mechanism_regressions(), "incomplete": m.incomplete,
            "group_changes": m.group_changes(),
            "status": m.status, "verdicts": VERDICTS, "run_dirs": run_dirs,
            "coverage": coverage or []}


def render_md(m: Matrix, coverage: list[KernelCoverage] | None = None) -> str:
    return _env().get_template("matrix.md.j2").render(**_view(m, coverage))


def render_html(m: Matrix, coverage: list[KernelCoverage] | None = None) -> str:
    return _env().get_template("matrix.html.j2").render(**_view(m, coverage))


def write_matrix(m: Matrix, out: Path) -> list[KernelCoverage]:
    """matrix.json, .md, .html, results.ktap and, when the runs measured coverage, its
    sums (see :mod:`testbed.run.coverage`), which it returns."""
    coverage = write_matrix_coverage(m, out)
    for name, text in (("matrix.json", json.dumps(m.to_json(), indent=1) + "\n"),
                       ("matrix.md", render_md(m, coverage)),
                       ("matrix.html", render_html(m, coverage)),
                       ("results.ktap", matrix_ktap(m))):
        atomic_write(out / name, text)
    return coverage


def summary(m: Matrix, out: Path | None = None) -> str:
    """The terminal table: one line per row, one column per kernel (× QEMU)."""
    header = ["TOPOLOGY", "WORKLOAD", "PAIR", *(column_label(k, q) for k, q in m.columns)]
    lines: list[list[str]] = [header]
    for row in m.rows():
        cols = []
        for label, q in m.columns:
            c = m.cell(row, label, q)
            if c is None:
                cols.append("-")
                continue
            text = c.verdict + (" (data not verified)" if c.verdict == "ok"
                                and c.data_verified is False else "")
            if c.mb_per_s is not None:
                text += f" {c.mb_per_s:.1f}"
            if c.observed_map_type:
                text += f" [{c.observed_map_type}]"
            cols.append(text)
        lines.append([row[0], row[1], f"{row[2]}->{row[3]}" if row[2] or row[3] else "", *cols])
    out_lines = format_table(lines).splitlines()
    regs = m.regressions()
    for r in regs:
        out_lines.append(f"REGRESSION: {r}")
    mech = m.mechanism_regressions()
    for r in mech:
        out_lines.append(f"MECHANISM REGRESSION: {r}")
    qemu_regs = m.qemu_regressions()
    for r in qemu_regs:
        out_lines.append(f"QEMU REGRESSION ({r.kind}): {r}")
    for change in m.group_changes():
        out_lines.append(f"GROUPS CHANGED: {change}")
    for run in m.incomplete:
        out_lines.append(f"INCOMPLETE: {run.topology} × {run.column}: "
                         f"{run.error.splitlines()[0]}")
    verdict = "FAIL" if m.status else "PASS"
    n_qemus = len(m.qemu_labels)
    n_cells = len(m.rows()) * (len(m.labels) - 1) * n_qemus
    qemu_part = ""
    if n_qemus > 1:
        qemu_part = (f"; {len(qemu_regs)} QEMU regression(s) against {m.baseline_qemu} in "
                     f"{len(m.rows()) * len(m.labels) * (n_qemus - 1)} cell(s) of "
                     f"{n_qemus - 1} later QEMU(s) (MB/s tolerance "
                     f"{m.mbps_tolerance:.0%})".replace("%", " %"))
    out_lines.append(f"{verdict}: {len(regs)} regression(s) and {len(mech)} mechanism "
                     f"regression(s) against the baseline {m.baseline} "
                     f"in {n_cells} cell(s) of {len(m.labels) - 1} later kernel(s)"
                     + qemu_part
                     + (f"; {len(m.incomplete)} run(s) incomplete" if m.incomplete else "")
                     + (f"; matrix in {out}" if out else ""))
    return "\n".join(out_lines)
