"""Floor vs testbed, paired: `testbed boot switch-cmb -c true` against the same QEMU
machine booting a busybox initramfs that powers off at once (goal: median ratio <= 1.3)."""

from __future__ import annotations

from pathlib import Path

from bench import TESTBED, Context, Section, stats, timed
from testbed.image.build import ensure_image
from testbed.kernel.cpio import CpioWriter, read_cpio
from testbed.qemu.backing import create_backing_files
from testbed.qemu.cmdline import firmware, machine_argv
from testbed.qemu.probe import probe
from testbed.spec import load_topology

GOAL = 1.3
FLOOR_INIT = "#!/bin/busybox sh\n/bin/busybox poweroff -f\n"


def floor_initrd(image, dest: Path) -> Path:
    """A busybox initramfs whose init powers the machine off at once."""
    busybox = next(e for e in read_cpio(image.initrd.read_bytes()) if e.name == "bin/busybox")
    cpio = CpioWriter()
    cpio.directory("bin")
    cpio.file("bin/busybox", busybox.data, 0o755)
    cpio.directories("dev")
    cpio.file("init", FLOOR_INIT.encode(), 0o755)
    dest.write_bytes(cpio.finish())
    return dest


def floor_argv(topology: str, work: Path) -> list[str]:
    """The testbed's own machine argv for ``topology``, the image's kernel (PVH through
    qboot), the power-off initramfs."""
    image = ensure_image()
    topo = load_topology(topology)
    caps = probe(topo.machine.qemu)
    create_backing_files(topo, work)
    initrd = floor_initrd(image, work / "floor.cpio")
    return machine_argv(topo, caps.path, work, "tcg") + [
        *firmware(caps.path), "-kernel", str(image.kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet", "-no-reboot", "-serial", "null"]


def run(ctx: Context) -> list[str]:
    floor = floor_argv("switch-cmb", ctx.work)
    testbed = [*TESTBED, "boot", "switch-cmb", "-q", "-c", "true"]
    timed(testbed)  # warm-up: caches, page cache
    timed(floor)
    walls: dict[str, list[float]] = {"floor": [], "testbed": [], "ratio": []}
    cpus: dict[str, list[float]] = {"floor": [], "testbed": [], "ratio": []}
    for i in range(ctx.args.runs):
        f, t = timed(floor), timed(testbed)
        for d, a, b in ((walls, f.wall, t.wall), (cpus, f.cpu, t.cpu)):
            d["floor"].append(a)
            d["testbed"].append(b)
            d["ratio"].append(b / a)
        print(f"  pair {i + 1}: floor {f.wall:.2f} s ({f.cpu:.2f} s cpu), testbed {t.wall:.2f} s "
              f"({t.cpu:.2f} s cpu), ratio {t.wall / f.wall:.2f} (cpu {t.cpu / f.cpu:.2f})",
              flush=True)
    print(f"floor (same devices + kernel, initramfs powers off):  {stats(walls['floor'])}")
    print(f"testbed boot switch-cmb -c true:                       {stats(walls['testbed'])}")
    print(f"ratio testbed/floor, wall (paired):                    {stats(walls['ratio'])}"
          f"   goal <= {GOAL}")
    print(f"ratio testbed/floor, cpu seconds (paired):             {stats(cpus['ratio'])}")
    from statistics import median
    return [f"boot -c true / floor: median {median(walls['ratio']):.2f} (cpu "
            f"{median(cpus['ratio']):.2f}); floor median {median(walls['floor']):.2f} s, "
            f"testbed {median(walls['testbed']):.2f} s; goal <= {GOAL}"]


SECTION = Section("ratio", "floor vs testbed (`testbed boot switch-cmb -c true`)", run, 10)
