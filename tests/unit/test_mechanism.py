"""The mechanism half of verdicts (pure): the oracle's map type from the tree and the kernel
command line, the guest's trace parsed and judged, records and the matrix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from testbed.guest_tool import trace
from testbed.qemu.cmdline import machine_argv
from testbed.qemu.devices import bus_numbers
from testbed.qemu.probe import Capabilities, CpuInfo
from testbed.qemu.validate import capabilities, constraints
from testbed.run.cells import Matrix, add_run
from testbed.results.model import RunResult
from testbed.spec import load_topology
from testbed.spec.parse import parse
from testbed.spec.yamlsource import load
from testbed.verdicts.cmdline import kernel_view
from testbed.verdicts.mechanism import Observed, judge, observe_mechanism
from testbed.verdicts.predict import predict
from testbed.verdicts.record import Record

QEMU64 = CpuInfo("qemu64", "AuthenticAMD", 15)
EPYC = CpuInfo("EPYC", "AuthenticAMD", 0x17)


def topo_of(text: str):
    return parse(load(textwrap.dedent(text), "t.yaml"), "t.yaml", Path("/nonexistent"))


# -- the oracle ----------------------------------------------------------------------------

def test_map_types_of_the_library():
    assert predict(load_topology("switch-cmb-zen"), "nvme0", "nvme1", EPYC).map_type == \
        "bus-address"
    rp = predict(load_topology("rootports-cmb-zen"), "nvme0", "nvme1", EPYC)
    assert (rp.verdict, rp.map_type, rp.translating) == ("ok", "host-bridge", False)
    rpi = predict(load_topology("rootports-cmb-zen-intel-iommu"), "nvme0", "nvme1", EPYC)
    assert (rpi.verdict, rpi.map_type, rpi.translating) == ("ok", "host-bridge", True)
    assert predict(load_topology("rootports-cmb"), "nvme0", "nvme1", QEMU64).map_type == \
        "not-supported"


@pytest.mark.parametrize("words, verdict, translating", [
    ((), "iommu-fault", True),
    (("intel_iommu=off",), "ok", False),
    (("iommu=off",), "ok", False),
    (("iommu=pt",), "ok", False),
    (("iommu.passthrough=1",), "ok", False),
    (("iommu.passthrough=1", "iommu.passthrough=0"), "iommu-fault", True),  # later wins
])
def test_the_kernel_command_line_changes_the_prediction(words, verdict, translating):
    topo = load_topology("switch-cmb-intel-iommu")
    view = kernel_view(topo, extra=words)
    p = predict(topo, "nvme0", "nvme1", QEMU64, view=view)
    assert (p.verdict, p.map_type, view.translating) == (verdict, "bus-address", translating)
    if "intel_iommu=off" in words:
        assert "intel_iommu=off" in p.reason and not view.acs_requested


def test_a_topology_command_line_is_read_too():
    topo = load_topology(Path(__file__).parents[1] / "topologies" / "intel-iommu-off.yaml")
    p = predict(topo, "nvme0", "nvme1", QEMU64)
    assert (p.verdict, p.map_type, p.qemu_limit) == ("ok", "bus-address", False)


def test_own_cmb_for_own_io():
    for name in ("switch-cmb", "switch-cmb-intel-iommu", "rootports-cmb"):
        p = predict(load_topology(name), "nvme0", "nvme0", QEMU64)
        assert (p.verdict, p.map_type, p.distance) == ("ok", "bus-address", 0), name


def test_two_host_bridges():
    topo = load_topology("hostbridges-cmb-zen")
    ok = predict(topo, "nvme0", "nvme1", EPYC)
    assert (ok.verdict, ok.map_type) == ("ok", "host-bridge")
    no = predict(topo, "nvme1", "nvme0", QEMU64)
    assert (no.verdict, no.map_type) == ("rejected", "not-supported")
    assert "host bridge hb1" in no.reason and "8086:29c0" in no.reason
    assert "host bridges" in no.reason


def test_an_expectation_may_state_the_map_type():
    topo = topo_of("""
        pcie:
          - root_port: rp0
            device:
              switch: sw0
              downstream: [{nvme: a, cmb: 64M}, {nvme: b}]
        expect:
          - {provider: a, client: b, verdict: ok, map_type: host-bridge}
        """)
    p = predict(topo, "a", "b", QEMU64)
    assert (p.verdict, p.map_type, p.source) == ("ok", "host-bridge", "topology")


# -- expander host bridges in the language and on the command line ---------------------------

HB = """
    pcie:
      - root_port: rp0
        device: {nvme: n0, cmb: 64M}
      - host_bridge: hb1
        root_ports:
          - root_port: rp1
            device: {nvme: n1, cmb: 64M}
      - host_bridge: hb2
        bus_nr: 200
        root_ports:
          - {root_port: rp2}
    """


def test_host_bridges_parse_and_render():
    topo = topo_of(HB)
    assert [h.name for h in topo.host_bridges()] == ["hb1", "hb2"]
    assert bus_numbers(topo) == {"hb1": 85, "hb2": 200}
    assert topo.host_bridge_of("n1").name == "hb1" and topo.host_bridge_of("n0") is None
    argv = machine_argv(topo, "qemu", Path("/r"), "tcg")
    assert "pxb-pcie,id=hb1,bus=pcie.0,bus_nr=85" in argv
    assert "pcie-root-port,id=rp1,bus=hb1,chassis=2,slot=0" in argv
    assert constraints(topo) == []


@pytest.mark.parametrize("text, message", [
    ("pcie: [{host_bridge: h}]", "needs a list of root ports"),
    ("pcie: [{host_bridge: h, bus_nr: 300, root_ports: [{root_port: r}]}]", "between 1 and 254"),
    ("pcie: [{host_bridge: h, root_ports: [{nvme: n}]}]", "cannot be placed in a host bridge"),
    ("pcie: [{root_port: r, device: {host_bridge: h, root_ports: []}}]", "only on the root complex"),
])
def test_bad_host_bridges(text, message):
    from testbed.errors import SpecError
    with pytest.raises(SpecError) as info:
        topo_of(text + "\n")
    assert message in str(info.value)


def test_bus_numbers_must_leave_room():
    topo = topo_of("""
        pcie:
          - root_port: rp0
            device: {switch: s, downstream: [{nvme: a}, {nvme: b}, {nvme: c}]}
          - host_bridge: hb1
            bus_nr: 3
            root_ports: [{root_port: rp1}]
        """)
    (p,) = constraints(topo)
    assert "q35's root complex needs 6 bus numbers from 0" in p.message and p.line == 3


def test_amd_iommu_without_dma_remap_is_refused_as_a_model_limit():
    caps = Capabilities(path="/q", version=(10, 0, 2), version_text="QEMU 10.0.2",
                        devices=frozenset({"pcie-root-port", "nvme", "nvme-ns", "amd-iommu"}),
                        nvme_props=frozenset({"cmb_size_mb"}), cpu_models=frozenset({"qemu64"}),
                        device_props={"amd-iommu": frozenset({"intremap", "xtsup"})})
    topo = topo_of("iommu: amd\npcie: [{root_port: r, device: {nvme: n}}]\n")
    (p,) = capabilities(topo, caps)
    assert p.path == "iommu" and "dma-remap" in p.message and "model limit" in p.message
    newer = Capabilities(**{**caps.__dict__, "device_props": {"amd-iommu": frozenset(
        {"dma-remap"})}})
    assert capabilities(topo, newer) == []


# -- what the guest reports ------------------------------------------------------------------

TRACE = """\
# tracer: nop
# entries-in-buffer/entries-written: 5/5   #P:2
 python3-233 [000] ...1. 23.657748: calc: (pci_p2pdma_map_type+0xe3/0x100 <- calc_map_type_and_dist) provider="0000:04:00.0" client="0000:03:00.0" dist=4 map=3
 python3-233 [000] ...1. 23.660073: map_type: (__pci_p2pdma_update_state+0x39/0x60 <- pci_p2pdma_map_type) provider="0000:04:00.0" client="0000:03:00.0" map=3
 python3-233 [000] ...1. 23.661073: map_type: (__pci_p2pdma_update_state+0x39/0x60 <- pci_p2pdma_map_type) provider="0000:04:00.0" client="0000:03:00.0" map=4
 python3-233 [000] ...1. 23.662073: map: IOMMU: iova=0x00000000fff20000 - 0x00000000fff40000 paddr=0x0000000100020000 size=131072
 python3-233 [000] ...1. 23.663073: unmap: IOMMU: iova=0x00000000fff20000 - 0x00000000fff40000 size=131072 unmapped_size=131072
"""


def test_the_trace_is_parsed():
    events = list(trace.parse(TRACE))
    assert [e["event"] for e in events] == ["calc", "map_type", "map_type", "map", "unmap"]
    assert events[0]["provider"] == "0000:04:00.0" and events[0]["dist"] == "4"
    assert events[3]["paddr"] == "0x0000000100020000"


def test_iommu_mappings_of_a_provider_bar_are_told_apart(monkeypatch):
    monkeypatch.setattr(trace, "p2pmem_bars", lambda: [("0000:04:00.0", 2, 0x100000000,
                                                        0x103ffffff)])
    ev = trace._iommu_evidence([(0xfff20000, 0x100020000, 131072), (0x1000, 0x5000, 4096)],
                               [(1, 0xfff20000)], 0)
    assert (ev["maps"], ev["p2p_map_count"], ev["p2p_unmap_count"]) == (2, 1, 1)
    assert ev["p2p_maps"][0]["provider"] == "0000:04:00.0"


DOC = {"ok": True, "observed": [{"provider": "0000:04:00.0", "client": "0000:03:00.0",
                                 "map_type": "bus-address", "map_types": {"bus-address": 4},
                                 "requests": 4, "distance": 4}],
       "iommu": {"p2p_map_count": 0, "domains": {"0000:03:00.0": {"group": 7, "type": "DMA"}}}}


def test_observed_and_unobserved():
    m = observe_mechanism(DOC, "0000:04:00.0", "0000:03:00.0")
    assert (m.map_type, m.distance, m.requests, m.iommu_p2p_maps) == ("bus-address", 4, 4, 0)
    assert m.domains["0000:03:00.0"]["type"] == "DMA" and m.why is None
    other = observe_mechanism(DOC, "0000:03:00.0", "0000:04:00.0")
    assert other.map_type is None and "0000:04:00.0->0000:03:00.0" in other.why
    off = observe_mechanism({"ok": False, "why": "the kernel has no tracefs"}, "a", "b")
    assert off.map_type is None and off.why == "the kernel has no tracefs"
    assert "not asked" in observe_mechanism(None, "a", "b").why


@pytest.mark.parametrize("observed, predicted, translating, problem", [
    (Observed("bus-address", iommu_p2p_maps=0), "bus-address", True, ""),
    (Observed("bus-address", iommu_p2p_maps=3), "bus-address", True, "yet the IOMMU mapped"),
    (Observed("host-bridge", iommu_p2p_maps=4), "host-bridge", True, ""),
    (Observed("host-bridge", iommu_p2p_maps=0), "host-bridge", True, "no IOMMU mapping"),
    (Observed("host-bridge", iommu_p2p_maps=0), "host-bridge", False, ""),
    (Observed("host-bridge"), "bus-address", False, "chose host-bridge, not bus-address"),
    (Observed(None, why="no tracing"), "bus-address", False, ""),
])
def test_judging_the_mechanism(observed, predicted, translating, problem):
    got = judge(observed, predicted, translating)
    assert (problem in got) if problem else got == ""


def test_a_record_passes_only_with_both_halves():
    r = Record("p2p-copy", "a", "b", "ok", "why", "ok", predicted_map_type="bus-address",
               observed_map_type="host-bridge")
    assert r.judged and r.verdict_matches and r.mechanism_matches is False and not r.passed
    assert "mechanism: predicted bus-address, observed host-bridge" in r.mismatch
    assert r.mechanism_text == "host-bridge != bus-address"
    unobserved = Record("p2p-copy", "a", "b", "ok", "why", "ok",
                        predicted_map_type="bus-address", mechanism={"unobserved": "no BTF"})
    assert unobserved.passed and unobserved.mechanism_text == "bus-address (unobserved)"
    assert unobserved.to_json()["mechanism"] == {"unobserved": "no BTF"}


def test_the_matrix_lists_a_changed_mechanism_apart():
    m = Matrix(kernels=[{"label": k, "spec": k, "description": k, "release": None,
                         "p2pdma": True} for k in ("base", "new")], topologies=["t"])
    for kernel, mt in (("base", "bus-address"), ("new", "host-bridge")):
        r = RunResult(topology="t", finished=True)
        r.workloads = [Record("p2p-copy", "a", "b", "ok", "why", "ok", True, 20.0,
                              predicted_map_type="bus-address", observed_map_type=mt)]
        add_run(m, "t", kernel, r, kernel)
    assert m.regressions() == []
    (reg,) = m.mechanism_regressions()
    assert (reg.kind, reg.was, reg.now) == ("mechanism", "ok by bus-address", "ok by host-bridge")
    assert m.status == 1
    assert m.to_json()["mechanism_regressions"][0]["kernel"] == "new"
    from testbed.run.render import render_md, summary
    assert "MECHANISM REGRESSION" in summary(m) and "Mechanism regressions" in render_md(m)


def test_a_bounded_helper_program_reports_its_status_and_is_killed_in_time():
    """The tool mounts tracefs with mount(8) started by os.posix_spawnp (no subprocess import
    under TCG): its exit status comes back, a missing program is None, and one that
    outlives its bound is killed and reaped."""
    import time
    from testbed.guest_tool.trace import _run_bounded
    assert _run_bounded(["true"], 5) == 0 and _run_bounded(["false"], 5) == 1
    assert _run_bounded(["no-such-program-p2pdma"], 5) is None
    start = time.monotonic()
    assert _run_bounded(["sleep", "30"], 0.3) is None
    assert time.monotonic() - start < 5
