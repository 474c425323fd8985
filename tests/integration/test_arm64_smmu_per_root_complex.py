"""Two root complexes on the arm64 virt board, each behind its own SMMUv3 (strict):
hostbridges-cmb-arm64-smmuv3 (virt's root complex with nvme0; a pxb-pcie expander with
nvme1 and nvme2 behind a switch).  Only QEMU 11.1 makes an SMMUv3 per root complex
(``-device arm-smmuv3,primary-bus=``), so this runs on the installed QEMU (the
``installed_qemu`` fixture, marker ``qemu_install``: make test's installed-QEMU step); the
machine boots through UEFI (only its ACPI/IORT tables describe the expander).

ONE boot, two tests: the guest sees two SMMUv3s and every node at its address; the switch
pair on the expander maps by bus address and faults at the expander's SMMU (QEMU model
limit, predicted), the pair across root complexes is refused (no arm64 rule); the IOMMU
groups are the predicted ones and none spans the two root complexes.
"""

from __future__ import annotations

import pytest

from testbed.spec import load_topology

TOPOLOGY = "hostbridges-cmb-arm64-smmuv3"
pytestmark = [pytest.mark.qemu_install, pytest.mark.topology(TOPOLOGY)]
SIZE = 256 << 10


def test_two_smmus_switch_pair_faults_cross_root_complex_refused(installed_qemu, guest):
    assert guest.check("uname -m").stdout.strip() == "aarch64"
    smmus = guest.check("ls /sys/class/iommu").stdout.split()
    assert len(smmus) == 2 and all("smmu" in s for s in smmus), smmus
    topo = load_topology(TOPOLOGY)
    assert set(guest.names) == {n.name for n in topo.nodes()}
    records = guest.workload("p2p-copy", size=SIZE, pairs=(("nvme1", "nvme2"),
                                                           ("nvme1", "nvme0")))
    by_pair = {(r["provider"], r["client"]): r for r in records}
    for r in records:
        assert (r["observed"], r["observed_map_type"]) == \
            (r["predicted"], r["predicted_map_type"]), r
        assert r["passed"] is True and "mechanism_problem" not in r, r
        assert {d["type"] for d in r["mechanism"]["domains"].values()} == {"DMA"}, r
    fault = by_pair[("nvme1", "nvme2")]
    assert (fault["observed"], fault["observed_map_type"], fault["qemu_limit"]) == \
        ("iommu-fault", "bus-address", True), fault
    assert "F_TRANSLATION" in fault["detail"], fault["detail"]
    refused = by_pair[("nvme1", "nvme0")]
    assert (refused["observed"], refused["observed_map_type"]) == \
        ("rejected", "not-supported"), refused


def test_groups_never_span_the_root_complexes(guest):
    groups, *iso = guest.workload("isolation")
    assert groups["observed"] == groups["predicted"], groups["detail"]
    assert groups["data"]["acs_differences"] == []
    observed = groups["data"]["observed_groups"]
    # the expander's root complex (hb1 itself is a function on virt's root bus)
    behind_hb1 = {"rp1", "sw1", "sw1-dp0", "sw1-dp1", "nvme1", "nvme2"}
    for group in observed:
        assert set(group) <= behind_hb1 or not set(group) & behind_hb1, observed
    assert ["sw1-dp0", "nvme1"] in observed and ["sw1-dp1", "nvme2"] in observed, observed
    assert ["nvme0"] in observed, observed
    assert all(p["observed"] == p["predicted"] for p in iso), iso
