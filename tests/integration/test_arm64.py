"""The arm64 guests, judged against the oracle: one boot each of four arm64 library
topologies (QEMU's virt board, GICv3, Debian's arm64 kernel), each boot shared by the tests
of its topology and shut down after the last of them.  TCG arm64 is slow, so the workloads
are small (256 KiB copies, fio on one pair); the first run on a machine also builds the
arm64 image (cached afterwards).

- switch-cmb-arm64 (no vIOMMU): p2p-copy ok by bus address, fio's default jobs on p2pmem
  buffers verified, isolation: no groups;
- switch-cmb-arm64-smmuv3 (SMMUv3 strict): the bus-address transfers of p2p-copy and fio
  fault at the SMMU (a QEMU model limit, predicted), DMA domains, groups as predicted;
- rootports-cmb-arm64: refused (p2pdma.c has no arm64 rule for the root complex), fio too;
- mixed-cmb-arm64-smmuv3 (SMMUv3 passthrough): both answers in one guest, identity domains,
  the SMMUv3's ACS request on the root ports.

For every pair the verdict, the map type the guest kernel chose (traced) and the IOMMU
domains equal the oracle's arm64 rules; the IOMMU groups are the predicted ones.
(hostbridges-cmb-arm64-smmuv3, one SMMUv3 per root complex, needs QEMU 11.1:
test_arm64_smmu_per_root_complex.py in the installed-QEMU step.)
"""

from __future__ import annotations

from typing import Any

import pytest

from testbed.spec import load_topology
from testbed.verdicts.predict import pairs

SWITCH = "switch-cmb-arm64"
STRICT = "switch-cmb-arm64-smmuv3"
ROOTPORTS = "rootports-cmb-arm64"
MIXED = "mixed-cmb-arm64-smmuv3"
SIZE = 256 << 10
REFUSED_DMESG = "do not share an upstream bridge or whitelisted host bridge"
pytestmark = pytest.mark.arm64


def as_predicted(records: list[dict[str, Any]]) -> None:
    """Every record: the verdict (and, where the workload traces it, the map type) the
    oracle predicted, judged passed."""
    for r in records:
        assert r["observed"] == r["predicted"], r
        assert r.get("observed_map_type") == r.get("predicted_map_type"), r
        assert r["passed"] is True and "mechanism_problem" not in r, r


def domain_types(record: dict[str, Any]) -> set[str]:
    return {d["type"] for d in record["mechanism"]["domains"].values()}


# --- switch-cmb-arm64: no vIOMMU ------------------------------------------------------

@pytest.mark.topology(SWITCH)
def test_switch_p2p_copy_by_bus_address(guest):
    assert guest.check("uname -m").stdout.strip() == "aarch64"
    records = guest.workload("p2p-copy", size=SIZE)
    assert [(r["provider"], r["client"]) for r in records] == pairs(load_topology(SWITCH))
    as_predicted(records)
    for r in records:
        assert (r["observed"], r["observed_map_type"], r["data_verified"]) == \
            ("ok", "bus-address", True), r
        assert r["mechanism"]["requests"] >= 1 and r["mb_per_s"] > 0, r


@pytest.mark.topology(SWITCH)
def test_switch_fio_on_p2pmem_buffers(guest):
    """fio's default jobs (psync, libaio, io_uring; 4K to 1M; verified) with their buffers
    in nvme0's CMB, written to nvme1: ok and every block read back and verified."""
    (r,) = guest.workload("fio", pairs=(("nvme0", "nvme1"),))
    as_predicted([r])
    assert (r["observed"], r["data_verified"]) == ("ok", True), r
    assert "5 fio job(s) completed" in r["detail"], r["detail"]  # one job runs twice
    assert r["data"]["host"]["data_verified"] is True, r["data"]


@pytest.mark.topology(SWITCH)
def test_switch_without_viommu_has_no_groups(guest):
    groups, *iso = guest.workload("isolation")
    assert groups["observed"] == groups["predicted"] == "no-groups", groups
    assert all(p["observed"] == p["predicted"] for p in iso), iso


# --- switch-cmb-arm64-smmuv3: SMMUv3 strict -------------------------------------------

@pytest.mark.topology(STRICT)
def test_strict_smmuv3_faults_the_bus_address_transfer(guest):
    """Linux maps the switch pair by bus address (no IOMMU entry); QEMU sends the DMA
    through the SMMUv3 at the root complex, which faults it: iommu-fault, as predicted and
    labelled a QEMU model limit.  DMA (translating) domains on both NVMe."""
    assert "iommu.strict=1" in guest.check("cat /proc/cmdline").stdout
    records = guest.workload("p2p-copy", size=SIZE)
    assert len(records) == 2
    as_predicted(records)
    for r in records:
        assert (r["observed"], r["observed_map_type"], r["qemu_limit"]) == \
            ("iommu-fault", "bus-address", True), r
        assert domain_types(r) == {"DMA"}, r["mechanism"]
        assert r["mechanism"]["iommu_p2p_maps"] == 0, r["mechanism"]


@pytest.mark.topology(STRICT)
def test_strict_smmuv3_faults_fio_too(guest):
    """fio's verified jobs with the buffers in nvme0's CMB: the SMMUv3 faults the DMA, so
    the verify fails and the fault line names the client: iommu-fault, as predicted."""
    (r,) = guest.workload("fio", pairs=(("nvme0", "nvme1"),))
    as_predicted([r])
    assert (r["observed"], r["qemu_limit"], r["data_verified"]) == \
        ("iommu-fault", True, False), r
    assert "F_TRANSLATION client: " + guest.names["nvme1"] in r["detail"], r["detail"]


@pytest.mark.topology(STRICT)
def test_strict_smmuv3_groups_match_the_oracle(guest):
    groups, *iso = guest.workload("isolation")
    assert groups["observed"] == groups["predicted"] == "upstream-walk", groups["detail"]
    assert groups["data"]["acs_differences"] == []
    observed = groups["data"]["observed_groups"]
    assert ["sw0-dp0", "nvme0"] in observed and ["sw0-dp1", "nvme1"] in observed, observed
    assert all(p["observed"] == p["predicted"] for p in iso), iso


# --- rootports-cmb-arm64: refused ------------------------------------------------------

@pytest.mark.topology(ROOTPORTS)
def test_rootports_p2p_copy_and_fio_are_refused(guest):
    """No switch in common: p2pdma.c asks its host-bridge allow-list (not QEMU's gpex) and
    its CPU rule (x86 only): refused, for p2p-copy and for fio alike."""
    records = guest.workload("p2p-copy", size=SIZE)
    records += guest.workload("fio", pairs=(("nvme0", "nvme1"),))
    assert [r["name"] for r in records] == ["p2p-copy", "p2p-copy", "fio"]
    as_predicted(records)
    for r in records:
        assert r["observed"] == "rejected", r
        assert "trusts no aarch64 CPU" in r["reason"], r["reason"]
    assert [r["observed_map_type"] for r in records[:2]] == ["not-supported"] * 2
    assert REFUSED_DMESG in guest.dmesg_since_test_start()


@pytest.mark.topology(ROOTPORTS)
def test_rootports_without_viommu_have_no_groups(guest):
    groups, *iso = guest.workload("isolation")
    assert groups["observed"] == groups["predicted"] == "no-groups", groups
    assert all(p["observed"] == p["predicted"] for p in iso), iso


# --- mixed-cmb-arm64-smmuv3: SMMUv3 passthrough, both answers ---------------------------

@pytest.mark.topology(MIXED)
def test_the_guest_is_arm64_behind_an_smmuv3(guest):
    """The running kernel is arm64, the SMMUv3 driver bound, every node is at its address
    and both CMBs are published as p2pmem (nvme2 has none)."""
    assert guest.check("uname -m").stdout.strip() == "aarch64"
    res = guest.check("ls /sys/class/iommu; cat /proc/cmdline")
    assert "smmu" in res.stdout and "iommu.passthrough=1" in res.stdout, res.stdout
    topo = load_topology(MIXED)
    assert set(guest.names) == {n.name for n in topo.nodes()}
    providers = {bdf for bdf, d in guest.inventory["pci"].items() if "p2pmem" in d}
    assert providers == {guest.names["nvme0"], guest.names["nvme1"]}


@pytest.mark.topology(MIXED)
def test_p2p_copy_matches_the_arm64_rules(guest):
    """Under the switch: ok by bus address, data verified.  Across root ports: refused by
    the kernel, for the oracle's reason (nothing on arm64 lets P2P through the root
    complex), and the kernel says so in dmesg."""
    # one pair of each kind (the other two are their mirror images; under a vIOMMU each
    # transfer waits out the fault printk ratelimit, so fewer pairs is faster)
    records = guest.workload("p2p-copy", size=SIZE, pairs=(("nvme0", "nvme1"),
                                                           ("nvme0", "nvme2")))
    got = {(r["provider"], r["client"]): (r["observed"], r["observed_map_type"])
           for r in records}
    assert got == {("nvme0", "nvme1"): ("ok", "bus-address"),
                   ("nvme0", "nvme2"): ("rejected", "not-supported")}, records
    as_predicted(records)
    for r in records:
        mech = r["mechanism"]
        assert mech["requests"] >= 1, mech
        # passthrough: the SMMUv3 driver gave every device an identity domain
        assert domain_types(r) == {"identity"}, mech
        if r["observed"] == "ok":
            assert r["data_verified"] is True and r["mb_per_s"] > 0, r
            assert mech["iommu_p2p_maps"] == 0, mech
        else:
            assert "trusts no aarch64 CPU" in r["reason"], r["reason"]
    assert REFUSED_DMESG in guest.dmesg_since_test_start()


@pytest.mark.topology(MIXED)
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
