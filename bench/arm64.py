"""`make bench` part: the arm64 guest beside the x86 one, in the same run.

Paired rounds (so a drifting machine affects every column alike), each:

- the x86 whole boot: `testbed boot switch-cmb -c true`;
- the arm64 floor: switch-cmb-arm64's machine (virt, the same devices), the arm64 image's
  kernel and a busybox initramfs that powers off at once;
- the arm64 whole boot: `testbed boot switch-cmb-arm64 -c true`, and its SSH-ready time
  (the "SSH ready after" line).

Goal: the arm64 whole boot <= 2x the x86 whole boot (median of the paired ratios).  The
first call builds the arm64 image when it is not cached (not timed).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from testbed.image.build import ensure_image
from testbed.kernel.cpio import CpioWriter, read_cpio
from testbed.machines import AARCH64
from testbed.qemu.backing import create_backing_files
from testbed.qemu.cmdline import firmware, machine_argv
from testbed.qemu.probe import probe
from testbed.spec import load_topology

TESTBED = [sys.executable, "-m", "testbed"]
FLOOR_INIT = "#!/bin/busybox sh\n/bin/busybox poweroff -f\n"
GOAL = 2.0


def _floor_argv(work: Path) -> list[str]:
    image = ensure_image(profile=AARCH64)
    topo = load_topology("switch-cmb-arm64")
    caps = probe(topo.machine.qemu)
    create_backing_files(topo, work)
    busybox = next(e for e in read_cpio(image.initrd.read_bytes()) if e.name == "bin/busybox")
    cpio = CpioWriter()
    cpio.directory("bin")
    cpio.file("bin/busybox", busybox.data, 0o755)
    cpio.directories("dev")
    cpio.file("init", FLOOR_INIT.encode(), 0o755)
    initrd = work / "floor-arm64.cpio"
    initrd.write_bytes(cpio.finish())
    return machine_argv(topo, caps.path, work, "tcg") + [
        *firmware(caps.path, topo), "-kernel", str(image.kernel), "-initrd", str(initrd),
        "-append", f"{AARCH64.console_word} panic=-1 quiet", "-no-reboot", "-serial", "null"]


def _timed(argv: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=900, check=True)
    return time.monotonic() - start, res.stderr


def _boot(topology: str) -> tuple[float, float | None]:
    """(whole `boot -c true`, SSH ready) in seconds."""
    wall, err = _timed([*TESTBED, "boot", topology, "-c", "true"])
    m = re.search(r"SSH ready after ([\d.]+) s", err)
    return wall, float(m.group(1)) if m else None


def _stats(values: list[float]) -> str:
    return (f"min {min(values):6.2f}  median {statistics.median(values):6.2f}  "
            f"max {max(values):6.2f}")


def arm64_figures(work: Path, runs: int) -> None:
    floor = _floor_argv(work)
    _boot("switch-cmb-arm64")  # warm-up: image, probes, page cache
    x86, floors, arm, ready, ratios = [], [], [], [], []
    for i in range(runs):
        x, _ = _boot("switch-cmb")
        f, _ = _timed(floor)
        a, r = _boot("switch-cmb-arm64")
        x86.append(x)
        floors.append(f)
        arm.append(a)
        if r is not None:
            ready.append(r)
        ratios.append(a / x)
        print(f"  round {i + 1}: x86 {x:.2f} s, arm64 floor {f:.2f} s, arm64 {a:.2f} s "
              f"(SSH ready {r if r is not None else '?'} s), arm64/x86 {a / x:.2f}", flush=True)
    print(f"x86   testbed boot switch-cmb -c true:        {_stats(x86)}")
    print(f"arm64 floor (same devices, initramfs off):    {_stats(floors)}")
    if ready:
        print(f"arm64 boot switch-cmb-arm64: SSH ready:       {_stats(ready)}")
    print(f"arm64 testbed boot switch-cmb-arm64 -c true:  {_stats(arm)}")
    print(f"ratio arm64/floor (medians):                  "
          f"{statistics.median(arm) / statistics.median(floors):.2f}")
    print(f"ratio arm64/x86 whole boot (paired):          {_stats(ratios)}   goal <= {GOAL}")
