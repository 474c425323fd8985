"""QEMU 11.1 from trixie-backports, installed into the testbed's private root on this
bookworm host (the `installed_qemu` fixture: once per machine, cached), then used like the
host's QEMU: the AMD vIOMMU that 10.0 cannot give (strict and passthrough: predicted =
observed, mechanism and IOMMU evidence included, groups as predicted), and a matrix of two
QEMUs × two topologies whose switch-cmb column on 11.1 is judged like any other.

Lean on purpose: three boots of their own (the AMD strict topology holds both P2P paths,
a faulting switch pair and a root-port pair through the IOMMU), four matrix boots,
256 KiB transfers.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testbed.image.qemu_root import install
from testbed.qemu.probe import probe

pytestmark = pytest.mark.qemu_install
TESTBED = [sys.executable, "-m", "testbed"]
SIZE = 256 << 10
MIXED = "../topologies/amd-iommu-strict-mixed.yaml"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout)


def test_installed_once_listed_and_probed(installed_qemu):
    """The install is cached (the same root, not rebuilt), its QEMU runs through the root's
    loader, and `testbed qemu list` shows what its probe found beside the host's."""
    again = install("trixie-backports")
    assert str(again.root) == installed_qemu.root and again.qemu() == installed_qemu
    caps = probe(installed_qemu)
    assert caps.version >= (11, 1, 0), caps.version_text
    assert "dma-remap" in caps.device_props["amd-iommu"]
    assert "tcg" in caps.accels
    # issue 25's arm64 guests: the same root's aarch64 QEMU has a user-creatable SMMUv3
    arm = installed_qemu.for_program("qemu-system-aarch64")
    assert "primary-bus=" in arm.run(["-device", "arm-smmuv3,help"])
    listed = cli("qemu", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    mine = rows["trixie-backports"]
    assert mine["version"] == caps.version_str and mine["root"] == installed_qemu.root
    assert ["amd-iommu", "dma-remap"] in mine["notable"]
    assert mine["bytes"] > 100 << 20 and "qemu-system-x86" in mine["packages"]
    # validation is per binary: the host's 10.0 refuses the AMD vIOMMU, 11.1 takes it
    refused = cli("validate", "--qemu", "host", "switch-cmb-amd-iommu")
    assert refused.returncode == 2 and "has no dma-remap property" in refused.stderr
    ok = cli("validate", "--qemu", "11.1", "switch-cmb-amd-iommu", "switch-cmb")
    assert ok.returncode == 0, ok.stderr


def test_render_prints_a_script_that_runs_the_root_qemu(installed_qemu, tmp_path):
    """`testbed render` of a topology on 11.1 is a script that really starts that QEMU
    (its loader, modules and firmware): run it paused with QMP, ask for the version."""
    script = tmp_path / "qemu.sh"
    out = cli("render", "--qemu", "trixie-backports", "switch-cmb", "--run-dir",
                  str(tmp_path / "run"), "-o", str(script))
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    assert f"export QEMU_MODULE_DIR={installed_qemu.root}" in text
    assert "ld-linux-x86-64.so.2" in text and f"-L {installed_qemu.root}" in text
    # the machine as rendered, held paused, asked over QMP on stdio
    paused = tmp_path / "paused.sh"
    paused.write_text(text.rstrip("\n") + " -S -qmp stdio\n")
    proc = subprocess.run(["sh", str(paused)], input=(
        '{"execute": "qmp_capabilities"}\n{"execute": "query-version"}\n'
        '{"execute": "quit"}\n'), capture_output=True, text=True, timeout=60)
    replies = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    version = next(r["return"]["qemu"] for r in replies
                   if isinstance(r.get("return"), dict) and "qemu" in r["return"])
    assert (version["major"], version["minor"]) >= (11, 1), proc.stderr


@pytest.mark.topology(MIXED)
def test_amd_strict_both_paths(installed_qemu, guest):
    """The translating AMD vIOMMU: the switch pair maps by bus address and faults at the
    vIOMMU (QEMU model limit); the root-port pair goes through the IOMMU (EPYC is Zen) with
    IOMMU mappings of the provider's BAR; DMA domains."""
    records = guest.workload("p2p-copy", size=SIZE, pairs=(("nvme0", "nvme1"),
                                                           ("nvme0", "nvme2")))
    by_pair = {(r["provider"], r["client"]): r for r in records}
    for r in records:
        assert r["observed"] == r["predicted"] and r["passed"] is True, r
        assert r["observed_map_type"] == r["predicted_map_type"], r
        assert {d["type"] for d in r["mechanism"]["domains"].values()} == {"DMA"}, r
    fault = by_pair[("nvme0", "nvme1")]
    assert (fault["observed"], fault["observed_map_type"], fault["qemu_limit"]) == \
        ("iommu-fault", "bus-address", True)
    assert fault["mechanism"]["iommu_p2p_maps"] == 0
    assert "AMD-Vi: Event logged [IO_PAGE_FAULT" in fault["detail"]
    through = by_pair[("nvme0", "nvme2")]
    assert (through["observed"], through["observed_map_type"], through["data_verified"]) == \
        ("ok", "host-bridge", True)
    assert through["mechanism"]["iommu_p2p_maps"] > 0


@pytest.mark.topology(MIXED)
def test_amd_strict_groups_as_predicted(guest):
    groups, *pairs = guest.workload("isolation")
    assert groups["observed"] == groups["predicted"] == "upstream-walk", groups["detail"]
    assert groups["data"]["acs_differences"] == []
    assert ["sw0-dp0", "nvme0"] in groups["data"]["observed_groups"]
    assert all(p["observed"] == p["predicted"] for p in pairs), pairs


@pytest.mark.topology("switch-cmb-amd-iommu-pt", qemu="11.1")  # the marker chooses a QEMU
def test_amd_passthrough_maps_by_bus_address(installed_qemu, guest):
    """iommu=pt: identity domains, so the switch pair's bus-address DMA reaches the CMB."""
    assert guest.topology.machine.qemu == "11.1"
    (r,) = guest.workload("p2p-copy", size=SIZE, pairs=(("nvme0", "nvme1"),))
    assert (r["predicted"], r["observed"], r["data_verified"], r["passed"]) == \
        ("ok", "ok", True, True), r
    assert r["observed_map_type"] == r["predicted_map_type"] == "bus-address"
    mech = r["mechanism"]
    assert {d["type"] for d in mech["domains"].values()} == {"identity"}, mech
    assert mech["iommu_p2p_maps"] == 0


def test_matrix_two_qemus_two_topologies(installed_qemu, tmp_path):
    """host (10.0) and 11.1 × switch-cmb and rootports-cmb-zen: every cell judged as
    predicted (switch-cmb on 11.1 included), no QEMU regression of verdict or map type."""
    out = tmp_path / "matrix"
    proc = cli("matrix", "-t", "switch-cmb", "-t", "rootports-cmb-zen", "-k", "default",
                   "-q", "host", "-q", "trixie-backports", "-w", "p2p-copy", "--size", "256K",
                   "--jobs", "1", "--out", str(out), timeout=1800)
    doc = json.loads((out / "matrix.json").read_text())
    assert doc["incomplete"] == [], proc.stdout + proc.stderr
    assert [q["label"] for q in doc["qemus"]] == ["host", "trixie-backports"]
    assert doc["qemus"][1]["version"] == probe(installed_qemu).version_str
    assert {(r["topology"], r["qemu"]) for r in doc["runs"]} == {
        (t, q) for t in ("switch-cmb", "rootports-cmb-zen") for q in ("host", "trixie-backports")}
    cells = [c for c in doc["cells"] if c["workload"] == "p2p-copy"]
    assert len(cells) == 2 * 2 * 2  # topologies × QEMUs × pairs
    for c in cells:
        assert c["passed"] is True and c["observed"] == c["predicted"] == "ok", c
        assert c["observed_map_type"] == c["predicted_map_type"], c
    on_11 = {c["observed_map_type"] for c in cells
             if c["topology"] == "switch-cmb" and c["qemu"] == "trixie-backports"}
    assert on_11 == {"bus-address"}
    # differences between the QEMUs: only throughput may differ (TCG MB/s are noisy)
    assert {r["kind"] for r in doc["qemu_regressions"]} <= {"throughput"}, doc["qemu_regressions"]
    assert doc["regressions"] == [] and doc["mechanism_regressions"] == []
    assert proc.returncode == (1 if doc["qemu_regressions"] else 0), proc.stdout
    for run in doc["runs"]:
        results = json.loads((out / run["directory"] / "results.json").read_text())
        assert results["qemu"]["name"] == run["qemu"]
        assert results["qemu"]["version"] == run["qemu_version"]
    md = (out / "matrix.md").read_text()
    assert "default @ host" in md and "default @ trixie-backports" in md
