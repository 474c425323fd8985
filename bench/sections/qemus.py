"""The boot of switch-cmb on two QEMUs side by side: the host's (10.0 here) and 11.1 from
trixie-backports in its private root (installed once with `testbed qemu install
trixie-backports`, cached), paired round by round so a drifting machine affects both:

- the *floor*: the same QEMU machine (switch-cmb's devices, the image's kernel through
  qboot and its PVH entry) booting a busybox initramfs that powers off at once;
- the *testbed*: a whole `testbed boot switch-cmb --qemu Q -c true`, and the SSH-ready
  time that boot logs.

``--skip qemus`` leaves it out.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from pathlib import Path

from bench import TESTBED, Context, Section
from sections.ratio import floor_initrd
from testbed.image.build import ensure_image
from testbed.image.qemu_root import install
from testbed.qemu.backing import create_backing_files
from testbed.qemu.binary import Qemu
from testbed.qemu.cmdline import firmware, machine_argv
from testbed.qemu.installed import resolve_qemu
from testbed.qemu.probe import probe
from testbed.spec import load_topology

TOPOLOGY = "switch-cmb"
QEMUS = ("host", "trixie-backports")
READY = re.compile(r"SSH ready after ([\d.]+) s")


def floor_once(qemu: Qemu, argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300, check=True, env=qemu.environ())
    return time.monotonic() - start


def testbed_once(spec: str) -> tuple[float, float]:
    """(whole `boot -c true`, SSH ready as the boot logged it)."""
    start = time.monotonic()
    res = subprocess.run([*TESTBED, "boot", TOPOLOGY, "--qemu", spec, "-c", "true"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=600, check=True)
    wall = time.monotonic() - start
    m = READY.search(res.stderr)
    return wall, float(m[1]) if m else float("nan")


def side_by_side(runs: int, work: Path, specs: tuple[str, ...] = QEMUS) -> list[str]:
    """Print each round and the floor, SSH-ready and whole-boot medians of each QEMU."""
    image = ensure_image()
    topo = load_topology(TOPOLOGY)
    create_backing_files(topo, work)
    initrd = floor_initrd(image, work / "floor-qemus.cpio")
    qemus = []
    for spec in specs:
        if spec == "trixie-backports":
            install(spec)  # cached after the first time
        q = resolve_qemu(spec)
        argv = machine_argv(topo, q, work, "tcg") + [
            *firmware(q), "-kernel", str(image.kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet", "-no-reboot", "-serial", "null"]
        qemus.append((spec, q, probe(q).version_str, argv))
    floors: dict[str, list[float]] = {s: [] for s in specs}
    walls: dict[str, list[float]] = {s: [] for s in specs}
    ready: dict[str, list[float]] = {s: [] for s in specs}
    for spec, _, _, _ in qemus:
        testbed_once(spec)  # warm-up: probe and KVM caches, page cache
    for i in range(runs):
        line = []
        for spec, q, version, argv in qemus:
            f = floor_once(q, argv)
            w, r = testbed_once(spec)
            floors[spec].append(f)
            walls[spec].append(w)
            ready[spec].append(r)
            line.append(f"{version}: floor {f:.2f}, ready {r:.2f}, whole {w:.2f}")
        print(f"  run {i + 1}: " + "; ".join(line), flush=True)
    out = [f"{'QEMU':<18} {'version':<8} {'floor':>6} {'ssh-ready':>9} {'whole':>6}  (median s)"]
    for spec, _, version, _ in qemus:
        out.append(f"{spec:<18} {version:<8} {statistics.median(floors[spec]):6.2f} "
                   f"{statistics.median(ready[spec]):9.2f} {statistics.median(walls[spec]):6.2f}")
    if len(specs) == 2:
        a, b = specs
        ratio = statistics.median(x / y for x, y in zip(walls[b], walls[a]))
        out.append(f"whole boot {b}/{a} (paired median): {ratio:.2f}")
    for line in out:
        print(line, flush=True)
    return out


def run(ctx: Context) -> list[str]:
    return side_by_side(ctx.args.runs, ctx.work)


SECTION = Section("qemus", "switch-cmb on two QEMUs (host and trixie-backports)", run, 50)
