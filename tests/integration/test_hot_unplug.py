"""hot-unplug on a root-port topology (rootports-cmb-zen: P2P through the AMD root
complex), and the pytest plugin's QMP hot-plug helpers."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.topology("rootports-cmb-zen")


def test_hot_unplug_below_a_root_port(guest):
    records = guest.workload("hot-unplug", pairs=(("nvme0", "nvme1"),))
    assert len(records) == 1
    r = records[0]
    assert (r["predicted"], r["observed"]) == ("ok", "ok"), r["detail"]
    assert r["data"]["slot"] == {"bus": "rp0", "kind": "root port"}
    assert r["data_verified"] is True and "kernel healthy" in r["detail"]


def test_unplug_and_replug_helpers(guest):
    bdf = guest.names["nvme1"]
    step = guest.unplug("nvme1")
    assert step["event"]["device"] == "nvme1"
    assert guest.run(f"test -e /sys/bus/pci/devices/{bdf}").exit_status == 1
    back = guest.replug("nvme1")
    assert back["tree_differences"] == []
    assert guest.run(f"cat /sys/bus/pci/devices/{guest.names['nvme1']}/p2pmem/published"
                     ).stdout.strip() == "1"
