"""The guest-side view check compares sysfs (as the guest tool reports it) with the spec:
every node is found at the address QEMU gives it, whatever its kind; endpoints must be
bound to their kind's driver; the kind checks the rest (an NVMe's serial and p2pmem)."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

from testbed.guest.treecheck import check_tree, inventory_argv, map_names
from testbed.qemu.addresses import addresses
from testbed.spec import load_topology
from testbed.spec.parse import parse
from testbed.spec.yamlsource import load

RP, UP, DP, NVME, IGB = ("0x1b36", "0x000c"), ("0x104c", "0x8232"), ("0x104c", "0x8233"), \
    ("0x1b36", "0x0010"), ("0x8086", "0x10c9")
DRIVERS = {RP: "pcieport", UP: "pcieport", DP: "pcieport", NVME: "nvme", IGB: "igb"}


def dev(ids, chain, **extra):
    return {"vendor": ids[0], "device": ids[1], "class": "0x010802" if ids == NVME else "0x060400",
            "chain": chain, "root": "0000:00", "driver": DRIVERS[ids], **extra}


def switch_cmb_inventory():
    """switch-cmb as the guest shows it: rp0 in the first free slot of q35's root bus."""
    c = ["0000:00:01.0", "0000:01:00.0"]
    return {
        "kernel": {"release": "7.3", "p2pdma": True},
        "pci": {
            "0000:00:01.0": dev(RP, []),
            "0000:01:00.0": dev(UP, c[:1]),
            "0000:02:00.0": dev(DP, c),
            "0000:02:01.0": dev(DP, c),
            "0000:03:00.0": dev(NVME, c + ["0000:02:00.0"], p2pmem={"size": str(64 << 20)}),
            "0000:04:00.0": dev(NVME, c + ["0000:02:01.0"], p2pmem={"size": str(64 << 20)}),
        },
        "nvme": {"nvme1": {"serial": "nvme0", "bdf": "0000:03:00.0"},  # names need not match
                 "nvme0": {"serial": "nvme1", "bdf": "0000:04:00.0"}},
    }


TOPO = load_topology("switch-cmb")


def test_every_node_is_found_at_its_address():
    inv = switch_cmb_inventory()
    assert check_tree(TOPO, inv) == []
    names, _ = map_names(TOPO, inv)
    assert names == {"rp0": "0000:00:01.0", "sw0": "0000:01:00.0", "sw0-dp0": "0000:02:00.0",
                     "sw0-dp1": "0000:02:01.0", "nvme0": "0000:03:00.0", "nvme1": "0000:04:00.0"}
    assert addresses(TOPO)["nvme1"].text == "0000:00:01.0 > 00.0 > 01.0 > 00.0"


def test_a_swapped_serial_is_caught():
    inv = switch_cmb_inventory()
    inv["nvme"]["nvme1"]["serial"], inv["nvme"]["nvme0"]["serial"] = "nvme1", "nvme0"
    assert check_tree(TOPO, inv) == [
        "nvme0: the NVMe controller at 0000:03:00.0 has serial 'nvme1', the spec says 'nvme0'",
        "nvme1: the NVMe controller at 0000:04:00.0 has serial 'nvme0', the spec says 'nvme1'"]


def test_missing_p2pmem_is_reported():
    inv = switch_cmb_inventory()
    del inv["pci"]["0000:03:00.0"]["p2pmem"]
    assert check_tree(TOPO, inv) == [
        "nvme0: its 64M CMB is not published as p2pmem at 0000:03:00.0"]


def test_wrong_place_and_wrong_kind():
    inv = copy.deepcopy(switch_cmb_inventory())
    inv["pci"]["0000:03:00.0"]["chain"] = ["0000:00:01.0"]  # not below sw0-dp0 after all
    assert "nvme0: no device at 0000:00:01.0 > 00.0 > 00.0 > 00.0 in the guest, where QEMU " \
        "puts the NVMe controller" in check_tree(TOPO, inv)
    inv = copy.deepcopy(switch_cmb_inventory())
    inv["pci"]["0000:01:00.0"]["device"] = "0x8233"
    assert "sw0: 0000:01:00.0 is 0x104c:0x8233, expected a switch upstream port " \
        "(0x104c:0x8232)" in check_tree(TOPO, inv)


def test_an_unbound_controller_is_caught():
    inv = switch_cmb_inventory()
    del inv["nvme"]["nvme1"]
    inv["pci"]["0000:03:00.0"]["driver"] = None
    del inv["pci"]["0000:03:00.0"]["p2pmem"]
    diffs = check_tree(TOPO, inv)
    assert diffs[0] == "nvme0: 0000:03:00.0 is bound to no driver, expected nvme"


def test_kernel_without_p2pdma_skips_p2pmem_checks():
    inv = switch_cmb_inventory()
    inv["kernel"]["p2pdma"] = False
    for d in inv["pci"].values():
        d.pop("p2pmem", None)
    assert check_tree(TOPO, inv) == []


IGB_TOPO = parse(load(textwrap.dedent("""
    name: t
    pcie:
      - root_port: rp0
        device: {igb: nic0}
      - {nvme: n0}
    """), "t.yaml"), "t.yaml", Path("/spec"))


def igb_inventory(driver="igb"):
    return {"kernel": {"release": "7.3", "p2pdma": True},
            "pci": {"0000:00:01.0": dev(RP, []),
                    "0000:01:00.0": dev(IGB, ["0000:00:01.0"], driver=driver),
                    "0000:00:02.0": dev(NVME, [])},
            "nvme": {"nvme0": {"serial": "n0", "bdf": "0000:00:02.0"}}}


def test_an_igb_is_found_and_must_be_bound_to_igb():
    assert check_tree(IGB_TOPO, igb_inventory()) == []
    assert map_names(IGB_TOPO, igb_inventory())[0]["nic0"] == "0000:01:00.0"
    assert check_tree(IGB_TOPO, igb_inventory(driver=None)) == [
        "nic0: 0000:01:00.0 is bound to no driver, expected igb"]
    assert check_tree(IGB_TOPO, igb_inventory(driver="vfio-pci")) == [
        "nic0: 0000:01:00.0 is bound to vfio-pci, expected igb"]


def test_the_inventory_loads_the_driver_modules_the_endpoints_need():
    assert inventory_argv(IGB_TOPO, 30) == ["inventory", "--wait", "30", "--expect-nvme", "1",
                                            "--expect-p2pmem", "0", "--load", "igb"]
    assert "--load" not in inventory_argv(TOPO, 30)
