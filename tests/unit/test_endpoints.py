"""Endpoint kinds (testbed/spec/endpoints): NVMe is one kind, igb another; each is read,
rendered, validated against the QEMU binary, drawn and judged through its kind's row.
What QEMU and the guest make of igb is checked against the real thing in
tests/integration (test_topologies.py, test_verify.py)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from testbed.errors import SpecError
from testbed.qemu.cmdline import backing_files, machine_argv
from testbed.qemu.devices import DEVICES, EXTRA_DEVICES
from testbed.qemu.probe import Capabilities
from testbed.qemu.validate import capabilities
from testbed.results.picture import topology_dot
from testbed.spec import load_topology
from testbed.spec.endpoints import ENDPOINTS, IGB, NVME, Endpoint, Igb, Nvme, kind_of
from testbed.spec.parse import parse
from testbed.spec.yamlsource import load
from testbed.verdicts.fabric import from_topology
from testbed.verdicts.predict import pairs, predict
from testbed.qemu.probe import CpuInfo

RUN = Path("/run/x")


def topo_of(text: str):
    return parse(load(textwrap.dedent(text), "t.yaml"), "t.yaml", Path("/spec"))


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        topo_of(text)
    return [f"{p.line}:{p.col}: {p.path}: {p.message}" for p in err.value.problems]


EVERYWHERE = """
    name: t
    pcie:
      - {igb: rc}
      - root_port: rp0
        device: {igb: under-rp}
      - root_port: rp1
        device:
          switch: sw0
          downstream:
            - {igb: under-dp}
            - {nvme: nvme0, cmb: 2M}
            - downstream_port: dp9
              device: {igb: under-named-dp}
      - host_bridge: hb0
        root_ports:
          - root_port: hrp0
            device: {igb: under-hb}
    """


def test_the_table():
    assert [k.word for k in ENDPOINTS.values()] == ["nvme", "igb"]
    assert kind_of(Nvme("n", "s")) is NVME and kind_of(Igb("i")) is IGB
    for cls, kind in ENDPOINTS.items():
        assert issubclass(cls, Endpoint) and DEVICES[cls].qemu_device == kind.qemu_device
        assert DEVICES[cls].pci_id == kind.pci_id and kind.keys[0] == kind.word
    assert EXTRA_DEVICES[Nvme] == ("nvme-ns",) and Igb not in EXTRA_DEVICES
    assert (IGB.qemu_device, IGB.pci_id, IGB.driver, IGB.module) == \
        ("igb", ("0x8086", "0x10c9"), "igb", "igb")
    assert IGB.p2p_bar is None and IGB.dma_engine and not IGB.pair_client
    assert NVME.p2p_bar == 2 and NVME.pair_client


def test_igb_goes_wherever_an_nvme_goes():
    topo = topo_of(EVERYWHERE)
    assert [e.name for e in topo.endpoints()] == ["rc", "under-rp", "under-dp", "nvme0",
                                                  "under-named-dp", "under-hb"]
    assert [n.name for n in topo.nvmes()] == ["nvme0"]
    assert [p.name for p in topo.providers()] == ["nvme0"]
    assert [c.name for c in topo.clients()] == ["nvme0"]
    argv = machine_argv(topo, "q", RUN, "tcg")
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    for name, bus in (("rc", "pcie.0"), ("under-rp", "rp0"), ("under-dp", "sw0-dp0"),
                      ("under-named-dp", "dp9"), ("under-hb", "hrp0")):
        assert f"igb,id={name},bus={bus},netdev=tb-{name}-net" in devices
        assert f"user,id=tb-{name}-net,restrict=on" in argv
    assert [b.owner for b in backing_files(topo, RUN)] == ["nvme0"]  # igb has no files


def test_igb_entries_are_checked_like_any_other():
    assert problems("""
        pcie:
          - root_port: rp0
            device: {igb: nic0, cmb: 64M}
          - root_port: rp1
            device: {igb: nic1, acs: false}
          - {igb: nic0}
        """) == [
        "4:25: pcie[0].device.cmb: unknown key 'cmb': an igb has no 'cmb' (a key of nvme "
        "entries)",
        "6:25: pcie[1].device.acs: only a root port can switch ACS off: QEMU's igb has no ACS "
        "capability",
        "7:11: pcie[2].igb: duplicate name 'nic0' (first used on line 4)",
    ]


def test_expectations_name_providers_and_clients_not_an_igb():
    text = """
        pcie:
          - root_port: rp0
            device:
              switch: sw0
              downstream: [{nvme: n0, cmb: 2M}, {igb: nic0}]
        expect:
          - {provider: n0, client: nic0, verdict: ok}
        """
    assert problems(text) == ["8:28: expect[0].client: 'nic0' is not an nvme device: "
                              "expectations name a p2pmem provider and an NVMe client"]


def test_the_oracle_leaves_the_igb_out():
    topo = load_topology("switch-cmb-igb")
    assert pairs(topo) == [("nvme0", "nvme1"), ("nvme1", "nvme0")]
    no = predict(topo, "nic0", "nvme0", CpuInfo("qemu64", "AuthenticAMD", 15))
    assert (no.verdict, no.reason) == ("unsupported",
                                       "nic0 has no P2P memory, so it publishes no p2pmem")
    fab = from_topology(topo)
    assert "nic0" in fab.endpoints and fab.d["nic0"].parent == "sw0-dp2"


def test_the_picture_draws_the_igb():
    dot = topology_dot(load_topology("switch-cmb-igb"))
    assert '"nic0" [' in dot and "igb NIC" in dot and '"sw0-dp2" -> "nic0"' in dot


def caps(devices: set[str]) -> Capabilities:
    return Capabilities(path="/q", version=(10, 0, 2), version_text="QEMU 10.0.2",
                        devices=frozenset(devices),
                        nvme_props=frozenset({"cmb_size_mb", "pmrdev", "serial"}),
                        nvme_ns_props=frozenset({"logical_block_size"}))


def test_a_qemu_without_igb_is_told():
    topo = dataclasses.replace(load_topology("switch-cmb-igb"), filename="s.yaml")
    have = {"pcie-root-port", "x3130-upstream", "xio3130-downstream", "nvme", "nvme-ns"}
    assert capabilities(topo, caps(have | {"igb"})) == []
    found = [str(p) for p in capabilities(topo, caps(have))]
    assert len(found) == 1 and "pcie[0].device.downstream[2].igb: QEMU 10.0.2 (/q) has no " \
        "'igb' device" in found[0]
