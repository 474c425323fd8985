"""The isolation oracle against recorded guests (pure: no QEMU).

tests/data/isolation/ holds what ``p2pdma-guest inventory --grouping-symbols`` printed in
guests of Debian's 7.3.4 kernel (see its README): the library's vIOMMU topologies and
cases the library leaves out (two switch levels, every root port without ACS,
``pci=disable_acs_redir``, ``pci=config_acs`` by address and by ID, no vIOMMU).  The model
must predict each guest's groups and ACS registers exactly, from the topology file (plus,
for the root-bus functions the topology does not describe, the guest's tree).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from testbed.guest.result import CommandResult
from testbed.guest.treecheck import map_names
from testbed.qemu.probe import CpuInfo
from testbed.results.model import RunResult
from testbed.results.summary import summary
from testbed.results.writer import write_results
from testbed.spec import load_topology
from testbed.spec.model import RootPort, Topology
from testbed.verdicts.fabric import (
    Dev,
    Fabric,
    complete_names,
    from_inventory,
    from_topology,
    machine_devices,
)
from testbed.verdicts.grouping import (
    ACS_V3,
    ACS_V3_BASE,
    ALGORITHMS,
    NO_GROUPS,
    OTHER,
    UPSTREAM_WALK,
    expected_algorithm,
    partition,
)
from testbed.verdicts.isolation import (
    HOLE,
    acs_differences,
    classify,
    domain_type,
    observe_groups,
    predict_isolation,
    reach,
)
from testbed.workloads import default_workloads
from testbed.workloads.base import Context
from testbed.workloads.isolation import Isolation

DATA = Path(__file__).resolve().parent.parent / "data" / "isolation"
CASES = sorted(p.stem for p in DATA.glob("*.json"))
SWITCHES = {"lib-switch-cmb-intel-iommu", "lib-switch-cmb-virtio-iommu",
            "lib-switch-cmb-iommu-pt"}


def load(case: str) -> tuple[Topology, dict]:
    topo = load_topology(case[4:] if case.startswith("lib-") else DATA / f"{case}.yaml")
    return topo, json.loads((DATA / f"{case}.json").read_text())


def model(case: str):
    topo, inv = load(case)
    names, diffs = map_names(topo, inv)
    assert diffs == []
    names = complete_names(topo, inv, names)
    fab = from_topology(topo, machine_devices(topo, inv, names), names)
    pred = predict_isolation(topo, fab, inv["kernel"]["grouping_symbols"])
    obs = observe_groups(inv, names, fab.probe_order())
    return topo, inv, names, fab, pred, obs


def test_corpus_has_the_cases():
    assert len(CASES) == 11 and SWITCHES <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_predicted_groups_and_acs_equal_the_guests(case):
    topo, inv, names, fab, pred, obs = model(case)
    assert set(names) == {n.name for n in topo.nodes()}
    assert acs_differences(fab, from_inventory(inv, names)) == []
    assert pred.groups == obs.groups
    if topo.iommu.model == "none":
        assert (pred.algorithm, classify(obs, pred)) == (NO_GROUPS, NO_GROUPS)
        assert inv["iommu_groups"] == {"present": True, "groups": {}}
    else:
        assert (pred.algorithm, classify(obs, pred)) == (UPSTREAM_WALK, UPSTREAM_WALK)
        assert set(obs.types.values()) == {pred.domain_type}


@pytest.mark.parametrize("case", CASES)
def test_the_algorithm_explains_the_guests_own_registers(case):
    """The same algorithm on the tree and ACS registers the guest read: the verified part."""
    topo, inv, names, _, _, obs = model(case)
    if topo.iommu.model == "none":
        return
    guest = from_inventory(inv, names)
    assert partition(guest, ALGORITHMS[UPSTREAM_WALK].groups(guest)) == obs.groups


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "rootports3-config-acs"))
def test_the_topology_alone_predicts_the_shared_groups(case):
    """Without a guest (root-bus extras as the testbed builds them) the multi-member groups
    are the same; only the address form of pci=config_acs needs the guest's numbers."""
    topo, *_, obs = model(case)
    pred = predict_isolation(topo, from_topology(topo), None)
    assert [g for g in pred.groups if len(g) > 1] == [g for g in obs.groups if len(g) > 1]


def test_config_acs_by_address_needs_the_guest():
    topo, _, names, fab, _, _ = model("rootports3-config-acs")
    assert (fab.d["rp1"].acs_ctrl, fab.d["rp0"].acs_ctrl, fab.d["rp2"].acs_ctrl) == (0, 0x1F, 0x1F)
    alone = from_topology(topo)
    assert alone.d["rp1"].acs_ctrl == 0x1F  # 00:02.0 cannot be matched without the guest


@pytest.mark.parametrize("case", CASES)
def test_holes(case):
    _, _, _, _, pred, obs = model(case)
    holes = {(r.target, r.initiator, r.bridge) for r in pred.holes(obs.groups)} \
        if obs.groups else set()
    if case in SWITCHES:
        assert holes == {("nvme0", "nvme1", "sw0-dp1"), ("nvme1", "nvme0", "sw0-dp0")}
    elif case == "fabric-large-intel":
        below_sw1, below_sw2 = {"nvme0", "nvme1", "nvme2"}, {"nvme3", "nvme4"}
        assert {(t, i) for t, i, _ in holes} == \
            {(a, b) for a in below_sw1 | below_sw2 for b in below_sw1 | below_sw2
             if (a in below_sw1) != (b in below_sw1)}
        assert {b for t, i, b in holes} == {"sw0-dp0", "sw0-dp1"}
        assert len(pred.reach) == 20  # every pair below rp0 reaches
    elif case == "hostbridges-intel":
        assert holes == set() and [(r.target, r.initiator) for r in pred.reach] == [
            ("nvme2", "nvme3"), ("nvme3", "nvme2")]
    elif case == "rootports3-config-acs":
        assert {(t, i) for t, i, _ in holes} == {("nvme2", "nvme3"), ("nvme3", "nvme2")}
    else:
        assert holes == set(), case


def test_acs_false_on_a_root_port_closes_the_hole_by_merging():
    """rootports-acs-off with ACS on again is switch-cmb's hole under rp2; acs: false makes
    rp2 and its whole subtree one group (as the recorded guest shows)."""
    topo, *_ = model("lib-rootports-acs-off")
    with_acs = dataclasses.replace(topo, pcie=tuple(
        dataclasses.replace(n, acs=True) if isinstance(n, RootPort) else n for n in topo.pcie))
    on = predict_isolation(with_acs, from_topology(with_acs), None)
    off = predict_isolation(topo, from_topology(topo), None)
    assert [(r.target, r.initiator) for r in on.holes()] == [("nvme2", "nvme3"),
                                                             ("nvme3", "nvme2")]
    assert off.holes() == [] and len(off.reach) == 2
    assert ["rp2", "sw0", "sw0-dp0", "sw0-dp1", "nvme2", "nvme3"] in off.groups
    assert ["rp0", "nvme0"] in off.groups and ["rp0"] in on.groups


def test_v3_series_groups_as_its_patches_describe():
    topo, *_, pred, _ = model("lib-switch-cmb-intel-iommu")
    shared = [g for g in pred.models[ACS_V3] if len(g) > 1]
    assert shared == [["sw0", "sw0-dp0", "sw0-dp1", "nvme0", "nvme1"]]  # ICH9 split too
    assert [g for g in pred.models[ACS_V3_BASE] if len(g) > 1] == \
        [["sw0-dp0", "sw0-dp1", "nvme0", "nvme1"]]
    assert pred.holes(pred.models[ACS_V3]) == []
    _, _, _, _, off, _ = model("lib-rootports-acs-off")
    # v3: a root port without an ACS capability isolates; the switch below still shares
    assert [g for g in off.models[ACS_V3] if len(g) > 1] == \
        [["sw0", "sw0-dp0", "sw0-dp1", "nvme2", "nvme3"]]


def test_observed_groups_are_named_after_the_model_that_explains_them():
    *_, pred, obs = model("lib-switch-cmb-intel-iommu")
    obs.groups = pred.models[ACS_V3]
    assert classify(obs, pred) == ACS_V3
    obs.groups = [["nvme0", "nvme1"]]
    assert classify(obs, pred) == OTHER


@pytest.mark.parametrize("symbols, algorithm", [
    (None, UPSTREAM_WALK),
    ({"get_pci_function_alias_group": True, "pci_bus_isolated": False}, UPSTREAM_WALK),
    ({"get_pci_function_alias_group": False, "pci_bus_isolated": True}, ACS_V3),
    ({"pci_reachable_set": True}, ACS_V3),
    ({"pci_device_group": True}, UPSTREAM_WALK),
])
def test_algorithm_from_kallsyms(symbols, algorithm):
    assert expected_algorithm(symbols)[0] == algorithm


def test_reach_is_egress_control_at_the_initiators_port():
    """A downstream port with ACS stops its own device's requests, not the other way."""
    full = 0x1D
    fab = Fabric([Dev("rp", "root_port", None, 8, acs_cap=0x5F, acs_ctrl=full),
                  Dev("usp", "upstream", "rp"),
                  Dev("dpa", "downstream", "usp", 0, acs_cap=0x5F, acs_ctrl=full),
                  Dev("dpb", "downstream", "usp", 8),
                  Dev("a", "endpoint", "dpa"), Dev("b", "endpoint", "dpb")])
    assert reach(fab, "a", "b") is None
    r = reach(fab, "b", "a")
    assert r is not None and (r.bridge, r.switch, r.why) == ("dpb", "usp",
                                                             "has no ACS capability")


@pytest.mark.parametrize("words, expected", [
    (("intel_iommu=on", "iommu.strict=1", "iommu.passthrough=0"), "DMA"),
    (("intel_iommu=on", "iommu=pt"), "identity"),
    (("iommu.strict=1", "iommu.strict=0"), "DMA-FQ"),
    (("intel_iommu=off",), None),
])
def test_domain_type(words, expected):
    topo = load_topology("switch-cmb-intel-iommu")
    assert domain_type(topo, words) == expected


def test_isolation_is_a_default_workload_under_a_viommu():
    assert "isolation" in default_workloads(load_topology("switch-cmb-intel-iommu"))
    assert "isolation" not in default_workloads(load_topology("switch-cmb"))


# -- the workload, on a stand-in guest that answers with a recorded inventory ---------------

class RecordedGuest:
    def __init__(self, case: str):
        self.topology, self.recorded = load(case)
        self.inventory = dict(self.recorded, kernel={})
        self.names, _ = map_names(self.topology, self.recorded)

    def update(self, seen):
        self.inventory, self.names = seen.inventory, seen.names

    def run(self, command, timeout=60.0, stdin=None):
        assert "--grouping-symbols" in command
        return CommandResult(command, 0, json.dumps(self.recorded), "", 1.5)


def run_isolation(case: str):
    guest = RecordedGuest(case)
    ctx = Context(guest=guest, topology=guest.topology,  # type: ignore[arg-type]
                  cpu=CpuInfo("qemu64", "AuthenticAMD", 15))
    return Isolation().run(ctx), guest


def test_workload_on_the_switch_reports_the_hole_as_a_passing_finding(tmp_path):
    records, guest = run_isolation("lib-switch-cmb-intel-iommu")
    assert guest.inventory["kernel"]["grouping_symbols"]["get_pci_function_alias_group"]
    groups, *pairs = records
    assert (groups.provider, groups.predicted, groups.observed) == (None, UPSTREAM_WALK,
                                                                    UPSTREAM_WALK)
    assert groups.passed and groups.finding is None
    assert groups.data["observed_groups"] == groups.data["predicted_groups"]
    assert groups.data["acs"]["rp0"] == {"cap": 0x5F, "ctrl": 0x1D}
    assert [(r.provider, r.client, r.predicted, r.observed) for r in pairs] == [
        ("nvme0", "nvme1", HOLE, HOLE), ("nvme1", "nvme0", HOLE, HOLE)]
    hole = pairs[0]
    assert hole.passed and not hole.qemu_limit
    for text in ("nvme1 reaches nvme0 through sw0-dp1", "group 8", "group 7",
                 "kernel grouping problem (not a QEMU limit)"):
        assert text in hole.finding
    assert hole.data["groups"] == {"nvme0": "7", "nvme1": "8"}
    assert hole.data["addresses"]["sw0-dp1"] == "0000:02:01.0"

    result = RunResult(topology="switch-cmb-intel-iommu", workloads=records, finished=True)
    assert result.status == 0 and len(result.findings) == 2
    text = summary(result)
    assert "FINDING: isolation nvme0 <- nvme1: isolation hole" in text
    assert text.splitlines()[-1].startswith("PASS: 3/3 judged records as predicted "
                                            "(verdict and mechanism); 2 finding(s)")
    write_results(tmp_path, result)
    report = (tmp_path / "report.md").read_text()
    assert "## Findings" in report and "## IOMMU groups" in report
    assert "| sw0-dp0, nvme0 | 7 (DMA): sw0-dp0, nvme0 |" in report
    assert "| rp0 | 0x005f | 0x001d |" in report
    junit = (tmp_path / "junit.xml").read_text()
    assert junit.count('<property name="finding"') == 2 and "<failure" not in junit
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["workloads"][1]["finding"].startswith("isolation hole")


def test_workload_with_acs_everywhere_reports_no_pair_and_no_finding():
    records, _ = run_isolation("lib-rootports-intel-iommu")
    assert [(r.provider, r.predicted, r.observed, r.finding) for r in records] == [
        (None, UPSTREAM_WALK, UPSTREAM_WALK, None)]


def test_workload_judges_a_wrong_group_as_a_mismatch():
    guest = RecordedGuest("lib-switch-cmb-intel-iommu")
    groups = guest.recorded["iommu_groups"]["groups"]
    groups["7"]["devices"] += groups.pop("8")["devices"]   # as the v3 series would (almost)
    ctx = Context(guest=guest, topology=guest.topology,  # type: ignore[arg-type]
                  cpu=CpuInfo("qemu64", "AuthenticAMD", 15))
    records = Isolation().run(ctx)
    assert (records[0].predicted, records[0].observed) == (UPSTREAM_WALK, OTHER)
    assert "observed {sw0-dp0, sw0-dp1, nvme0, nvme1}, not predicted" in records[0].detail
    assert [(r.predicted, r.observed, r.passed) for r in records[1:]] == [
        (HOLE, "ok", False), (HOLE, "ok", False)]


def test_workload_without_a_viommu_judges_only_the_absence_of_groups():
    records, _ = run_isolation("switch-cmb-noiommu")
    assert [(r.predicted, r.observed) for r in records] == [(NO_GROUPS, NO_GROUPS)]


def test_nodes_off_every_nvme_path_are_found_by_their_address():
    """An empty downstream port is on no NVMe's path: it is found where QEMU puts it (the
    switch's third port, devfn 02.0 on the switch's bus), like every other node."""
    topo, inv = load("lib-switch-cmb-intel-iommu")
    spare = dataclasses.replace(topo.pcie[0].device, ports=(
        *topo.pcie[0].device.ports, dataclasses.replace(topo.pcie[0].device.ports[0],
                                                        name="spare", device=None)))
    topo = dataclasses.replace(topo, pcie=(dataclasses.replace(topo.pcie[0], device=spare),))
    inv["pci"]["0000:02:02.0"] = dict(inv["pci"]["0000:02:01.0"], iommu_group="9")
    inv["iommu_groups"]["groups"]["9"] = {"type": "DMA", "devices": ["0000:02:02.0"]}
    names, diffs = map_names(topo, inv)
    assert diffs == [] and names["spare"] == "0000:02:02.0"
    assert complete_names(topo, inv, names) == names
    fab = from_topology(topo, machine_devices(topo, inv, names), names)
    pred = predict_isolation(topo, fab, inv["kernel"]["grouping_symbols"])
    assert pred.groups == observe_groups(inv, names, fab.probe_order()).groups
    assert ["spare"] in pred.groups
