"""Function coverage on the image's kernel, through a detached guest: the P2P decisions'
functions are executed, what cannot be traced says why, nothing was lost, and every file
is written.  (The restart path, pmr, is covered by test_workloads' nvme-pmr run.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

TESTBED = [sys.executable, "-m", "testbed"]


def cli(*args, env, timeout=900):
    return subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_function_coverage_on_a_detached_guest(real_qemu, tmp_path):
    env = {**os.environ, "TESTBED_STATE": str(tmp_path / "state")}
    name = "i23-coverage"
    up = cli("boot", "switch-cmb", "--detach", "--name", name, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        out = tmp_path / "out"
        res = cli("run", "switch-cmb", "--guest", name, "-w", "p2p-copy", "-w", "nvmet-p2pmem",
                      "--size", "256K", "--pair", "nvme0:nvme1",
                      "--coverage", "drivers/pci/p2pdma.c",
                      "--coverage", "drivers/vfio/pci/vfio_pci_dmabuf.c",
                      "--coverage", "drivers/nvme/target/configfs.c", "--out", str(out),
                      env=env)
    finally:
        cli("stop", name, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    cov = json.loads((out / "coverage.json").read_text())
    assert cov["mode"] == "function" and cov["lost"] == 0
    assert cov["cells"] == ["p2p-copy", "nvmet-p2pmem"]
    p2p = cov["files"]["drivers/pci/p2pdma.c"]
    assert {"calc_map_type_and_dist", "pci_p2pdma_map_type"} <= set(p2p["executed"]), p2p
    calc = next(f for f in p2p["functions"] if f["name"] == "calc_map_type_and_dist")
    assert calc["cells"] == {"p2p-copy": 1} and calc["start"] < calc["end"]
    # the NVMe target's p2pmem setting: parsed, shown, and the pair checked (and refused:
    # Debian's native multipath puts a subsystem between the namespace and its PCI device)
    nvmet = {f["name"]: f for f in p2p["functions"]}
    for fn in ("pci_p2pdma_enable_store", "pci_p2pdma_enable_show", "pci_p2pmem_find_many",
               "pci_p2pdma_distance_many"):
        assert nvmet[fn]["cells"].get("nvmet-p2pmem", 0) >= 1, nvmet[fn]
    records = json.loads((out / "results.json").read_text())["workloads"]
    judged = [r for r in records if r["name"] == "nvmet-p2pmem" and r.get("predicted")]
    assert [(r["predicted"], r["observed"]) for r in judged] == [("rejected", "rejected")]
    # nvmet is a module the workload itself loads: its calls count from the load on
    target = {f["name"]: f for f in cov["files"]["drivers/nvme/target/configfs.c"]["functions"]}
    assert target["nvmet_ns_p2pmem_store"]["cells"].get("nvmet-p2pmem", 0) >= 1, target
    assert target["nvmet_ns_p2pmem_store"]["status"] == "executed"
    # inlined into its callers in Debian's build: not traceable, and said so
    assert "inlined" in p2p["untraceable"]["cpu_supports_p2pdma"]
    assert "cpu_supports_p2pdma" not in p2p["not_executed"]
    counts = p2p["counts"]["functions"]
    assert counts["executed"] >= 2 and counts["traceable"] > counts["executed"]
    assert counts["defined"] > counts["traceable"]
    # vfio-pci is a module nobody loaded: its file is untraceable, not unexecuted
    vfio = cov["files"]["drivers/vfio/pci/vfio_pci_dmabuf.c"]
    assert vfio["counts"]["functions"]["traceable"] == 0 and vfio["not_executed"] == []
    assert "module" in vfio["note"] and vfio["untraceable"]
    # the files CI engines read, and the report
    info = (out / "coverage.info").read_text()
    assert "FN:" in info and "FNDA:1,calc_map_type_and_dist" in info
    xml = ET.parse(out / "coverage.xml").getroot()
    assert {c.get("filename") for c in xml.iter("class")} == set(cov["files"])
    html = (out / "report.html").read_text()
    assert 'id="coverage"' in html and "cov-hit" in html and "calc_map_type_and_dist" in html
    brief = json.loads((out / "results.json").read_text())["coverage"]
    assert brief["files"]["drivers/pci/p2pdma.c"] == p2p["counts"]


def test_bad_coverage_requests_stop_before_anything_boots(tmp_path):
    env = {**os.environ, "TESTBED_STATE": str(tmp_path / "state")}
    for args, word in ((["--coverage", "../etc"], "outside the kernel source"),
                       (["--coverage", "drivers/nothing-here.c"], "no such file"),
                       (["--coverage-source", str(tmp_path)], "not a kernel source tree")):
        res = cli("run", "switch-cmb", "-w", "p2p-copy", *args, "--out",
                      str(tmp_path / "never"), env=env, timeout=600)
        assert res.returncode == 2 and word in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and not (tmp_path / "never").exists()
