"""A topology × kernel matrix: every workload on every topology with every kernel.

    plan = plan_matrix(["switch-cmb"], ["default", "/build/linux"], workloads=["p2p-copy"])
    matrix = run_matrix(plan, out=prepare_out(Path("runs/m1")))
    matrix.status       # 1 when a later kernel regressed against the first (the baseline)

Each (topology, kernel) run is an ordinary ``testbed run`` (:func:`run_topology`)
with its own results directory under the matrix's output directory; the runs are
sequential (one guest at a time: under TCG two guests on two cores only slow
each other down).  What a cell and a regression are: :mod:`testbed.run.cells`.
A boot that timed out with no console failure is retried once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from ..errors import BootTimeout
from ..results.model import RunResult
from ..util.files import new_out_dir
from .cells import Matrix, add_run, cells_from_result
from .plan import MatrixPlan
from .render import write_matrix
from .runner import RunOptions, run_topology

log = logging.getLogger(__name__)

RunFunction = Callable[..., tuple[RunResult, Path]]


def _keep_console(result: RunResult, rdir: Path) -> None:
    """A run whose boot failed has no console.log of its own; its result names the
    directory the boot kept its logs in: put the console there in the run's directory."""
    console = rdir / "console.log"
    kept = Path(result.logs) / "console.log" if result.logs else None
    if kept is None or (console.exists() and console.stat().st_size):
        return
    try:
        shutil.copyfile(kept, console)
    except OSError:
        pass


def slug(text: str) -> str:
    """A directory name for a label.

    >>> slug("7.3.4 (build-patched)")
    '7.3.4-build-patched'
    """
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")
    return s or "kernel"


def prepare_out(out: Path | None) -> Path:
    """Create the matrix's output directory (never one that holds results)."""
    return new_out_dir(out, "matrix")


def run_matrix(plan: MatrixPlan, out: Path, run: RunFunction = run_topology) -> Matrix:
    """Run every topology × kernel in order; ``run`` is :func:`run_topology` (or a
    stand-in with its signature, in unit tests)."""
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
            log.info("[%d/%d] %s × %s", i, total, topo.name, k.label)
            opts = RunOptions(workloads=plan.workloads, kernel=k.kernel, accel=plan.accel,
                              size=plan.size, timeout=plan.timeout, out=d,
                              fio_args=plan.fio_args)
            result, rdir = run(topo, opts)
            _keep_console(result, rdir)
            first_error = ""
            if result.error_kind == BootTimeout.kind and plan.boot_retries > 0:
                # A TCG guest on an overloaded host sometimes stalls in early boot (RCU
                # stall, no console output): that is not the kernel's fault, so one retry.
                # A panic or any other failure is reported as it is.
                first_error = result.error.splitlines()[0]
                kept = d.with_name(d.name + ".attempt1")
                shutil.rmtree(kept, ignore_errors=True)
                rdir.rename(kept)
                log.info("[%d/%d] %s × %s: boot timed out (%s); retrying once, first "
                         "attempt kept in %s", i, total, topo.name, k.label, first_error, kept)
                opts = dataclasses.replace(opts, out=d)
                result, rdir = run(topo, opts)
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
            log.info("[%d/%d] %s × %s: %s", i, total, topo.name, k.label,
                     f"run broke: {result.error.splitlines()[0]}" if result.error else
                     f"{len(cells_from_result(topo.name, k.label, result))} cells")
            m.seconds = time.monotonic() - start
            write_matrix(m, out)  # partial results survive an interrupt
    return m
