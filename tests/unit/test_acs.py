"""The ACS model (verdicts/acs.py), the guest tool's config-space and group collection, and
what ACS changes in the P2P prediction (pure: no QEMU)."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path

import pytest

from testbed.guest_tool import iommu as guest_iommu
from testbed.guest_tool import pciconfig
from testbed.qemu.probe import CpuInfo
from testbed.spec.parse import parse
from testbed.spec.yamlsource import load
from testbed.verdicts import acs
from testbed.verdicts.acs import CR, EC, RR, SV, TB, UF, DeviceId, PciParams, config_acs, enable
from testbed.verdicts.predict import acs_redirect, has_acs_capability, predict

ROOT_PORT = DeviceId(0x1B36, 0x000C, chain=("0000:00:02.0",))
CAP = acs.QEMU_ROOT_PORT_CAP


def ctrl(words, dev=ROOT_PORT, requested="intel", cap=CAP) -> int:
    return enable(cap, dev, requested, PciParams.from_cmdline(words)).ctrl


def test_iommu_request_sets_sv_rr_cr_uf_only():
    assert ctrl(()) == SV | RR | CR | UF == 0x1D
    assert ctrl((), requested=None) == 0  # no IOMMU driver: QEMU's reset value stays
    assert ctrl(("pci=noats",)) == SV | TB | RR | CR | UF
    assert enable(None, ROOT_PORT, "intel", PciParams()).ctrl == 0


@pytest.mark.parametrize("words, expected", [
    (("pci=disable_acs_redir=pci:1b36:000c",), 0),        # from firmware: SV UF go too
    (("pci=disable_acs_redir=pci:1b36:0:0:0",), 0),       # 0 is a wildcard
    (("pci=disable_acs_redir=pci:104c:8233",), 0x1D),     # another device
    (("pci=disable_acs_redir=pci:1b36:000c:1af4:1100",), 0x1D),  # subsystem IDs differ
    (("pci=disable_acs_redir=00:02.0",), 0),
    (("pci=disable_acs_redir=0000:00:02.0",), 0),
    (("pci=disable_acs_redir=00:03.0;00:02.0",), 0),
    (("pci=disable_acs_redir=00:03.0",), 0x1D),
    (("pci=realloc,disable_acs_redir=pci:1b36:c,noats",), 0),
    (("pci=disable_acs_redir=pci:1b36:c", "pci=disable_acs_redir=pci:1:1"), 0x1D),  # last wins
    (("pci=disable_acs_redir=pci:zz",), 0x1D),             # unparsable: ignored
    (("pci=config_acs=111x1@pci:1b36:000c",), SV | RR | CR | UF),
    (("pci=config_acs=11111@00:02.0",), SV | TB | RR | CR | UF),
    (("pci=config_acs=1x1@pci:1b36:c",), SV | RR),        # mask 0b101: the rest from firmware
    (("pci=config_acs=0@00:03.0;1@00:02.0",), SV),
    (("pci=config_acs=1111111@00:02.0",), CAP),            # EC is not in QEMU's capability
    (("pci=config_acs=11111111@00:02.0",), 0x1D),          # bit 7: invalid, ignored
    (("pci=config_acs=1z1@00:02.0",), 0x1D),               # invalid flag character
    (("pci=config_acs=00:02.0",), 0x1D),                   # flags missing
])
def test_command_line(words, expected):
    assert ctrl(words) == expected


def test_address_paths_walk_up_from_the_device():
    dsp = DeviceId(0x104C, 0x8233, chain=("0000:02:01.0", "0000:01:00.0", "0000:00:01.0"))
    assert config_acs(dsp, "00:01.0/00.0/01.0", acs.REDIRECT, 0) == (acs.REDIRECT, 0)
    assert config_acs(dsp, "00:01.0/00.0/00.0", acs.REDIRECT, 0) is None
    assert config_acs(dsp, "01:00.0/01.0", acs.REDIRECT, 0) == (acs.REDIRECT, 0)
    assert config_acs(dsp, "02:01.0", acs.REDIRECT, 0) == (acs.REDIRECT, 0)


def test_addresses_without_a_guest_are_reported_not_guessed():
    state = enable(CAP, DeviceId(0x1B36, 0xC), "intel",
                   PciParams.from_cmdline(["pci=disable_acs_redir=00:02.0;pci:1:2"]))
    assert state.ctrl == 0x1D and state.unresolved == (
        "pci=disable_acs_redir: 00:02.0 needs the guest's bus numbers",)


@pytest.mark.parametrize("kind, mf, cap, ctrl_, expected", [
    ("root_port", False, CAP, 0x1D, True),
    ("root_port", False, CAP, 0x19, False),    # RR missing
    ("root_port", False, 0x01, 0x01, True),    # bits the capability lacks: hard-wired on
    ("root_port", False, None, 0, False),
    ("downstream", False, None, 0, False),     # x3130: no capability, never isolates
    ("upstream", False, None, 0, True),        # single function: needs no ACS
    ("endpoint", False, None, 0, True),
    ("endpoint", True, None, 0, False),        # multifunction without ACS
    ("pci", True, None, 0, False),             # conventional PCI never
])
def test_acs_enabled(kind, mf, cap, ctrl_, expected):
    assert acs.acs_enabled(kind, mf, cap, ctrl_, acs.REQ_ACS_FLAGS) is expected


def test_ec_must_be_enabled_even_when_not_capable():
    assert not acs.flags_enabled(CAP, 0x1D, acs.REQ_ACS_FLAGS | EC)


# -- what ACS changes in the topology and the P2P prediction ---------------------------------

def topo_of(text: str):
    return parse(load(textwrap.dedent(text), "t.yaml"), "t.yaml", Path("/nonexistent"))


TWO_PORTS = """
iommu: intel
kernel_cmdline: KERNEL
pcie:
  - root_port: rp0
    acs: ACS
    device: {nvme: nvme0, cmb: 64M}
  - root_port: rp1
    device: {nvme: nvme1}
"""
QEMU64 = CpuInfo("qemu64", "AuthenticAMD", 15)


def test_acs_false_removes_the_capability_and_the_redirect():
    topo = topo_of(TWO_PORTS.replace("ACS", "false").replace("KERNEL", '""'))
    rp0, rp1 = topo.pcie
    assert not has_acs_capability(rp0) and has_acs_capability(rp1)
    assert not acs_redirect(rp0, topo) and acs_redirect(rp1, topo)
    # like calc_map_type_and_dist(), the oracle lists ACS redirect on the provider's path
    # when no common bridge is found: acs: false changes why, not the verdict (a root port
    # holds one device, so it is never the common bridge of two NVMe)
    p = predict(topo, "nvme0", "nvme1", QEMU64)
    assert p.verdict == "rejected" and "share no upstream bridge" in p.reason
    both = topo_of(TWO_PORTS.replace("ACS", "true").replace("KERNEL", '""'))
    p = predict(both, "nvme0", "nvme1", QEMU64)
    assert p.verdict == "rejected" and "ACS redirect on rp0 sends" in p.reason


def test_disable_acs_redir_reaches_the_p2p_prediction():
    topo = topo_of(TWO_PORTS.replace("ACS", "true")
                   .replace("KERNEL", "pci=disable_acs_redir=pci:1b36:000c"))
    assert not any(acs_redirect(n, topo) for n in topo.pcie)
    p = predict(topo, "nvme0", "nvme1", QEMU64)
    assert p.verdict == "rejected" and "share no upstream bridge" in p.reason


def test_no_iommu_no_redirect():
    topo = topo_of(TWO_PORTS.replace("iommu: intel", "iommu: none").replace("ACS", "true")
                   .replace("KERNEL", '""'))
    assert acs.node_state(topo.pcie[0], topo).ctrl == 0 and not acs_redirect(topo.pcie[0], topo)


# -- the guest tool's collection ---------------------------------------------------------------

def config_space(pcie_type: int | None, acs_cap: int | None = None, acs_ctrl: int = 0,
                 multifunction: bool = False, other_ext_first: bool = True) -> bytes:
    cfg = bytearray(4096)
    cfg[0x0E] = 0x80 if multifunction else 0x00
    if pcie_type is not None:
        struct.pack_into("<H", cfg, 0x06, 0x10)                  # capability list
        cfg[0x34] = 0x40
        cfg[0x40:0x42] = bytes([0x05, 0x60])                      # MSI, next 0x60
        cfg[0x60:0x62] = bytes([0x10, 0x00])                      # PCI Express, last
        struct.pack_into("<H", cfg, 0x62, (pcie_type << 4) | 2)
        nxt = 0x148 if acs_cap is not None else 0
        if other_ext_first:                                       # AER at 0x100 -> ACS
            struct.pack_into("<I", cfg, 0x100, 0x0001 | (1 << 16) | (nxt << 20))
        if acs_cap is not None:
            struct.pack_into("<IHH", cfg, 0x148, 0x000D | (1 << 16), acs_cap, acs_ctrl)
    return bytes(cfg)


@pytest.mark.parametrize("cfg, function, expected", [
    (config_space(4, 0x5F, 0x1D), 0,
     {"pcie_type": "root_port", "multifunction": False,
      "acs": {"offset": 0x148, "cap": 0x5F, "ctrl": 0x1D}}),
    (config_space(6), 0, {"pcie_type": "downstream", "multifunction": False, "acs": None}),
    (config_space(None, multifunction=True), 0,
     {"pcie_type": None, "multifunction": True, "acs": None}),
    (config_space(0), 2, {"pcie_type": "endpoint", "multifunction": True, "acs": None}),
    (config_space(4, 0x5F, 0x1D)[:64], 0,              # what a non-root reader gets
     {"pcie_type": None, "multifunction": False, "acs": None}),
    (b"", 0, {"pcie_type": None, "multifunction": False, "acs": None}),
])
def test_config_space(cfg, function, expected):
    assert pciconfig.parse(pciconfig.Config(data=cfg), function) == expected


def test_config_space_loop_is_bounded():
    cfg = bytearray(config_space(4))
    struct.pack_into("<I", cfg, 0x100, 0x0001 | (0x100 << 20))  # points at itself
    assert pciconfig.parse(pciconfig.Config(data=bytes(cfg)))["acs"] is None


def test_config_file_is_read_with_positioned_reads(tmp_path):
    path = tmp_path / "config"
    path.write_bytes(config_space(4, 0x5F, 0x1D))
    assert pciconfig.read_device(str(path))["acs"]["ctrl"] == 0x1D
    assert pciconfig.read_device(str(tmp_path / "missing"))["pcie_type"] is None


def test_iommu_groups_from_sysfs(tmp_path):
    base = tmp_path / "iommu_groups"
    assert guest_iommu.iommu_groups(str(base)) == {"present": False, "groups": {}}
    for gid, typ, devs in (("10", "DMA", ["0000:02:00.0", "0000:04:00.0"]),
                           ("2", "identity", ["0000:00:02.0"])):
        (base / gid / "devices").mkdir(parents=True)
        (base / gid / "type").write_text(typ + "\n")
        for d in devs:
            (base / gid / "devices" / d).mkdir()
    assert guest_iommu.iommu_groups(str(base)) == {"present": True, "groups": {
        "2": {"type": "identity", "devices": ["0000:00:02.0"]},
        "10": {"type": "DMA", "devices": ["0000:02:00.0", "0000:04:00.0"]}}}
    dev = tmp_path / "dev"
    dev.mkdir()
    assert guest_iommu.device_group(str(dev)) is None
    (dev / "iommu_group").symlink_to(base / "10")
    assert guest_iommu.device_group(str(dev)) == "10"


def test_grouping_symbols_across_chunk_boundaries(tmp_path):
    lines = [f"ffffffff81{i:06x} t filler_{i}\n" for i in range(3000)]
    lines.insert(1234, "ffffffff81d830d0 t get_pci_function_alias_group\n")
    lines.insert(2000, "ffffffff81d84b60 T pci_device_group\n")
    lines.append("ffffffffc0001000 t pci_bus_isolated_helper\t[mod]\n")  # not the symbol
    path = tmp_path / "kallsyms"
    path.write_text("".join(lines))
    for chunk in (7, 64, 1 << 20):
        assert guest_iommu.grouping_symbols(str(path), chunk) == {
            "pci_device_group": True, "get_pci_function_alias_group": True,
            "get_pci_alias_group": False, "pci_bus_isolated": False,
            "pci_reachable_set": False}
    (tmp_path / "empty").write_text("")
    assert guest_iommu.grouping_symbols(str(tmp_path / "empty")) is None
    assert guest_iommu.grouping_symbols(str(tmp_path / "missing")) is None
