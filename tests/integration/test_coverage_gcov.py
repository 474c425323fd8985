"""Line coverage on the CI profile kernel (base+vfio-iommufd+coverage: GCOV_KERNEL with the
P2P files profiled), and patch coverage that says exactly which changed lines ran.

One detached guest, two runs: a patch to drivers/pci/p2pdma.c whose changed lines are in
calc_map_type_and_dist() (run by every P2P transfer) is executed; one whose lines are in
pci_p2pmem_find_many() (no workload calls it) is not, and --min-patch-coverage fails it.
The patches are written against the kernel's own source (their added lines are what the
kernel was built from), as a patch a reviewer applied and built would be."""

from __future__ import annotations

import difflib
import io
import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.profile_kernel

TESTBED = [sys.executable, "-m", "testbed"]
FILE = "drivers/pci/p2pdma.c"


def cli(*args, env, timeout=900):
    return subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def patch_of(source: Path, tmp_path: Path, name: str, numbers: list[int]) -> Path:
    """A patch whose new side is the source as it is, as if it had changed lines
    ``numbers`` (from an old text with a comment added)."""
    lines = source.read_text().splitlines(keepends=True)
    old = list(lines)
    for n in numbers:
        old[n - 1] = lines[n - 1].rstrip("\n") + " /* before the patch */\n"
    out = tmp_path / f"{name}.patch"
    out.write_text("".join(difflib.unified_diff(old, lines, f"a/{FILE}", f"b/{FILE}", n=1)))
    return out


def first_executable_lines(profile_kernel, function: str, count: int) -> list[int]:
    """The first executable lines of ``function``, by gcov on the build's .gcno alone (no
    data yet: every line counts 0, but gcov lists which lines are code)."""
    from testbed.coverage.gcov import plan_gcov, run_gcov
    from testbed.coverage.source import find_source
    plan = plan_gcov(find_source(profile_kernel), [FILE])
    assert plan is not None, "the profile kernel has no gcov notes for " + FILE
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    counts = run_gcov(plan, buf.getvalue())[FILE]
    start, end, _ = counts.functions[function]
    return [n for n in sorted(counts.lines) if start <= n <= end][:count]


def test_line_and_patch_coverage_on_the_profile_kernel(profile_kernel, real_qemu, tmp_path):
    env = {**os.environ, "TESTBED_STATE": str(tmp_path / "state")}
    assert profile_kernel.build_tree is not None
    source = (profile_kernel.build_tree / "source").resolve() / FILE
    ran_lines = first_executable_lines(profile_kernel, "calc_map_type_and_dist", 2)
    idle_lines = first_executable_lines(profile_kernel, "pci_p2pmem_find_many", 2)
    ran = patch_of(source, tmp_path, "ran", ran_lines)
    idle = patch_of(source, tmp_path, "idle", idle_lines)
    name = "i23-gcov"
    up = cli("boot", "switch-cmb", "--detach", "--name", name, "--kernel", profile_kernel.spec,
             env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        # the guest's kernel (and so its build tree) comes with the instance
        common = ["run", "switch-cmb", "--guest", name, "-w", "p2p-copy", "--size", "256K",
                  "--pair", "nvme0:nvme1"]
        first = cli(*common, "--coverage", "--patch-coverage", str(ran),
                    "--min-patch-coverage", "100", "--out", str(tmp_path / "ran"), env=env)
        second = cli(*common, "--patch-coverage", str(idle), "--min-patch-coverage", "50",
                     "--out", str(tmp_path / "idle"), env=env)
    finally:
        cli("stop", name, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    cov = json.loads((tmp_path / "ran" / "coverage.json").read_text())
    assert cov["mode"] == "line" and "gcov" in cov["source"]
    p2p = cov["files"][FILE]
    assert p2p["counts"]["lines"]["executed"] > 10 and p2p["counts"]["branches"]["total"] > 10
    assert {"calc_map_type_and_dist", "pci_p2pdma_map_type"} <= set(p2p["executed"])
    assert "pci_p2pmem_find_many" in p2p["not_executed"]
    calc = next(f for f in p2p["functions"] if f["name"] == "calc_map_type_and_dist")
    assert calc["cells"] == {"p2p-copy": 1}
    assert all(p2p["lines"][str(n)] >= 1 for n in ran_lines)
    assert p2p["line_cells"]["p2p-copy"]
    # the executed patch: every changed line ran, by p2p-copy
    pc = json.loads((tmp_path / "ran" / "patch-coverage.json").read_text())
    assert (pc["executed"], pc["measured"], pc["failed"]) == (2, 2, None), pc
    assert all(ln["cells"] == ["p2p-copy"] for ln in pc["lines"])
    assert "2 of 2 changed lines (100%)" in first.stdout
    # the idle patch: none ran, named by file, line and function; the gate fails
    assert second.returncode == 1, second.stdout + second.stderr
    pc = json.loads((tmp_path / "idle" / "patch-coverage.json").read_text())
    assert (pc["executed"], pc["measured"]) == (0, 2), pc
    a, b = idle_lines
    where = f"{FILE}:{a}-{b}" if b == a + 1 else f"{FILE}:{a} (pci_p2pmem_find_many()), " \
        f"{FILE}:{b}"
    assert f"0 of 2 changed lines (0%); not executed: {where}" in second.stdout
    assert "(pci_p2pmem_find_many())" in second.stdout and "FAIL: patch coverage 0%" in \
        second.stdout
    # only the patch's file was measured in the second run (no --coverage)
    assert list(json.loads((tmp_path / "idle" / "coverage.json").read_text())["files"]) == [FILE]
    info = (tmp_path / "ran" / "coverage.info").read_text()
    assert "DA:" in info and "BRDA:" in info
    xml = ET.parse(tmp_path / "ran" / "coverage.xml").getroot()
    assert float(xml.get("line-rate") or 0) > 0 and int(xml.get("branches-valid") or 0) > 0
