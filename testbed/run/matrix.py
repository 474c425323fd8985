"""A topology × kernel (× QEMU) matrix: every workload on every topology with every kernel
(on every QEMU).

    plan = plan_matrix(["switch-cmb"], ["default", "/build/linux"], workloads=["p2p-copy"])
    matrix = run_matrix(plan, out=prepare_out(Path("runs/m1")))
    matrix.status       # 1 when a later kernel regressed against the first (the baseline)

Each (topology, kernel) run is an ordinary ``testbed run`` (:func:`run_topology`)
with its own results directory under the matrix's output directory
(``<topology>/<kernel>/``, ``<topology>/<kernel>/<QEMU>/`` with QEMUs); the runs are
sequential (one guest at a time: under TCG two guests on two cores only slow
each other down).  What a cell and a regression are: :mod:`testbed.run.cells`.
A boot that timed out with no console failure is retried once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ..errors import BootTimeout
from ..results.model import RunResult
from ..util.files import new_out_dir
from .cells import NO_CELLS, Matrix, add_run, cells_from_result
from .plan import MatrixPlan
from .render import write_matrix
from .shard import Boot, boots, partition, plan_id
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


def run_matrix(plan: MatrixPlan, out: Path, run: RunFunction = run_topology,
               shard: tuple[int, int] | None = None, jobs: int = 1) -> Matrix:
    """Run the plan's boots (only shard K of N with ``shard``), ``jobs`` at a time; ``run``
    is :func:`run_topology` (or a stand-in with its signature, in unit tests)."""
    all_boots = boots(plan)
    selected = partition(all_boots, shard[1])[shard[0] - 1] if shard else all_boots
    m = Matrix(kernels=[{"label": k.label, "spec": k.spec, "description": k.description,
                         "release": k.release, "p2pdma": k.p2pdma} for k in plan.kernels],
               topologies=[t.name for t in plan.topologies],
               started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), plan_id=plan_id(plan),
               shard=f"{shard[0]}/{shard[1]}" if shard else None,
               boots=[b.id for b in selected],
               planned={b.topology: [w for w in b.workloads if w not in NO_CELLS]
                        for b in all_boots},
               qemus=[q.to_json() for q in plan.qemus], mbps_tolerance=plan.mbps_tolerance)
    kernels = {k.label: k for k in plan.kernels}
    start = time.monotonic()
    lock = threading.Lock()
    total = len(selected)

    def one(i: int, boot: Boot) -> None:
        topo, k = plan.topology(boot.topology, boot.qemu), kernels[boot.kernel]
        d = out / slug(topo.name) / slug(k.label)
        if boot.qemu:
            d = d / slug(boot.qemu)
        col = f"{k.label} @ {boot.qemu}" if boot.qemu else k.label
        log.info("[%d/%d] %s × %s", i, total, topo.name, col)
        opts = RunOptions(workloads=plan.workloads, kernel=k.kernel, accel=plan.accel,
                          size=plan.size, timeout=plan.timeout, out=d,
                          fio_args=plan.fio_args, coverage=plan.coverage)
        result, rdir = run(topo, opts)
        _keep_console(result, rdir)
        first_error = ""
        if result.error_kind == BootTimeout.kind and plan.boot_retries > 0:
            # A TCG guest on an overloaded host sometimes stalls in early boot (RCU stall,
            # no console output): that is not the kernel's fault, so one retry.  A panic
            # or any other failure is reported as it is.
            first_error = result.error.splitlines()[0]
            kept = d.with_name(d.name + ".attempt1")
            shutil.rmtree(kept, ignore_errors=True)
            rdir.rename(kept)
            log.info("[%d/%d] %s × %s: boot timed out (%s); retrying once, first attempt "
                     "kept in %s", i, total, topo.name, col, first_error, kept)
            result, rdir = run(topo, dataclasses.replace(opts, out=d))
            _keep_console(result, rdir)
        with lock:
            idx = plan.kernels.index(k)
            if m.kernels[idx]["release"] is None and result.kernel.get("release"):
                m.kernels[idx]["release"] = result.kernel.get("release")
            if m.kernels[idx]["p2pdma"] is None:
                m.kernels[idx]["p2pdma"] = result.kernel.get("p2pdma")
            add_run(m, topo.name, k.label, result, rdir.relative_to(out)
                    if rdir.is_relative_to(out) else rdir, qemu=boot.qemu)
            if first_error:
                m.runs[-1].first_attempt_error = first_error
            log.info("[%d/%d] %s × %s: %s", i, total, topo.name, col,
                     f"run broke: {result.error.splitlines()[0]}" if result.error else
                     f"{len(cells_from_result(topo.name, k.label, result))} cells")
            m.seconds = time.monotonic() - start
            m.sort()
            write_matrix(m, out)  # partial results survive an interrupt

    if jobs <= 1 or len(selected) <= 1:
        for i, boot in enumerate(selected, 1):
            one(i, boot)
    else:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="matrix") as pool:
            for future in [pool.submit(one, i, b) for i, b in enumerate(selected, 1)]:
                future.result()
    m.sort()
    if not selected:
        write_matrix(m, out)
    return m


def default_jobs(plan: MatrixPlan) -> int:
    """Boots at a time that this machine holds: a TCG guest wants about a core, and its
    memory plus QEMU's own (~300 MiB)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    per_guest = max((t.machine.memory for t in plan.topologies), default=1 << 30) + (300 << 20)
    avail = _mem_available()
    by_memory = max(1, avail // per_guest) if avail else cores
    return max(1, min(cores, by_memory))


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
