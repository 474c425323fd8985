"""Workloads end to end on real guests through `testbed run`: its output, passthru, PMR
persistence across a QEMU restart, and bounded hangs.  (Corruption detection of p2p-copy
runs on test_newer_workloads.py's switch-cmb guest.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET


TESTBED = [sys.executable, "-m", "testbed"]


def run_testbed(*args, tmp_path, timeout=900):
    return subprocess.run([*TESTBED, "run", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ,
                                                "TESTBED_STATE": str(tmp_path / "state")})


def test_run_nvme_pmr_passthru_push_exec(real_qemu, tmp_path):
    """One run: p2p-copy and passthru judged ok, the PMR survives a QEMU restart, a pushed
    file is run with --exec, and every result file is written."""
    tool = tmp_path / "hello.sh"
    tool.write_text("#!/bin/sh\necho hello from $(uname -r)\necho to-stderr >&2\nexit 3\n")
    out = tmp_path / "out"
    res = run_testbed("nvme-pmr", "-w", "p2p-copy", "-w", "passthru", "-w", "pmr",
                      "--push", f"{tool}:/root/hello.sh", "--exec", "sh /root/hello.sh",
                      "--coverage", "drivers/pci/p2pdma.c", "--coverage", "drivers/nvme/host/",
                      "--out", str(out), tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout
    for name in ("results.json", "junit.xml", "report.md", "console.log", "dmesg.txt",
                 "topology.yaml", "qemu.sh"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert data["topology"] == "nvme-pmr" and data["kernel"]["p2pdma"] is True
    assert data["qemu"]["accel"] in ("tcg", "kvm") and data["boot_seconds"] > 0
    by = {}
    for w in data["workloads"]:
        by.setdefault(w["name"], []).append(w)
    copy = by["p2p-copy"][0]
    assert (copy["provider"], copy["client"], copy["predicted"], copy["observed"]) == \
        ("nvme0", "nvme1", "ok", "ok")
    assert copy["data_verified"] is True and copy["mb_per_s"] > 0 and copy["reason"]
    assert by["passthru"][0]["observed"] == "ok" and by["passthru"][0]["data_verified"]
    pmr = by["pmr"][0]
    assert pmr["observed"] == "ok" and pmr["data_verified"] is True
    assert "restart" in pmr["detail"]
    ex = by["exec"][0]
    assert ex["command"] == "sh /root/hello.sh" and ex["exit_status"] == 3
    assert ex["stdout"].startswith("hello from 7.") and ex["stderr"] == "to-stderr\n"
    assert "qemu-system-x86_64" in (out / "qemu.sh").read_text()
    subprocess.run(["sh", "-n", str(out / "qemu.sh")], check=True)
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("failures") == "0"
    # --coverage across the pmr workload's QEMU restart: counted before it, traced again after
    cov = json.loads((out / "coverage.json").read_text())
    assert cov["cells"] == ["p2p-copy", "passthru", "pmr", "exec"] and cov["lost"] == 0
    assert "drivers/nvme/host/pci.c" in cov["files"] and "drivers/nvme/host/core.c" in cov["files"]
    p2p = {f["name"]: f for f in cov["files"]["drivers/pci/p2pdma.c"]["functions"]}
    assert set(p2p["pci_p2pdma_map_type"]["cells"]) == {"p2p-copy", "passthru"}
    assert cov["problems"] == []  # the tracing was set up again after the restart


def test_faulting_and_hanging_workloads_are_bounded(real_qemu, tmp_path):
    """Under a translating vIOMMU the P2P copy faults (as predicted: exit 0); a user command
    that hangs is cut at --timeout and the run still collects everything.  The isolation
    workload reports the switch's predicted hole as a finding in every result file."""
    out = tmp_path / "out"
    res = run_testbed("switch-cmb-intel-iommu", "-w", "isolation", "-w", "p2p-copy",
                      "--exec", "sleep 600", "--timeout", "20", "--out", str(out),
                      tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((out / "results.json").read_text())
    copies = [w for w in data["workloads"] if w["name"] == "p2p-copy"]
    assert copies and all(w["observed"] == "iommu-fault" and w["qemu_limit"] for w in copies)
    assert any("PTE" in line for w in copies for line in w["dmesg"].get("iommu-fault", []))
    hung = [w for w in data["workloads"] if w["name"] == "exec"][0]
    assert hung["exit_status"] == -1 and hung["detail"] == "timed out"
    assert "DMAR" in (out / "dmesg.txt").read_text()
    assert (out / "console.log").stat().st_size > 0
    iso = [w for w in data["workloads"] if w["name"] == "isolation"]
    assert [(w.get("provider"), w["predicted"], w["observed"]) for w in iso] == [
        (None, "upstream-walk", "upstream-walk"),
        ("nvme0", "isolation-hole", "isolation-hole"),
        ("nvme1", "isolation-hole", "isolation-hole")]
    assert "FINDING: isolation nvme0 <- nvme1: isolation hole" in res.stdout
    assert "2 finding(s)" in res.stdout.splitlines()[-1]
    assert "## Findings" in (out / "report.md").read_text()
    assert (out / "junit.xml").read_text().count('name="finding"') == 2
