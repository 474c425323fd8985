"""Write a run's files: results.json, junit.xml, results.ktap, report.md, report.html, the
drawing (topology.dot, topology.svg), dmesg, console, spec, qemu.sh.

The drawing needs Graphviz's ``dot``; without it (or when it fails) the run's results are
written all the same, with topology.dot, and report.html says why there is no picture."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import jinja2
from markupsafe import Markup

from ..coverage.html import file_views
from ..coverage.outputs import write_coverage
from ..errors import DotFailed, ToolMissing
from ..spec.model import Topology
from ..util.files import atomic_write, new_out_dir
from ..verdicts.ktap import subtest_leaves
from .graphviz import to_svg
from .junit import to_junit
from .ktap import to_ktap
from .model import RunResult
from .picture import topology_dot

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
log = logging.getLogger(__name__)


def make_out_dir(path: Path | None, topology: str) -> Path:
    """Create the output directory; never overwrite an existing run."""
    return new_out_dir(path, topology)


def _env(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=False,
                             keep_trailing_newline=True, autoescape=html)
    env.filters["leaves"] = subtest_leaves  # a kernel test's subtests, flattened
    return env


def render_report(result: RunResult) -> str:
    return _env(False).get_template("report.md.j2").render(r=result)


DELTA_LINES = 200  # report.html shows at most this many lines of each workload's dmesg
MARKER = re.compile(r"----- end of \S+ -----")  # the runner's line between workloads


def render_report_html(result: RunResult, svg: str | None = None, no_picture: str = "",
                       dmesg_deltas: Sequence[tuple[str, str]] = ()) -> str:
    """report.html: the picture (``svg`` inline), the pair table, the dmesg excerpts (each
    record's lines, and what the kernel said during the workloads)."""
    deltas = [(name, "\n".join(text.strip().splitlines()[-DELTA_LINES:]))
              for name, text in dmesg_deltas
              if text.strip() and not MARKER.fullmatch(text.strip())]
    cov = result.coverage
    return _env(True).get_template("report.html.j2").render(
        r=result, svg=Markup(svg) if svg else None, no_picture=no_picture, deltas=deltas,
        cov=cov, cov_views=file_views(cov) if cov else [], cov_patch=result.patch_coverage)


def draw(topology: Topology, result: RunResult) -> tuple[str, str | None, str]:
    """(DOT text, SVG or None, why there is no SVG) of the run's topology and pairs."""
    dot = topology_dot(topology, result.workloads)
    try:
        return dot, to_svg(dot), ""
    except (ToolMissing, DotFailed) as exc:
        log.warning("no topology.svg: %s", exc)
        return dot, None, str(exc)


def write_results(out: Path, result: RunResult, *, topology: Topology | None = None,
                  topology_file: Path | None = None,
                  qemu_script: str | None = None, console: Path | None = None,
                  dmesg: str = "", dmesg_deltas: Sequence[tuple[str, str]] = ()) -> None:
    _write(out / "results.json", json.dumps(result.to_json(), indent=1) + "\n")
    if result.coverage is not None:
        write_coverage(out, result.coverage, result.topology, result.patch_coverage)
    _write(out / "junit.xml", to_junit(result) + "\n")
    _write(out / "results.ktap", to_ktap(result))
    _write(out / "report.md", render_report(result))
    svg, no_picture = None, "no topology was given"
    if topology is not None:
        dot, svg, no_picture = draw(topology, result)
        _write(out / "topology.dot", dot)
        if svg is not None:
            _write(out / "topology.svg", svg)
    _write(out / "report.html", render_report_html(result, svg, no_picture, dmesg_deltas))
    if topology_file and topology_file.exists():
        shutil.copyfile(topology_file, out / "topology.yaml")
    if qemu_script:
        _write(out / "qemu.sh", qemu_script)
        os.chmod(out / "qemu.sh", 0o755)
    if console and console.exists():
        if console.resolve() != (out / "console.log").resolve():
            shutil.copyfile(console, out / "console.log")
    else:
        _write(out / "console.log", "")
    _write(out / "dmesg.txt", dmesg)
    _write(out / "dmesg-workloads.txt", "".join(
        f"===== {name} =====\n{text}\n" for name, text in dmesg_deltas))


def _write(path: Path, text: str) -> None:
    atomic_write(path, text)
