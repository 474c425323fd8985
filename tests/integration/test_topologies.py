"""Every library topology boots (the guest-side tree and p2pmem check runs at boot),
and for every P2P pair the oracle's prediction equals the observed verdict.

One guest per topology, shared by the tests of this module (the plugin's `guest`
fixture, selected with the `topology` marker).
"""

from __future__ import annotations

import pytest

from testbed.verdicts.predict import pairs
from testbed.spec import library, load_topology

LIBRARY = sorted(library())
CASES = [pytest.param(name, marks=pytest.mark.topology(name), id=name) for name in LIBRARY]


def test_library_has_the_named_topologies():
    for name in ("switch-cmb", "rootports-cmb", "rootports-cmb-zen", "switch-cmb-intel-iommu",
                 "switch-cmb-virtio-iommu", "switch-cmb-iommu-pt", "nvme-pmr", "fabric-large"):
        assert name in LIBRARY


@pytest.mark.parametrize("name", CASES)
def test_guest_sees_the_topology(guest, name):
    topo = load_topology(name)
    # boot() already compared the guest's sysfs with the spec; check what it mapped
    assert set(guest.names) == {n.name for n in topo.nodes()}
    providers = [bdf for bdf, d in guest.inventory["pci"].items() if "p2pmem" in d]
    assert len(providers) == sum(1 for n in topo.nvmes() if n.cmb)
    assert guest.inventory["kernel"]["p2pdma"] is True


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


def test_all_verdict_kinds_occur_across_the_library():
    """The library exercises ok, rejected and iommu-fault (computed, not listed)."""
    from testbed.qemu.probe import cpu_info, probe
    from testbed.verdicts.predict import predict
    verdicts = set()
    for name in LIBRARY:
        topo = load_topology(name)
        cpu = cpu_info(probe(), topo.machine.cpu)
        verdicts |= {predict(topo, a, b, cpu).verdict for a, b in pairs(topo)}
    assert {"ok", "rejected", "iommu-fault"} <= verdicts
