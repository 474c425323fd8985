"""The arm64 guest, judged against the oracle: ONE boot of mixed-cmb-arm64-smmuv3 (QEMU's
virt board, GICv3, an SMMUv3 in passthrough; a switch pair and an NVMe on another root
port), shared by every test here.  TCG arm64 is slow, so this module boots nothing else;
the first run on a machine also builds the arm64 image (cached afterwards).

What it proves: the guest runs Debian's arm64 kernel; for every pair the verdict, the map
type the guest kernel chose (traced) and the IOMMU domains equal the oracle's arm64 rules
(drivers/pci/p2pdma.c: no allow-listed host bridge, no CPU rule, so a pair without a
common switch is refused); the IOMMU groups the SMMUv3 driver made are the predicted ones.
"""

from __future__ import annotations

import pytest

from testbed.spec import load_topology
from testbed.verdicts.predict import pairs

TOPOLOGY = "mixed-cmb-arm64-smmuv3"
pytestmark = [pytest.mark.arm64, pytest.mark.topology(TOPOLOGY)]


def test_the_guest_is_arm64_behind_an_smmuv3(guest):
    """The running kernel is arm64, the SMMUv3 driver bound, every node is at its address
    and both CMBs are published as p2pmem (nvme2 has none)."""
    assert guest.check("uname -m").stdout.strip() == "aarch64"
    res = guest.check("ls /sys/class/iommu; cat /proc/cmdline")
    assert "smmu" in res.stdout and "iommu.passthrough=1" in res.stdout, res.stdout
    topo = load_topology(TOPOLOGY)
    assert set(guest.names) == {n.name for n in topo.nodes()}
    providers = {bdf for bdf, d in guest.inventory["pci"].items() if "p2pmem" in d}
    assert providers == {guest.names["nvme0"], guest.names["nvme1"]}


def test_p2p_copy_matches_the_arm64_rules(guest):
    """Under the switch: ok by bus address, data verified.  Across root ports: refused by
    the kernel, for the oracle's reason (nothing on arm64 lets P2P through the root
    complex), and the kernel says so in dmesg."""
    records = guest.workload("p2p-copy", size=256 << 10)
    topo = load_topology(TOPOLOGY)
    assert [(r["provider"], r["client"]) for r in records] == pairs(topo)
    got = {(r["provider"], r["client"]): (r["observed"], r["observed_map_type"])
           for r in records}
    assert got == {("nvme0", "nvme1"): ("ok", "bus-address"),
                   ("nvme1", "nvme0"): ("ok", "bus-address"),
                   ("nvme0", "nvme2"): ("rejected", "not-supported"),
                   ("nvme1", "nvme2"): ("rejected", "not-supported")}, records
    for r in records:
        assert (r["observed"], r["observed_map_type"]) == \
            (r["predicted"], r["predicted_map_type"]), r
        assert r["passed"] is True and "mechanism_problem" not in r, r
        mech = r["mechanism"]
        assert mech["requests"] >= 1, mech
        # passthrough: the SMMUv3 driver gave every device an identity domain
        assert {d["type"] for d in mech["domains"].values()} == {"identity"}, mech
        if r["observed"] == "ok":
            assert r["data_verified"] is True and r["mb_per_s"] > 0, r
            assert mech["iommu_p2p_maps"] == 0, mech
        else:
            assert "trusts no aarch64 CPU" in r["reason"], r["reason"]
    assert "do not share an upstream bridge or whitelisted host bridge" in \
        guest.dmesg_since_test_start()


def test_smmuv3_groups_match_the_oracle(guest):
    """The groups the SMMUv3 driver formed equal the predicted ones: below the switch
    (no ACS on the x3130 downstream ports) every endpoint reaches the other, a predicted
    isolation hole; the root ports isolate (the SMMUv3's device-tree configuration requested
    ACS: SV RR CR UF enabled), so nvme2 and the switch's upstream port are alone."""
    groups, *iso = guest.workload("isolation")
    assert groups["observed"] == groups["predicted"] == "upstream-walk", groups["detail"]
    assert groups["data"]["acs_differences"] == []
    observed = groups["data"]["observed_groups"]
    assert ["sw0-dp0", "nvme0"] in observed and ["sw0-dp1", "nvme1"] in observed, observed
    assert ["nvme2"] in observed and ["sw0"] in observed, observed
    assert {d: a["ctrl"] for d, a in groups["data"]["acs"].items() if a["cap"]} == \
        {"rp0": 0x1D, "rp1": 0x1D}, groups["data"]["acs"]
    assert all(p["observed"] == p["predicted"] for p in iso), iso
    holes = {(p["provider"], p["client"]) for p in iso if p["observed"] == "isolation-hole"}
    assert holes == {("nvme0", "nvme1"), ("nvme1", "nvme0")}, iso
