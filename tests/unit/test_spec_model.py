"""The derived model (parents, upstream paths, walking) and the topology library."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.paths import topologies_dir
from testbed.spec import (SpecError, library, load_topology, resolve)
from testbed.spec.model import (DownstreamPort, Nvme, RootPort, Switch, Topology, walk)
from testbed.spec.units import MiB

LIBRARY_NAMES = sorted(p.stem for p in topologies_dir().glob("*.yaml"))


def names(nodes) -> list[str]:
    return [n.name for n in nodes]


@pytest.fixture(scope="module")
def fabric() -> Topology:
    return load_topology("fabric-large")


def test_walk_is_depth_first_parents_first(fabric):
    assert names(fabric.nodes()) == [
        "rp0", "sw0", "sw0-dp0", "sw1", "sw1-dp0", "nvme0", "sw1-dp1", "nvme1", "sw1-dp2",
        "nvme2", "sw0-dp1", "sw2", "sw2-dp0", "nvme3", "sw2-dp1", "nvme4", "rp1", "nvme5",
        "rp2", "nvme6"]
    assert names(walk(fabric.pcie)) == names(fabric.nodes())


def test_nvmes_and_their_settings(fabric):
    assert [(n.name, n.cmb // MiB) for n in fabric.nvmes()] == [
        ("nvme0", 64), ("nvme1", 32), ("nvme2", 0), ("nvme3", 16), ("nvme4", 8), ("nvme5", 4),
        ("nvme6", 0)]
    assert fabric.find("nvme4").namespaces[0].block_size == 4096


def test_parents(fabric):
    parents = {k: (v.name if v else None) for k, v in fabric.parents().items()}
    assert parents == {
        "rp0": None, "sw0": "rp0", "sw0-dp0": "sw0", "sw1": "sw0-dp0", "sw1-dp0": "sw1",
        "nvme0": "sw1-dp0", "sw1-dp1": "sw1", "nvme1": "sw1-dp1", "sw1-dp2": "sw1",
        "nvme2": "sw1-dp2", "sw0-dp1": "sw0", "sw2": "sw0-dp1", "sw2-dp0": "sw2",
        "nvme3": "sw2-dp0", "sw2-dp1": "sw2", "nvme4": "sw2-dp1", "rp1": None, "nvme5": "rp1",
        "rp2": None, "nvme6": "rp2"}
    assert set(parents) == set(names(fabric.nodes()))


def test_upstream_path(fabric):
    assert names(fabric.upstream_path("nvme0")) == ["nvme0", "sw1-dp0", "sw1", "sw0-dp0", "sw0",
                                                    "rp0"]
    assert names(fabric.upstream_path("nvme5")) == ["nvme5", "rp1"]
    assert names(fabric.upstream_path("sw2")) == ["sw2", "sw0-dp1", "sw0", "rp0"]
    assert names(fabric.upstream_path("rp2")) == ["rp2"]
    # the nearest common ancestor of two controllers: a switch port for P2P under one switch
    a, b = fabric.upstream_path("nvme0"), fabric.upstream_path("nvme3")
    common = [n.name for n in a if n.name in set(names(b))]
    assert common[0] == "sw0"
    assert not set(names(fabric.upstream_path("nvme0"))) & set(names(fabric.upstream_path("nvme6")))


def test_find_unknown_name(fabric):
    with pytest.raises(KeyError):
        fabric.find("nvme7")
    with pytest.raises(KeyError):
        fabric.upstream_path("nvme7")


def test_model_built_by_hand():
    n0, n1 = Nvme("a", "a", cmb=64 * MiB), Nvme("b", "b")
    topo = Topology(name="hand", pcie=(RootPort("rp", Switch("sw", (
        DownstreamPort("p0", n0), DownstreamPort("p1", n1), DownstreamPort("p2")))), Nvme("c", "c")))
    assert names(topo.nodes()) == ["rp", "sw", "p0", "a", "p1", "b", "p2", "c"]
    assert names(topo.upstream_path("b")) == ["b", "p1", "sw", "rp"]
    assert topo.parents()["c"] is None and topo.parents()["p2"].name == "sw"
    assert [n.kind for n in topo.nodes()] == ["root_port", "switch", "downstream_port", "nvme",
                                              "downstream_port", "nvme", "downstream_port", "nvme"]


def test_nodes_are_immutable(fabric):
    with pytest.raises(AttributeError):
        fabric.find("nvme0").cmb = 0  # type: ignore[misc]


# -- the library ----------------------------------------------------------------------------

def test_library_lists_topologies():
    lib = library()
    assert sorted(lib) == LIBRARY_NAMES
    assert {"switch-cmb", "rootports-cmb", "nvme-pmr", "fabric-large"} <= set(lib)
    assert all(p.suffix == ".yaml" and p.is_file() for p in lib.values())


@pytest.mark.parametrize("name", LIBRARY_NAMES)
def test_library_names_resolve(name):
    path = resolve(name)
    assert path == topologies_dir() / f"{name}.yaml"
    topo = load_topology(name)
    assert topo.name == name  # each file's name: matches its file name
    assert topo.source == path.resolve()
    assert topo.description
    assert topo.nvmes()
    assert load_topology(path) == topo  # by name == by path


def test_library_iommu_variants():
    assert load_topology("switch-cmb-intel-iommu").iommu.translating
    assert not load_topology("switch-cmb-iommu-pt").iommu.translating
    assert load_topology("switch-cmb-virtio-iommu").iommu.model == "virtio"
    assert load_topology("rootports-cmb-zen").machine.cpu == "EPYC"
    assert load_topology("nvme-pmr").find("nvme0").pmr.size == 16 * MiB


def test_paths_are_not_library_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("./switch-cmb") == Path("./switch-cmb")
    assert resolve("other.yaml") == Path("other.yaml")
    (tmp_path / "switch-cmb").write_text("pcie: []\n")  # an existing file wins over the library
    assert resolve("switch-cmb") == Path("switch-cmb")


def test_unknown_library_name():
    with pytest.raises(SpecError) as info:
        resolve("rootport-cmb")
    (p,) = info.value.problems
    assert p.file == "rootport-cmb" and "(did you mean 'rootports-cmb'?)" in p.message
    assert all(name in p.message for name in LIBRARY_NAMES)
