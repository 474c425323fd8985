"""One step of ``git bisect run``: build the checked-out tree (incrementally, in a build
directory every step reuses), boot it on a topology, run the workloads, and judge them
against a baseline results.json (or, without one, the oracle).

    >>> step = judge(RunResult("switch-cmb", error="boot: ...", error_kind="boot-failed"),
    ...              None)
    >>> step.status, step.word
    (125, 'skip')

The status is what ``git bisect run`` understands:

- ``0`` (good): every judged verdict, and mechanism where both sides observed one,
  matches the baseline or the oracle;
- ``1`` (bad): one does not, a pair went missing, or the guest broke during the
  workloads or did not show the topology (no p2pmem: that is P2PDMA's business);
- ``125`` (skip): the tree does not build, or the kernel does not boot (a panic, QEMU
  exiting, no SSH): nothing to say about P2PDMA at this commit;
- ``128`` (abort): bad input or a host problem (no QEMU, no image, no build tools); a
  status above 127 stops the bisection instead of marking every commit bad.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..coverage.session import plan_coverage
from ..errors import KernelBuildError, UsageError
from ..kernel.build import (build_kernel, check_build_tools, check_source_tree,
                            default_build_dir)
from ..kernel.profile_build import build_profile_kernel
from ..kernel.resolve import KernelSpec, resolve_kernel
from ..results.baseline import Baseline, differences
from ..results.model import RunResult
from ..spec.model import Topology
from ..util.files import check_out_dir
from ..workloads import WORKLOADS
from .runner import RunOptions, check_inputs, run_topology

log = logging.getLogger(__name__)

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128
WORDS = {GOOD: "good", BAD: "bad", SKIP: "skip", ABORT: "abort"}
# error kinds of a run that say nothing about the tree's P2PDMA: skip the commit
SKIP_KINDS = ("kernel-build", "boot-failed", "boot-timeout")
# error kinds that are the host's or the user's: stop the bisection
ABORT_KINDS = ("usage", "image", "qemu", "instance")


@dataclass(frozen=True)
class BisectOptions:
    source: Path | None = None  # the tree to build (None: use ``kernel`` as it is)
    build_dir: Path | None = None  # default: default_build_dir(source)
    kernel: KernelSpec | None = None  # a prebuilt kernel (None: the image's), no build
    run: RunOptions = RunOptions()
    baseline: Baseline | None = None
    jobs: int | None = None
    profiles: tuple[str, ...] = ()  # build each commit as this profile kernel (base+...)


@dataclass
class Step:
    """The verdict on one commit."""

    status: int
    reason: str
    differences: list[str] = field(default_factory=list)
    result: RunResult | None = None
    out: Path | None = None
    commit: str | None = None

    @property
    def word(self) -> str:
        return WORDS.get(self.status, str(self.status))


def judge(result: RunResult, baseline: Baseline | None) -> Step:
    """The bisect status of a finished (or failed) run; pure."""
    first = result.error.splitlines()[0] if result.error else ""
    if result.error_kind in SKIP_KINDS:
        return Step(SKIP, f"the kernel does not boot ({result.error_kind}): {first}",
                    result=result)
    if result.error_kind in ABORT_KINDS:
        return Step(ABORT, f"not the tree's fault ({result.error_kind}): {first}",
                    result=result)
    diffs = differences(result, baseline) if result.finished else []
    if result.error:
        return Step(BAD, f"the run failed ({result.error_kind}): {first}", diffs, result)
    if not result.finished:
        return Step(BAD, "the run did not get to its end", diffs, result)
    against = (f"the baseline ({baseline.kernel}, {baseline.path})" if baseline is not None
               else "the oracle")
    if diffs:
        return Step(BAD, f"{len(diffs)} record(s) differ from {against}", diffs, result)
    pc = result.patch_coverage
    if pc is not None and pc.failed:
        return Step(BAD, f"{len(result.judged)} judged record(s) as {against} says, but "
                         f"{pc.failed}", [pc.summary()], result)
    return Step(GOOD, f"{len(result.judged)} judged record(s) as {against} says", [], result)


def git_head(tree: Path) -> str | None:
    """The checked-out commit of ``tree`` (short), or None when it is not a git tree."""
    try:
        out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def plan_step(topo: Topology, opts: BisectOptions) -> tuple[BisectOptions, list[str]]:
    """Check every input before anything is built or booted (UsageError: abort); returns
    the options with the defaults filled in, and the workloads that will run."""
    run = opts.run
    if opts.source is not None:
        check_source_tree(opts.source)
        check_build_tools()
        build_dir = opts.build_dir or default_build_dir(opts.source)
        if run.out is None:  # beside the build: a bisection's runs stay together
            commit = git_head(opts.source) or "tree"
            run = replace(run, out=build_dir / "bisect-runs"
                          / f"{time.strftime('%Y%m%d-%H%M%S')}-{topo.name}-{commit}")
        opts = replace(opts, build_dir=build_dir, run=run)
    names = check_inputs(topo, run)
    if run.out is not None:
        check_out_dir(run.out)
    if run.coverage is not None:  # the files, the patch: bad input before anything is built
        request = run.coverage
        if opts.source is not None:  # the commit's own tree is the coverage's source
            request = replace(request, source=request.source or opts.source)
        plan_coverage(request, opts.kernel)
    if not any(WORKLOADS[n].judged for n in names):
        raise UsageError(f"none of the workloads ({', '.join(names)}) is judged: nothing to "
                         f"bisect on; judged: {', '.join(n for n in WORKLOADS if WORKLOADS[n].judged)}")
    if opts.baseline is not None:
        if opts.baseline.topology != topo.name:
            raise UsageError(f"--baseline {opts.baseline.path}: a run of topology "
                             f"{opts.baseline.topology!r}, not {topo.name!r}")
        mine = opts.baseline.restricted(names, run.pairs)
        if not mine.records:
            raise UsageError(f"--baseline {opts.baseline.path}: no judged record of "
                             f"{', '.join(names)}" + (" for those pairs" if run.pairs else ""))
        opts = replace(opts, baseline=mine)
    return opts, names


def bisect_step(topo: Topology, opts: BisectOptions) -> Step:
    """Build (unless a prebuilt kernel is given), run, judge: see the module doc."""
    opts, _ = plan_step(topo, opts)
    commit = git_head(opts.source) if opts.source is not None else None
    kernel = opts.kernel
    if opts.source is not None:
        assert opts.build_dir is not None
        log.info("building %s%s in %s", opts.source, f" at {commit}" if commit else "",
                 opts.build_dir)
        try:  # a UsageError here (no source tree, no build tools) aborts
            if opts.profiles:  # the kept profile tree: each commit rebuilds incrementally
                pk = build_profile_kernel(opts.source, opts.profiles, arch=topo.profile.arch,
                                          jobs=opts.jobs, output=opts.build_dir)
                assert pk is not None
                output = pk.tree
            else:
                output = build_kernel(opts.source, opts.build_dir, jobs=opts.jobs,
                                      profile=topo.profile).output
        except KernelBuildError as exc:
            return Step(SKIP, f"the tree does not build: {exc}", commit=commit)
        try:
            kernel = resolve_kernel(str(output), topo.profile)
        except UsageError as exc:  # what this commit built cannot boot the image
            return Step(SKIP, f"the build is not a usable kernel: {exc}", commit=commit)
    result, out = run_topology(topo, replace(opts.run, kernel=kernel))
    step = judge(result, opts.baseline)
    step.out, step.commit = out, commit
    return step
