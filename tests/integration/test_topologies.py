"""Every library topology boots (the guest-side tree and p2pmem check runs at boot),
and for every P2P pair the oracle's prediction equals the observed verdict and the
mechanism the guest kernel chose (its map type, traced), with the IOMMU evidence; the IOMMU
groups and ACS registers the guest kernel set up are the ones the oracle predicts.

One guest per topology, shared by the tests of this module (the plugin's `guest`
fixture, selected with the `topology` marker).
"""

from __future__ import annotations

import pytest

from testbed.verdicts.predict import pairs
from testbed.spec import library, load_topology
from testbed.spec.model import Machine

# the library topologies that run on the QEMU they name (the AMD vIOMMU ones need 11.x:
# tests/integration/test_qemu_install.py boots those on the installed QEMU)
LIBRARY = sorted(n for n in library() if load_topology(n).machine.qemu == Machine().qemu)
# The arm64 library topologies are not booted here: TCG arm64 is slow, so test_arm64.py
# boots one of them (mixed-cmb-arm64-smmuv3: a switch, a root port, an SMMUv3) for all.
ARM64 = {name for name in LIBRARY if load_topology(name).machine.arch == "aarch64"}
CASES = [pytest.param(name, marks=pytest.mark.topology(name), id=name)
         for name in LIBRARY if name not in ARM64]


def case(name: str) -> list:
    """One topology's case, for a test of that topology alone: parametrized like the others
    so that under `make test` it runs with them, on their guest (tests/integration/
    conftest.py makes each topology's tests here one xdist scope)."""
    return [c for c in CASES if c.id == name]


def test_library_has_the_named_topologies():
    for name in ("switch-cmb", "rootports-cmb", "rootports-cmb-zen", "switch-cmb-intel-iommu",
                 "switch-cmb-virtio-iommu", "switch-cmb-iommu-pt", "nvme-pmr", "fabric-large",
                 "switch-cmb-zen", "hostbridges-cmb-zen", "rootports-cmb-zen-intel-iommu",
                 "rootports-intel-iommu", "rootports-acs-off", "switch-cmb-igb",
                 "switch-cmb-intel-iommu-igb", "switch-cmb-arm64",
                 "rootports-cmb-arm64", "switch-cmb-arm64-smmuv3", "switch-cmb-arm64-smmuv3-pt",
                 "mixed-cmb-arm64-smmuv3", "hostbridges-cmb-arm64-smmuv3"):
        assert name in library()


@pytest.mark.parametrize("name", CASES)
def test_guest_sees_the_topology(guest, name):
    topo = load_topology(name)
    # boot() already compared the guest's sysfs with the spec; check what it mapped
    assert set(guest.names) == {n.name for n in topo.nodes()}
    providers = [bdf for bdf, d in guest.inventory["pci"].items() if "p2pmem" in d]
    assert len(providers) == len(topo.providers()) == sum(1 for n in topo.nvmes() if n.cmb)
    assert guest.inventory["kernel"]["p2pdma"] is True


@pytest.mark.parametrize("name", [c for c in CASES if any(
    e.kind == "igb" for e in load_topology(c.values[0]).endpoints())])
def test_the_igb_is_bound_to_igb_and_in_no_pair(guest, name):
    """The endpoint that is not an NVMe: found at its address, bound to the igb driver
    (asked of the guest's sysfs directly, not through the inventory), with a network
    interface of its own, and in no P2P pair (test_p2p_copy_matches_the_oracle runs every
    pair there is)."""
    topo = load_topology(name)
    bdf = guest.names["nic0"]
    res = guest.run(["sh", "-c", f"readlink /sys/bus/pci/devices/{bdf}/driver; "
                     f"cat /sys/bus/pci/devices/{bdf}/vendor /sys/bus/pci/devices/{bdf}/device; "
                     f"ls /sys/bus/pci/devices/{bdf}/net"], timeout=30)
    assert res.ok, res.describe()
    driver, vendor, device, *netdevs = res.stdout.split()
    assert driver.endswith("/igb") and (vendor, device) == ("0x8086", "0x10c9")
    assert netdevs, "the igb driver made no network interface"
    assert pairs(topo) and all("nic0" not in pair for pair in pairs(topo))


@pytest.mark.parametrize("name", CASES)
def test_p2p_copy_matches_the_oracle(guest, name):
    records = guest.workload("p2p-copy", size=256 << 10)
    topo = load_topology(name)
    assert len(records) == len(pairs(topo))
    for r in records:
        assert r["observed"] == r["predicted"], (
            f"{r['provider']} -> {r['client']}: predicted {r['predicted']} ({r['reason']}), "
            f"observed {r['observed']} ({r.get('detail')})")
        if r["observed"] == "ok":
            assert r["data_verified"] is True
            assert r["mb_per_s"] > 0
        # the mechanism: observed from the guest kernel's own tracing, on every pair
        assert r["predicted_map_type"] in ("bus-address", "host-bridge", "not-supported")
        assert r["observed_map_type"] == r["predicted_map_type"], r
        assert r["passed"] is True and "mechanism_problem" not in r, r
        mech = r["mechanism"]
        assert mech["requests"] >= 1
        if topo.iommu.model != "none":  # the IOMMU evidence: domains and BAR mappings
            assert {d["type"] for d in mech["domains"].values()} == \
                {"DMA" if topo.iommu.mode == "strict" else "identity"}, mech
            if r["observed_map_type"] == "bus-address":
                assert mech["iommu_p2p_maps"] == 0, mech
            if r["observed_map_type"] == "host-bridge" and topo.iommu.mode == "strict":
                assert mech["iommu_p2p_maps"] > 0, mech
    assert {r["observed_map_type"] for r in records} <= {"bus-address", "host-bridge",
                                                          "not-supported"}


@pytest.mark.parametrize("name", case("switch-cmb-intel-iommu"))
def test_a_controllers_own_cmb_for_its_own_io(guest, name):
    """provider = client: distance 0, by bus address, and QEMU's NVMe serves its own CMB
    without the vIOMMU, so no fault even where every other pair faults."""
    (r,) = guest.workload("p2p-copy", size=256 << 10, pairs=(("nvme0", "nvme0"),))
    assert (r["provider"], r["client"], r["predicted"], r["observed"]) == \
        ("nvme0", "nvme0", "ok", "ok")
    assert r["observed_map_type"] == "bus-address" and r["data_verified"] is True


def test_both_mechanisms_of_ok_are_in_the_library():
    """The same verdict, two mechanisms: a switch (bus address) and root ports (host
    bridge), both with an EPYC CPU model, and across two host bridges."""
    from testbed.verdicts.predict import predict
    from testbed.qemu.probe import CpuInfo
    epyc = CpuInfo("EPYC", "AuthenticAMD", 0x17)
    got = {name: {predict(load_topology(name), a, b, epyc).map_type
                  for a, b in pairs(load_topology(name))}
           for name in ("switch-cmb-zen", "rootports-cmb-zen", "hostbridges-cmb-zen",
                        "rootports-cmb-zen-intel-iommu")}
    assert got == {"switch-cmb-zen": {"bus-address"}, "rootports-cmb-zen": {"host-bridge"},
                   "hostbridges-cmb-zen": {"host-bridge"},
                   "rootports-cmb-zen-intel-iommu": {"host-bridge"}}


SWITCHES = ("switch-cmb-intel-iommu", "switch-cmb-virtio-iommu", "switch-cmb-iommu-pt",
            "switch-cmb-intel-iommu-igb")


@pytest.mark.parametrize("name", CASES)
def test_isolation_matches_the_oracle(guest, name):
    """Observed groups equal the predicted 7.3.4 grouping; the switch topologies show the
    isolation hole (a passing, predicted finding), ACS on every port shows none, and the
    root ports with acs: false merge their subtrees exactly as predicted."""
    topo = load_topology(name)
    groups, *pairs = guest.workload("isolation")
    assert groups["observed"] == groups["predicted"], groups["detail"]
    assert groups["data"]["acs_differences"] == []
    if topo.iommu.model == "none":
        assert (groups["predicted"], pairs) == ("no-groups", [])
        return
    assert groups["predicted"] == "upstream-walk"  # the image's 7.3.4 (kallsyms)
    assert all(p["observed"] == p["predicted"] for p in pairs), pairs
    holes = {(p["provider"], p["client"]) for p in pairs if p["observed"] == "isolation-hole"}
    findings = {(p["provider"], p["client"]) for p in pairs if p.get("finding")}
    assert holes == findings
    if name in SWITCHES:  # every endpoint below the switch reaches every other one
        below = [e.name for e in topo.endpoints()]
        assert holes == {(a, b) for a in below for b in below if a != b}
        assert all("kernel grouping problem" in p["finding"] and not p["qemu_limit"]
                   for p in pairs)
        assert ["sw0-dp0", "nvme0"] in groups["data"]["observed_groups"]
    else:
        assert holes == set()
    if name == "rootports-intel-iommu":
        assert pairs == []
        assert {d: a["ctrl"] for d, a in groups["data"]["acs"].items()} == \
            {"rp0": 0x1D, "rp1": 0x1D}
    if name == "rootports-acs-off":
        observed = groups["data"]["observed_groups"]
        assert ["rp0", "nvme0"] in observed and ["rp1"] in observed
        assert ["rp2", "sw0", "sw0-dp0", "sw0-dp1", "nvme2", "nvme3"] in observed
        assert groups["data"]["acs"]["rp0"]["cap"] is None
        assert [(p["provider"], p["client"], p["observed"]) for p in pairs] == [
            ("nvme2", "nvme3", "ok"), ("nvme3", "nvme2", "ok")]


HMM_CASES = [c for c in CASES if c.id in ("switch-cmb", "rootports-cmb-zen", "rootports-cmb",
                                          "rootports-cmb-zen-intel-iommu")]


@pytest.mark.parametrize("name", HMM_CASES)
def test_hmm_p2p_maps_as_the_oracle_says(guest, name):
    """The ODP mapping path (hmm_range_fault + hmm_dma_map_pfn, through the project's
    hmm_p2p_test module, built for the image kernel with Debian's headers): per pair, the
    P2P pages get the oracle's map type (P2PDMA_BUS with the page's PCI bus address,
    P2PDMA with a physical address or an IOVA, or a refusal), the host pages beside them
    are mapped plainly, unmap and notifier invalidation undo it; the module is unloaded
    afterwards and the pool is whole again.  On the three mechanisms and the IOVA path
    (guests this module boots anyway)."""
    topo = load_topology(name)
    chosen = tuple(pairs(topo)[:2])
    avail = "cat /sys/bus/pci/devices/*/p2pmem/available"
    before = guest.check(avail).stdout
    records = guest.workload("hmm-p2p", pairs=chosen)
    assert [(r["provider"], r["client"]) for r in records] == list(chosen)
    for r in records:
        assert r["passed"] is True and "mechanism_problem" not in r, r
        assert r["observed_map_type"] == r["predicted_map_type"], r
        pages = r["data"]["map"]["pages"]
        assert [p["kind"] for p in pages] == ["host", "p2p", "p2p", "p2p", "p2p", "host"]
        p2p = [p for p in pages if p["kind"] == "p2p"]
        if r["observed_map_type"] == "bus-address":
            assert all(p["state"] == "bus" and p["dma"] == p["expected_bus"] for p in p2p)
        elif r["observed_map_type"] == "host-bridge":
            assert all(p["state"] == "host-bridge" for p in p2p)
            iova = topo.iommu.model != "none" and topo.iommu.mode == "strict"
            assert all((p["dma"] != p["phys"]) == iova for p in pages), pages
            assert r["data"]["map"]["use_iova"] == int(iova)
        else:
            assert all(p["state"] == "refused" and p["dma"] == 0 for p in p2p)
    assert guest.run("grep -w hmm_p2p_test /proc/modules").exit_status == 1
    assert guest.check(avail).stdout == before


@pytest.mark.parametrize("name", case("switch-cmb"))
def test_hmm_p2p_turns_a_kernel_warning_into_an_error(guest, name):
    (r,) = guest.workload("hmm-p2p", pairs=(("nvme0", "nvme1"),), inject=("warning",))
    assert r["observed"] == "error" and "WARNING: CPU: 0 PID: 1 at testbed/self" in r["detail"]


@pytest.mark.parametrize("name", case("switch-cmb"))
def test_hmm_selftests_run_against_test_hmm_built_for_the_image_kernel(guest, name):
    """kselftest:hmm on the image kernel, which has HMM_MIRROR and DEVICE_PRIVATE but not
    TEST_HMM: lib/test_hmm.c of its own source (linux-source-7.3) is built against Debian's
    headers and loaded for the run; mm's hmm-tests (the same source) pass every test the
    module offers; the coherent-device variants skip (test_hmm loaded without reserved
    SPM ranges) and say so; the module is unloaded afterwards."""
    (r,) = guest.workload("kselftest:hmm")
    assert (r["test"], r["observed"], r["passed"]) == ("hmm-tests", "ok", True), r["detail"]
    counts = r["data"]["counts"]
    assert counts["pass"] >= 30 and counts["fail"] == 0 and counts["error"] == 0, counts
    leaves = [t for t in r["subtests"] if not t.get("subtests")]
    assert any(t["status"] == "skip" and "DEVICE_COHERENT" in t.get("reason", "")
               for t in leaves)
    assert guest.run("grep -w test_hmm /proc/modules").exit_status == 1
    assert guest.run("ls /dev/hmm_dmirror0").exit_status != 0


def test_all_verdict_kinds_occur_across_the_library():
    """The library exercises ok, rejected and iommu-fault (computed, not listed)."""
    from testbed.qemu.probe import cpu_info, probe
    from testbed.verdicts.predict import predict
    verdicts = set()
    for name in LIBRARY:
        topo = load_topology(name)
        cpu = cpu_info(probe(topo.machine.qemu), topo.machine.cpu, topo.profile.cpu)
        verdicts |= {predict(topo, a, b, cpu).verdict for a, b in pairs(topo)}
    assert {"ok", "rejected", "iommu-fault"} <= verdicts
