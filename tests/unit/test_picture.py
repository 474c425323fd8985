"""The drawing of a topology and its P2P paths: the DOT text (pure), the routes, and the
one call of Graphviz's dot."""

from __future__ import annotations

import re
import os
import shutil
import subprocess

import pytest

from testbed.errors import DotFailed, ToolMissing
from testbed.qemu.probe import CpuInfo
from testbed.results import graphviz
from testbed.results.picture import COLOURS, SEPARATE, predicted_records, quote, topology_dot
from testbed.results.routes import ROOT_COMPLEX, VIOMMU, route
from testbed.spec import load_topology
from testbed.spec.model import Nvme, RootPort, Topology
from testbed.verdicts.record import Record

QEMU64 = CpuInfo("qemu64", "AuthenticAMD", 15)
EPYC = CpuInfo("EPYC", "AuthenticAMD", 0x17)
ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[\d.]+)')
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[(.*)\]$')
NODE = re.compile(r'^\s*"([^"]+)" \[(.*)\]$')


def attrs(text: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in ATTR.findall(text)}


def edges(dot: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(m[1], m[2], attrs(m[3])) for line in dot.splitlines() if (m := EDGE.match(line))]


def nodes(dot: str) -> dict[str, dict[str, str]]:
    return {m[1]: attrs(m[2]) for line in dot.splitlines()
            if (m := NODE.match(line)) and " -> " not in line}


def paths(dot: str) -> list[tuple[str, str, dict[str, str]]]:
    """The coloured path edges (the tree's edges have no arrows: dir=none)."""
    return [e for e in edges(dot) if e[2].get("dir") != "none"]


def rec(provider, client, predicted, observed, predicted_map=None, observed_map=None,
        name="p2p-copy", **kw) -> Record:
    return Record(name, provider, client, predicted, "why", observed,
                  predicted_map_type=predicted_map, observed_map_type=observed_map, **kw)


# -- the tree ------------------------------------------------------------------------------

def test_every_node_of_the_tree_with_its_kind_and_sizes():
    topo = load_topology("nvme-pmr")
    dot = topology_dot(topo)
    n = nodes(dot)
    assert set(n) == {ROOT_COMPLEX, *(x.name for x in topo.nodes())}  # no vIOMMU: none
    assert n["nvme0"]["label"] == r"nvme0\nNVMe\nCMB 16M · PMR 16M"
    assert n["nvme1"]["label"] == r"nvme1\nNVMe\nno CMB"
    assert n["sw0"]["label"].startswith(r"sw0\nswitch")
    assert "root port" in n["rp0"]["label"]
    assert "8086:29c0" in n[ROOT_COMPLEX]["label"] and "CPU qemu64" in n[ROOT_COMPLEX]["label"]
    tree = {(a, b) for a, b, at in edges(dot) if at.get("dir") == "none"}
    parents = topo.parents()
    assert tree == {(p.name if p else ROOT_COMPLEX, name) for name, p in parents.items()}
    assert paths(dot) == [] and "@paths" not in dot  # no records: no paths, no table


def test_the_viommu_and_how_the_kernel_runs_it():
    strict = nodes(topology_dot(load_topology("switch-cmb-intel-iommu")))[VIOMMU]["label"]
    assert "intel" in strict and "translating" in strict
    pt = nodes(topology_dot(load_topology("switch-cmb-iommu-pt")))[VIOMMU]["label"]
    assert "passthrough" in pt
    assert "subgraph cluster_q35" in topology_dot(load_topology("switch-cmb-intel-iommu"))


def test_expander_host_bridges_are_root_complexes_of_their_own():
    topo = load_topology("hostbridges-cmb-zen")
    n = nodes(topology_dot(topo))
    assert "expander host bridge" in n["hb1"]["label"] and "0x80" in n["hb1"]["label"]
    assert "CPU EPYC" in n[ROOT_COMPLEX]["label"]


def test_hostile_descriptions_are_quoted():
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    topo = Topology("t", description='"; node [label="x"] // \\', pcie=(
        RootPort("rp0", device=Nvme("nvme0", "n0", cmb=2 << 20)),))
    dot = topology_dot(topo)
    assert 'label="t: \\"; node [label=\\"x\\"] // \\\\"' in dot


# -- paths ---------------------------------------------------------------------------------

def test_bus_address_pairs_turn_at_the_switch():
    topo = load_topology("switch-cmb")
    dot = topology_dot(topo, [rec("nvme0", "nvme1", "ok", "ok", "bus-address", "bus-address"),
                              rec("nvme1", "nvme0", "ok", "ok", "bus-address", "bus-address")])
    p = paths(dot)
    # one path for both directions (they went alike): arrows at both ends, never to the root
    assert [(a, b) for a, b, _ in p] == [("nvme0", "sw0-dp0"), ("sw0-dp0", "sw0"),
                                         ("sw0", "sw0-dp1"), ("sw0-dp1", "nvme1")]
    assert all(at["color"] == COLOURS["ok"] and at["dir"] == "both"
               and at["style"] == "solid" for _, _, at in p)
    assert [at.get("label") for _, _, at in p] == [None, " 1 ", None, None]  # into sw0
    assert "nvme0⇄nvme1" in dot and "ok · bus-address" in dot
    assert "by bus address through sw0" in dot


def test_host_bridge_pairs_go_through_the_root_complex_and_the_iommu():
    topo = load_topology("rootports-cmb-zen-intel-iommu")
    maps = {"iommu_p2p_maps": 4}
    dot = topology_dot(topo, [
        rec("nvme0", "nvme1", "ok", "ok", "host-bridge", "host-bridge", mechanism=maps)])
    hops = [(a, b) for a, b, _ in paths(dot)]
    assert hops == [("nvme0", "rp0"), ("rp0", ROOT_COMPLEX), (ROOT_COMPLEX, VIOMMU),
                    (VIOMMU, ROOT_COMPLEX), (ROOT_COMPLEX, "rp1"), ("rp1", "nvme1")]
    assert "ok · host-bridge" in dot and "through the q35 root complex and the vIOMMU" in dot
    # identity-mapped (no IOMMU mapping of the BAR): not through the vIOMMU
    dot = topology_dot(topo, [rec("nvme0", "nvme1", "ok", "ok", "host-bridge", "host-bridge",
                                  mechanism={"iommu_p2p_maps": 0})])
    assert VIOMMU not in {x for a, b, _ in paths(dot) for x in (a, b)}


def test_two_root_complexes():
    topo = load_topology("hostbridges-cmb-zen")
    dot = topology_dot(topo, [rec("nvme0", "nvme1", "ok", "ok", "host-bridge", "host-bridge")])
    assert [(a, b) for a, b, _ in paths(dot)] == [
        ("nvme0", "rp0"), ("rp0", ROOT_COMPLEX), (ROOT_COMPLEX, "hb1"), ("hb1", "rp1"),
        ("rp1", "nvme1")]
    assert "through hb1 and the q35 root complex" in dot


def test_rejected_pairs_stop_at_the_root_complex_dashed():
    topo = load_topology("rootports-cmb")
    dot = topology_dot(topo, [rec("nvme0", "nvme1", "rejected", "rejected", "not-supported",
                                  "not-supported"),
                              rec("nvme1", "nvme0", "rejected", "rejected", "not-supported",
                                  "not-supported")])
    p = paths(dot)
    # both directions refused: one number, a dashed line up from each end, a bar at the top
    assert [(a, b) for a, b, _ in p] == [("nvme0", "rp0"), ("rp0", ROOT_COMPLEX),
                                         ("nvme1", "rp1"), ("rp1", ROOT_COMPLEX)]
    assert all(at["style"] == "dashed" and at["color"] == COLOURS["rejected"]
               for _, _, at in p)
    assert [at.get("arrowhead") for _, _, at in p] == [None, "tee", None, "tee"]
    assert "refused at the root complex" in dot and "rejected · not-supported" in dot


def test_iommu_faults_stop_at_the_viommu():
    topo = load_topology("switch-cmb-intel-iommu")
    dot = topology_dot(topo, [rec("nvme0", "nvme1", "iommu-fault", "iommu-fault",
                                  "bus-address", "bus-address")])
    p = paths(dot)
    assert [b for _, b, _ in p][-2:] == [ROOT_COMPLEX, VIOMMU]
    assert p[-1][2]["arrowhead"] == "tee" and p[-1][2]["color"] == COLOURS["iommu-fault"]
    assert "faults at the vIOMMU" in dot


def test_a_path_not_as_predicted_is_bold_and_says_what_was_predicted():
    topo = load_topology("switch-cmb")
    dot = topology_dot(topo, [
        rec("nvme0", "nvme1", "ok", "ok", "host-bridge", "bus-address"),  # mechanism wrong
        rec("nvme1", "nvme0", "ok", "error", "bus-address", None)])
    p = paths(dot)
    assert all(float(at["penwidth"]) > 3 for _, _, at in p)
    # the observed map type draws the path: through the switch, not the root complex
    assert ROOT_COMPLEX not in {x for a, b, _ in p for x in (a, b)}
    assert "ok · bus-address ✗ predicted ok · host-bridge" in dot
    assert {at["color"] for a, b, at in p if a == "nvme1" or b == "nvme0"} == {COLOURS["error"]}
    assert "nvme1→nvme0" in dot  # not merged: the two directions went differently


def test_own_cmb_is_a_loop_and_records_without_pairs_are_left_out():
    topo = load_topology("switch-cmb")
    dot = topology_dot(topo, [rec("nvme0", "nvme0", "ok", "ok", "bus-address", "bus-address"),
                              Record("inventory"), Record("exec", command="true"),
                              Record("host-baseline", "nvme0", "nvme1", mb_per_s=300.0),
                              rec("nvme9", "nvme0", "ok", "ok")])
    assert [(a, b) for a, b, _ in paths(dot)] == [("nvme0", "nvme0")]
    assert "inside the controller" in dot


def test_many_paths_are_bundled_hop_by_hop():
    topo = load_topology("fabric-large")
    records = predicted_records(topo, QEMU64)
    dot = topology_dot(topo, records)
    looks = [(a, b, at["color"], at["style"], at["arrowhead"]) for a, b, at in paths(dot)]
    assert len(looks) == len(set(looks))  # one line per hop and look
    assert {c for _, _, c, _, _ in looks} == {COLOURS["ok"], COLOURS["rejected"]}
    numbers = re.findall(r'<b>(\d+)</b>', dot)
    assert len(numbers) > SEPARATE and numbers == [str(i) for i in range(1, len(numbers) + 1)]
    widths = [float(at["penwidth"]) for _, _, at in paths(dot)]
    assert max(widths) > min(widths)  # shared hops are thicker
    assert "(predicted)" in dot and "line thickness" in dot


def test_predicted_records_follow_the_oracle():
    topo = load_topology("rootports-cmb-zen")
    recs = predicted_records(topo, EPYC)
    assert {(r.provider, r.client, r.predicted, r.predicted_map_type, r.observed)
            for r in recs} == {("nvme0", "nvme1", "ok", "host-bridge", None),
                               ("nvme1", "nvme0", "ok", "host-bridge", None)}
    assert not any(r.judged for r in recs)


def test_routes_without_a_map_type_follow_the_tree():
    topo = load_topology("fabric-large")
    r = route(topo, "nvme0", "nvme1", None, "ok", translating=False)
    assert r is not None and r.how == "switch" and r.top == "sw1"
    r = route(topo, "nvme0", "nvme5", None, "ok", translating=False)
    assert r is not None and r.how == "host"
    assert route(topo, "nvme0", "nvme5", "none", "unsupported", translating=False) is None


# -- dot -------------------------------------------------------------------------------------

def test_dot_missing_is_a_clear_tool_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(ToolMissing) as info:
        graphviz.to_svg("digraph g { a -> b }")
    assert info.value.tool == "dot" and info.value.package == "graphviz"
    assert "apt-get install graphviz" in str(info.value)


def test_dot_failing_carries_what_it_said(monkeypatch):
    def refuse(argv, **kw):
        return subprocess.CompletedProcess(argv, 1, "", "Error: <stdin>: syntax error in line 1")
    monkeypatch.setattr(shutil, "which", lambda *a, **k: "/usr/bin/dot")
    monkeypatch.setattr(subprocess, "run", refuse)
    with pytest.raises(DotFailed) as info:
        graphviz.to_svg("digraph {")
    assert "syntax error" in info.value.stderr and "exit status 1" in str(info.value)


# outside CI only: under CI=true a missing dot fails the test instead of skipping it
@pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                    reason="SKIPPED, NOT PASSED: graphviz's dot is not installed "
                           "(scripts/setup-host.sh installs it)")
@pytest.mark.parametrize("name", ["switch-cmb", "fabric-large", "hostbridges-cmb-zen",
                                  "switch-cmb-intel-iommu", "rootports-cmb"])
def test_real_dot_draws_every_library_topology(name):
    topo = load_topology(name)
    svg = graphviz.to_svg(topology_dot(topo, predicted_records(topo, QEMU64)))
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    for n in topo.nvmes():
        assert f"<title>{n.name}</title>" in svg


# -- testbed render --format svg|dot -----------------------------------------------------------

def test_render_prints_or_writes_the_drawing_without_a_run(tmp_path, monkeypatch, capsys):
    from testbed import cli
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    assert cli.main(["render", "--format", "dot", "rootports-cmb"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "rootports-cmb"') and "predicted P2P paths" in dot
    assert "rejected · not-supported (predicted)" in dot  # the oracle's paths, no run
    target = tmp_path / "picture.dot"
    assert cli.main(["render", "--format", "dot", "-o", str(target), "rootports-cmb"]) == 0
    assert capsys.readouterr().out == "" and target.read_text() == dot
    if shutil.which("dot"):
        target = tmp_path / "picture.svg"
        assert cli.main(["render", "--format", "svg", "-o", str(target), "switch-cmb"]) == 0
        assert target.read_text().startswith("<svg") and target.stat().st_mode & 0o044


def test_render_svg_without_dot_says_what_to_install(tmp_path, monkeypatch, capsys):
    from testbed import cli
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, *a, **k: None if name == "dot" else real_which(name, *a,
                                                                                      **k))
    assert cli.main(["render", "--format", "svg", "switch-cmb"]) == 2
    assert "apt-get install graphviz" in capsys.readouterr().err
