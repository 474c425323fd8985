"""Kernel profile figures for `make bench` (bench/bench.py calls :func:`kernel_figures`).

1. A cold build of ``base`` from linux-source-7.3: a fresh build tree, ccache off.
2. A cold build of the CI set ``base+vfio-iommufd+coverage``, the same way.
3. A one-file change: drivers/pci/p2pdma.c made newer, then the CI set's tree rebuilt
   (make recompiles that file and relinks). Goal: <= 60 s.
4. Boot of the CI profile kernel against the image kernel, paired runs of
   ``testbed boot switch-cmb -c true``. Goal: the profile kernel no slower.

Each build prints wall seconds and CPU seconds (make and the compilers, user + system):
on a loaded machine the wall time says little, the CPU time divided by the cores is
what an idle machine would take. Goal for the cold base: <= 6 min on 2 cores. Each line
also prints the 1-minute load average before/after the build, so that an idle run can be
told from a loaded one.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from testbed.kernel.profile_build import build_profile_kernel
from testbed.kernel.source import debian_source

TESTBED = [sys.executable, "-m", "testbed"]
CI_SET = ["base", "vfio-iommufd", "coverage"]


def _load() -> float:
    return os.getloadavg()[0]


def _build(names: list[str], out: Path, **kw) -> tuple[float, float, str]:
    before = _load()
    k = build_profile_kernel("debian", names, output=out, **kw)
    assert k is not None
    return k.seconds, k.cpu_seconds, f"load {before:.1f}/{_load():.1f}"


def _boot(kernel: str | None) -> float:
    start = time.monotonic()
    subprocess.run([*TESTBED, "boot", "switch-cmb", "-q", "-c", "true",
                    *(["--kernel", kernel] if kernel else [])], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
                   check=True)
    return time.monotonic() - start


def kernel_figures(work: Path, runs: int) -> None:
    cores = len(os.sched_getaffinity(0))
    old = os.environ.get("CCACHE_DISABLE")
    os.environ["CCACHE_DISABLE"] = "1"  # cold: no object comes from an earlier build
    try:
        for label, names, goal in (("cold base", ["base"], "goal <= 360 s on 2 cores"),
                                   ("cold base+vfio-iommufd+coverage", CI_SET, "")):
            wall, cpu, load = _build(names, work / "+".join(names))
            print(f"{label:34} wall {wall:7.1f} s  CPU {cpu:7.1f} s "
                  f"(= {cpu / cores:6.1f} s on {cores} idle cores)  {load}  {goal}",
                  flush=True)
    finally:
        if old is None:
            os.environ.pop("CCACHE_DISABLE", None)
        else:
            os.environ["CCACHE_DISABLE"] = old
    # one file newer than its object: make recompiles it and relinks (the mtime is put back)
    src = debian_source().tree / "drivers/pci/p2pdma.c"
    st = src.stat()
    try:
        os.utime(src, (st.st_atime, time.time()))
        wall, cpu, load = _build(CI_SET, work / "+".join(CI_SET), rebuild=True)
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    print(f"{'one-file change (p2pdma.c)':34} wall {wall:7.1f} s  CPU {cpu:7.1f} s  "
          f"{load}  goal <= 60 s", flush=True)
    k = build_profile_kernel("debian", CI_SET)  # the cached CI kernel, by its spec
    assert k is not None
    spec = k.spec
    _boot(None)
    _boot(spec)  # warm-up: caches, the PVH vmlinux extraction
    image, profile = [], []
    for i in range(runs):
        image.append(_boot(None))
        profile.append(_boot(spec))
        print(f"  pair {i + 1}: image kernel {image[-1]:.2f} s, {k.name} {profile[-1]:.2f} s",
              flush=True)
    ratio = statistics.median(p / i for p, i in zip(profile, image))
    print(f"boot switch-cmb -c true, median: image kernel {statistics.median(image):.2f} s, "
          f"profile kernel {statistics.median(profile):.2f} s, ratio {ratio:.2f}  "
          "goal <= 1.0", flush=True)
