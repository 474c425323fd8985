"""P2P to a BAR without struct page on the CI profile kernel (base+vfio-iommufd+coverage:
IOMMUFD, VFIO device cdevs, vfio-pci's dma-buf export, everything built in; no VFIO
container, no ACPI PCI hot-plug): type1 is not there, iommufd refuses the VM_PFNMAP mmap,
the dma-buf of the CMB maps and carries DMA both ways, and every revocation (memory
decoding off, reset, close, the provider's QMP unplug) takes the mapping away.  The three
vIOMMU topologies hot-plug natively (``machine.hotplug: native``: pciehp, which this kernel
has, instead of q35's ACPI default, which it lacks).  One guest each (this module boots
them one after another)."""

from __future__ import annotations

import json

import pytest

from testbed.guest.boot import BootOptions, boot
from testbed.guest_tool.schema import VFIO_BAR_IOVA
from testbed.pytest_plugin import TestbedGuest
from testbed.spec import load_topology

pytestmark = pytest.mark.profile_kernel

TOPOLOGIES = ("switch-cmb-intel-iommu", "switch-cmb-iommu-pt", "switch-cmb-virtio-iommu")
PAIR = ("nvme0", "nvme1")
TRIGGERS = ("decoding", "reset", "close", "unplug")


@pytest.fixture(scope="module", params=TOPOLOGIES)
def guest(request, profile_kernel):
    """One guest per topology on the profile kernel, shared by the module's tests."""
    topo = load_topology(request.param)
    booted = boot(topo, options=BootOptions(kernel=profile_kernel))
    try:
        yield TestbedGuest(booted, topo)
    finally:
        booted.shutdown()


def test_userspace_nvme_driver_over_iommufd(guest):
    """The driver's queues mapped through an iommufd IOAS and a device cdev."""
    bdf = guest.names["nvme1"]
    args = ["p2pdma-guest", "vfio-nvme", "--bdf", bdf, "--iommu", "iommufd", "--size", "128K"]
    if guest.topology.iommu.model == "virtio":  # no interrupt remapping (see verdicts.vfio)
        args.append("--allow-unsafe-interrupts")
    res = guest.run(args, timeout=180)
    doc = json.loads(res.stdout)
    assert "stage" not in doc, doc.get("error")
    assert doc["identify"]["serial"] == doc["kernel_view"]["serial"]
    assert doc["data_verified"] is True and doc["steps"]["verify_kernel"]["ok"]


def test_vfio_p2p_on_the_profile_kernel(guest):
    records = {r["name"]: r for r in guest.workload("vfio-p2p", pairs=(PAIR,), size=256 << 10)}
    assert set(records) == {"vfio-type1", "vfio-pfnmap", "vfio-dmabuf",
                            *(f"vfio-revoke-{t}" for t in TRIGGERS)}
    for r in records.values():
        assert r["passed"], (r["name"], r.get("mismatch"), r["detail"])
    # no VFIO container in this kernel: type1 is not there to run
    t1 = records["vfio-type1"]
    assert (t1["predicted"], t1["observed"]) == ("unsupported", "unsupported"), t1["detail"]
    # iommufd refuses the VM_PFNMAP mmap with EFAULT and maps nothing of the BAR
    pf = records["vfio-pfnmap"]
    assert (pf["observed"], pf["observed_map_type"]) == ("rejected", "none"), pf["detail"]
    assert pf["data"]["map"]["errno_name"] == "EFAULT"
    # the dma-buf maps the BAR at the IOVA and carries DMA both ways, every byte checked
    db = records["vfio-dmabuf"]
    assert (db["observed"], db["observed_map_type"], db["data_verified"]) == \
        ("ok", "iommu-mmio", True), db["detail"]
    assert db["mechanism"]["bar_maps"][0]["iova"] == hex(VFIO_BAR_IOVA)
    assert any(e["event"].startswith("dma_buf") for e in db["mechanism"]["events"])
    for t in TRIGGERS:
        r = records[f"vfio-revoke-{t}"]
        assert (r["observed"], r["data_verified"]) == ("revoked", True), (t, r["detail"])
        # the client's read was tried within its bound; it fails, times out, or QEMU's
        # NVMe completes it although its DMA faulted (a model limit): the CMB is not written
        assert r["data"]["attempt"]["seconds"] < 15, (t, r["data"]["attempt"])
        if t == "unplug":  # the provider (and its CMB) was gone when the client tried
            assert r["data"]["request"]["count"] >= 1 and r["data"]["removed"]["gone"], r["data"]
            assert r["data"]["replugged"]["back"] is True, r["data"]
        else:
            assert r["data"]["cmb_untouched"] is True
        assert r["mechanism"]["revocation_unmapped_iova"] is True, (t, r["mechanism"])
        assert any(e["event"] == "iommufd_revoke"
                   for e in r["mechanism"]["revocation_events"]), (t, r["mechanism"])
    # the unplug went through pciehp: QEMU deleted the provider and put it back
    un = records["vfio-revoke-unplug"]
    assert "pciehp" in un["reason"], un["reason"]
    qmp = un["data"]["qmp"]
    assert qmp["device_del"]["event"]["device"] == "nvme0", qmp
    assert qmp["device_add"] and qmp["tree_differences"] == [], qmp


def test_devices_are_back_on_nvme(guest):
    for name in PAIR:
        bdf = guest.names[name]
        res = guest.run(f"basename $(readlink /sys/bus/pci/devices/{bdf}/driver); "
                        f"cat /sys/bus/pci/devices/{bdf}/p2pmem/published; "
                        "cat /run/p2pdma-guest-vfio.json 2>/dev/null || echo none")
        assert res.stdout.split() == ["nvme", "1", "none"], (name, res.stdout)
    assert guest.run("cat /sys/module/iommufd/parameters/allow_unsafe_interrupts"
                     ).stdout.strip() == "N"
