"""The mechanism half of a verdict on real guests: a wrong stated mechanism fails the run
and is named, a command line that turns the vIOMMU off is predicted (and observed) as
such, and a QEMU model limit is refused before anything boots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

TESTBED = [sys.executable, "-m", "testbed"]
TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"


def run(*args, tmp_path, timeout=900):
    return subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TESTBED_STATE": str(tmp_path / "state")})


def test_a_wrong_mechanism_expectation_fails_the_run(real_qemu, tmp_path):
    out = tmp_path / "out"
    res = run("run", str(TOPOLOGIES / "wrong-mechanism.yaml"), "-w", "p2p-copy", "--size",
              "256K", "--out", str(out), tmp_path=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "MECHANISM MISMATCH" in res.stdout and "bus-address != host-bridge" in res.stdout
    data = json.loads((out / "results.json").read_text())
    assert data["status"] == "fail"
    wrong = [w for w in data["workloads"] if w["name"] == "p2p-copy" and not w["passed"]]
    assert [(w["provider"], w["client"], w["observed"], w["observed_map_type"],
             w["predicted_map_type"]) for w in wrong] == [
        ("nvme0", "nvme1", "ok", "bus-address", "host-bridge")]
    failure = ET.parse(out / "junit.xml").getroot().find(".//failure")
    assert "mechanism: predicted host-bridge, observed bus-address" in failure.get("message")
    assert "host-bridge" in (out / "report.md").read_text()


def test_the_kernel_command_line_is_part_of_the_prediction(real_qemu, tmp_path):
    """intel strict vIOMMU, but intel_iommu=off: no IOMMU, so the switch pair is ok by
    bus address (not the fault a translating vIOMMU gives)."""
    out = tmp_path / "out"
    res = run("run", str(TOPOLOGIES / "intel-iommu-off.yaml"), "-w", "p2p-copy", "--size",
              "256K", "--out", str(out), tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    records = [w for w in json.loads((out / "results.json").read_text())["workloads"]
               if w["name"] == "p2p-copy"]
    assert [(w["predicted"], w["observed"], w["observed_map_type"]) for w in records] == \
        [("ok", "ok", "bus-address")] * 2
    assert all(w["mechanism"].get("domains", {}) == {} for w in records)  # no IOMMU groups
    assert "intel_iommu=off" in records[0]["reason"]


def test_amd_iommu_is_refused_before_boot_in_seconds(real_qemu, tmp_path):
    from testbed.qemu.probe import probe
    spec = tmp_path / "amd.yaml"
    spec.write_text("iommu: {model: amd, mode: strict}\npcie:\n"
                    "  - root_port: rp0\n    device: {nvme: nvme0, cmb: 64M}\n")
    if "dma-remap" in probe().device_props.get("amd-iommu", ()):
        # a QEMU whose amd-iommu remaps DMA has no such limit: the file validates
        assert run("validate", str(spec), tmp_path=tmp_path).returncode == 0
        return
    start = time.monotonic()
    res = run("run", str(spec), "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert time.monotonic() - start < 5
    assert res.returncode == 2 and "dma-remap" in res.stderr and "model limit" in res.stderr
    assert f"{spec}:1:8: iommu:" in res.stderr
    assert not (tmp_path / "out").exists()
