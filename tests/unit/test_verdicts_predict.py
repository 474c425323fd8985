"""The oracle computes verdicts from the tree (pure: CPU info is given, not probed)."""

from __future__ import annotations

import pytest

from testbed.verdicts.predict import pairs, predict
from testbed.qemu.probe import CpuInfo
from testbed.spec import load_topology
from testbed.spec.parse import parse
from testbed.spec.yamlsource import load

QEMU64 = CpuInfo("qemu64", "AuthenticAMD", 15)
EPYC = CpuInfo("EPYC", "AuthenticAMD", 0x17)
SKYLAKE = CpuInfo("Skylake-Server", "GenuineIntel", 6)


def spec(text: str):
    return parse(load(text, "t.yaml"), "t.yaml")


SWITCH = """
pcie:
  - root_port: rp0
    device:
      switch: sw0
      downstream:
        - {nvme: a, cmb: 2M}
        - {nvme: b, cmb: 2M}
  - root_port: rp1
    device: {nvme: c}
"""


def test_common_switch_is_ok_by_bus_address():
    p = predict(spec(SWITCH), "a", "b", QEMU64)
    assert (p.verdict, p.map_type, p.qemu_limit) == ("ok", "bus-address", False)
    assert "sw0" in p.reason


def test_across_root_ports_depends_on_the_cpu_not_the_name():
    topo = spec(SWITCH)
    assert predict(topo, "a", "c", QEMU64).verdict == "rejected"
    assert predict(topo, "a", "c", SKYLAKE).verdict == "rejected"
    zen = predict(topo, "a", "c", EPYC)
    assert (zen.verdict, zen.map_type) == ("ok", "host-bridge")
    assert "0x17" in zen.reason


@pytest.mark.parametrize("model", ["intel", "virtio", "amd"])
def test_translating_viommu_faults_bus_address_mappings(model):
    topo = spec(SWITCH + f"iommu: {{model: {model}, mode: strict}}\n")
    p = predict(topo, "a", "b", QEMU64)
    assert (p.verdict, p.qemu_limit) == ("iommu-fault", True)
    assert "QEMU model limit" in p.reason


def test_passthrough_viommu_is_ok():
    topo = spec(SWITCH + "iommu: {model: intel, mode: passthrough}\n")
    assert predict(topo, "a", "b", QEMU64).verdict == "ok"


def test_zen_through_a_translating_iommu_is_mapped_normally():
    topo = spec(SWITCH + "iommu: virtio\n")
    p = predict(topo, "a", "c", EPYC)
    assert (p.verdict, p.map_type) == ("ok", "host-bridge")


def test_nested_switches_share_the_outer_switch():
    topo = load_topology("fabric-large")
    p = predict(topo, "nvme0", "nvme3", QEMU64)
    assert p.verdict == "ok" and "sw0" in p.reason
    assert predict(topo, "nvme0", "nvme1", QEMU64).reason.count("sw1") == 1
    assert predict(topo, "nvme1", "nvme6", QEMU64).verdict == "rejected"


def test_root_complex_endpoints_have_no_common_bridge():
    topo = spec("pcie:\n  - {nvme: a, cmb: 4M}\n  - {nvme: b}\n")
    assert predict(topo, "a", "b", QEMU64).verdict == "rejected"
    assert predict(topo, "a", "b", EPYC).verdict == "ok"


def test_pairs_need_a_cmb_provider():
    topo = spec(SWITCH)
    assert pairs(topo) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c")]
    assert predict(topo, "c", "a", QEMU64).verdict == "unsupported"


def test_kernel_without_p2pdma_is_unsupported():
    assert predict(spec(SWITCH), "a", "b", QEMU64, kernel_p2pdma=False).verdict == "unsupported"


def test_explicit_expectation_overrides():
    topo = spec(SWITCH + "expect:\n  - {provider: a, client: c, verdict: ok, reason: trust me}\n")
    p = predict(topo, "a", "c", QEMU64)
    assert (p.verdict, p.source, p.reason) == ("ok", "topology", "trust me")


def test_library_predictions():
    got = {}
    cpus = {"qemu64": QEMU64, "EPYC": EPYC, "max": CpuInfo("max", "", 0)}
    from testbed.spec import library
    for name in library():
        topo = load_topology(name)
        got[name] = {predict(topo, a, b, cpus[topo.machine.cpu]).verdict
                     for a, b in pairs(topo)}
    assert got["switch-cmb"] == {"ok"}
    assert got["rootports-cmb"] == {"rejected"}
    assert got["rootports-cmb-zen"] == {"ok"}
    assert got["switch-cmb-intel-iommu"] == got["switch-cmb-virtio-iommu"] == {"iommu-fault"}
    assert got["switch-cmb-iommu-pt"] == {"ok"}
    assert got["switch-cmb-amd-iommu"] == {"iommu-fault"}
    assert got["switch-cmb-amd-iommu-pt"] == got["rootports-cmb-zen-amd-iommu"] == {"ok"}
    assert got["fabric-large"] == {"ok", "rejected"}
    # arm64: no allow-listed host bridge, no CPU rule; SMMUv3 like the other vIOMMUs
    assert got["switch-cmb-arm64"] == got["switch-cmb-arm64-smmuv3-pt"] == {"ok"}
    assert got["rootports-cmb-arm64"] == {"rejected"}
    assert got["switch-cmb-arm64-smmuv3"] == {"iommu-fault"}
