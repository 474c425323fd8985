"""The guest-side view check compares sysfs (as the guest tool reports it) with the spec."""

from __future__ import annotations

import copy

from testbed.guest.treecheck import check_tree, map_names
from testbed.spec import load_topology

RP, UP, DP, NVME = ("0x1b36", "0x000c"), ("0x104c", "0x8232"), ("0x104c", "0x8233"), \
    ("0x1b36", "0x0010")


def dev(ids, chain, **extra):
    return {"vendor": ids[0], "device": ids[1], "class": "0x010802" if ids == NVME else "0x060400",
            "chain": chain, **extra}


def switch_cmb_inventory():
    c = ["0000:00:02.0", "0000:01:00.0"]
    return {
        "kernel": {"release": "7.3", "p2pdma": True},
        "pci": {
            "0000:00:02.0": dev(RP, []),
            "0000:01:00.0": dev(UP, c[:1]),
            "0000:02:00.0": dev(DP, c),
            "0000:02:01.0": dev(DP, c),
            "0000:03:00.0": dev(NVME, c + ["0000:02:00.0"], p2pmem={"size": str(64 << 20)}),
            "0000:04:00.0": dev(NVME, c + ["0000:02:01.0"], p2pmem={"size": str(64 << 20)}),
        },
        "nvme": {"nvme0": {"serial": "nvme1", "bdf": "0000:04:00.0"},   # names need not match
                 "nvme1": {"serial": "nvme0", "bdf": "0000:03:00.0"}},
    }


TOPO = load_topology("switch-cmb")


def test_match_and_mapping_by_serial():
    inv = switch_cmb_inventory()
    assert check_tree(TOPO, inv) == []
    names, _ = map_names(TOPO, inv)
    assert names["nvme0"] == "0000:03:00.0" and names["sw0"] == "0000:01:00.0"


def test_missing_p2pmem_is_reported():
    inv = switch_cmb_inventory()
    del inv["pci"]["0000:03:00.0"]["p2pmem"]
    assert any("not published as p2pmem" in d for d in check_tree(TOPO, inv))


def test_wrong_depth_and_wrong_kind():
    inv = copy.deepcopy(switch_cmb_inventory())
    inv["pci"]["0000:03:00.0"]["chain"] = ["0000:00:02.0"]
    assert any("bridge(s) below the root complex" in d for d in check_tree(TOPO, inv))
    inv = copy.deepcopy(switch_cmb_inventory())
    inv["pci"]["0000:01:00.0"]["device"] = "0x8233"
    assert any("expected a switch upstream port" in d for d in check_tree(TOPO, inv))


def test_missing_controller():
    inv = switch_cmb_inventory()
    del inv["nvme"]["nvme0"]
    assert any("serial 'nvme1'" in d for d in check_tree(TOPO, inv))


def test_kernel_without_p2pdma_skips_p2pmem_checks():
    inv = switch_cmb_inventory()
    inv["kernel"]["p2pdma"] = False
    for d in inv["pci"].values():
        d.pop("p2pmem", None)
    assert check_tree(TOPO, inv) == []
