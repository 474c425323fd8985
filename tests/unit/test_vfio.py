"""The vfio-p2p family's pure parts: the userspace NVMe driver's encodings, the VFIO and
iommufd ABI as the guest tool packs it, DMA memory and its address, IOMMU group
viability, the oracle for each method and the observation of what a method showed."""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct

import pytest

from testbed.guest_tool import dmamem, iommufd, unvme, vfio, vfiobind
from testbed.guest_tool.schema import VFIO_BAR_IOVA
from testbed.spec import load_topology
from testbed.verdicts.vfio import (
    REVOKE,
    GroupView,
    VfioKernel,
    VfioPrediction,
    predict_vfio,
)
from testbed.verdicts.vfio_observe import observe_mechanism, observe_method

IMAGE = VfioKernel.from_probe({"release": "7.3.4+deb13-amd64", "config": {
    "source": "/boot/config-7.3.4+deb13-amd64", "values": {
        "CONFIG_VFIO": "m", "CONFIG_VFIO_CONTAINER": "y", "CONFIG_VFIO_IOMMU_TYPE1": "m",
        "CONFIG_VFIO_DEVICE_CDEV": "n", "CONFIG_IOMMUFD": "n", "CONFIG_VFIO_PCI_DMABUF": "y"}}})
PROFILE = VfioKernel.from_probe({"release": "7.3.4", "config": {"values": {
    "CONFIG_VFIO": "y", "CONFIG_VFIO_CONTAINER": "y", "CONFIG_VFIO_IOMMU_TYPE1": "y",
    "CONFIG_VFIO_DEVICE_CDEV": "y", "CONFIG_IOMMUFD": "y", "CONFIG_VFIO_PCI_DMABUF": "y"}}})

# the CI profile kernel base+vfio-iommufd+coverage as its guest reads it
CI_PROFILE = VfioKernel.from_probe({"release": "7.3.4", "config": {"values": {
    "CONFIG_VFIO": "y", "CONFIG_VFIO_CONTAINER": "n", "CONFIG_VFIO_IOMMU_TYPE1": "n",
    "CONFIG_VFIO_DEVICE_CDEV": "y", "CONFIG_IOMMUFD": "y", "CONFIG_VFIO_PCI_DMABUF": "y",
    "CONFIG_HOTPLUG_PCI_ACPI": "n", "CONFIG_HOTPLUG_PCI_PCIE": "y"}}})


# -- the NVMe driver's encodings ----------------------------------------------------------------
@pytest.mark.parametrize("iova,length,prp2,entries", [
    (0x1000000000, 4096, 0, []),                                  # one page
    (0x1000000000, 8192, 0x1000001000, []),                       # two pages: PRP2 is the 2nd
    (0x1000000800, 4096, 0x1000001000, []),                       # an offset spills over
    (0x1000000000, 3 * 4096, "list", [0x1000001000, 0x1000002000]),  # a PRP list
    (0x1000000200, 128 << 10, "list", [0x1000001000 + i * 4096 for i in range(32)]),
])
def test_prps(iova, length, prp2, entries):
    p1, p2, listed = unvme.prps(iova, length, lambda n: 0xABC000)
    assert p1 == iova
    assert p2 == (0xABC000 if prp2 == "list" else prp2)
    assert listed == entries
    # the pages cover the transfer exactly: first page from the offset, then whole pages
    covered = (4096 - iova % 4096) + 4096 * (len(listed) if prp2 == "list" else (1 if p2 else 0))
    assert covered >= length > covered - 4096


def test_submission_and_completion_entries_have_the_spec_sizes():
    assert unvme.SQE.size == 64 and unvme.CQE.size == 16
    raw = bytearray(64)
    unvme.SQE.pack_into(raw, 0, unvme.OP_READ, 0, 7, 1, 0, 0, 0, 0x1111, 0x2222,
                        10, 0, 31, 0, 0, 0)
    assert raw[0] == 0x02 and struct.unpack_from("<H", raw, 2)[0] == 7  # opcode, CID
    assert struct.unpack_from("<I", raw, 4)[0] == 1  # NSID
    assert struct.unpack_from("<QQ", raw, 24) == (0x1111, 0x2222)  # PRP1, PRP2
    assert struct.unpack_from("<III", raw, 40) == (10, 0, 31)  # SLBA low/high, NLB


def test_qemu_capabilities_decode():
    # CAP as QEMU 10.0's NVMe reports it: MQES 0x7ff, CQR, TO 15, CSS NVM, MPSMAX 64K, CMBS
    cap = 0x7FF | 1 << 16 | 0xF << 24 | 1 << 37 | 4 << 52 | 1 << 57
    c = unvme.decode_cap(cap)
    assert (c["mqes"], c["to_ms"], c["dstrd"], c["mpsmin"], c["mpsmax"]) == \
        (2048, 7500, 0, 4096, 65536)
    assert c["css_nvm"] and c["cmbs"] and not c["pmrs"]


def test_identify_controller_and_namespace_fields():
    ctrl = bytearray(4096)
    struct.pack_into("<HH", ctrl, 0, 0x1B36, 0x1AF4)
    ctrl[4:24] = b"nvme1".ljust(20)
    ctrl[24:64] = b"QEMU NVMe Ctrl".ljust(40)
    ctrl[64:72] = b"10.0.2".ljust(8)
    ctrl[77] = 7
    struct.pack_into("<I", ctrl, 80, 0x10400)
    struct.pack_into("<I", ctrl, 516, 256)
    got = unvme.parse_identify_controller(bytes(ctrl))
    assert (got["serial"], got["model"], got["firmware"], got["mdts"], got["version"],
            got["nn"]) == ("nvme1", "QEMU NVMe Ctrl", "10.0.2", 7, "1.4.0", 256)
    ns = bytearray(4096)
    struct.pack_into("<QQQ", ns, 0, 2097152, 2097152, 100)
    ns[25], ns[26] = 1, 1  # two formats, the second in use
    struct.pack_into("<II", ns, 128, 9 << 16, 12 << 16)
    got = unvme.parse_identify_namespace(bytes(ns))
    assert (got["nsze"], got["lba_size"], got["nlbaf"]) == (2097152, 4096, 2)


def test_nvme_error_names_the_status():
    err = unvme.NvmeError("Read", 0x4)  # SCT 0, SC 4
    assert "Data Transfer Error" in str(err) and err.to_json()["sc"] == 4
    err = unvme.NvmeError("Write", 1 << 14 | 1 << 8 | 0x80)
    assert err.sct == 1 and err.sc == 0x80 and err.dnr


# -- the ABI as packed --------------------------------------------------------------------------
def test_ioctl_numbers_are_those_of_linux_7_3():
    # _IO(';', 100 + n) for VFIO, _IO(';', 0x80 + n) for iommufd: no size, no direction
    assert vfio.VFIO_GROUP_GET_DEVICE_FD == 0x3B6A
    assert vfio.VFIO_DEVICE_RESET == 0x3B6F
    assert vfio.VFIO_IOMMU_MAP_DMA == 0x3B71 and vfio.VFIO_IOMMU_UNMAP_DMA == 0x3B72
    assert vfio.VFIO_DEVICE_FEATURE == 0x3B75
    assert iommufd.VFIO_DEVICE_BIND_IOMMUFD == 0x3B76
    assert iommufd.VFIO_DEVICE_ATTACH_IOMMUFD_PT == 0x3B77
    assert iommufd.IOMMU_IOAS_ALLOC == 0x3B81 and iommufd.IOMMU_IOAS_MAP == 0x3B85
    assert iommufd.IOMMU_IOAS_MAP_FILE == 0x3B8F and vfio.VFIO_DEVICE_FEATURE_DMA_BUF == 11


def test_iova_range_capability_chain():
    # vfio_iommu_type1_info (24 bytes) + IOVA range cap at 24 with two ranges
    info = struct.pack("=IIQII", 72, 3, 4096, 24, 0)
    cap = struct.pack("=HHIII", 1, 1, 0, 2, 0) + struct.pack("=QQQQ", 0, 0xFEDFFFFF,
                                                             0xFEF00000, (1 << 48) - 1)
    assert vfio.parse_iova_ranges(info + cap, 24) == [(0, 0xFEDFFFFF),
                                                      (0xFEF00000, (1 << 48) - 1)]
    assert vfio.parse_iova_ranges(info, 0) == []


def test_dma_map_struct():
    raw = vfio.dma_map_struct(0x7F0000000000, VFIO_BAR_IOVA, 1 << 20)
    assert struct.unpack("=IIQQQ", raw) == (32, 3, 0x7F0000000000, VFIO_BAR_IOVA, 1 << 20)


# -- DMA memory ---------------------------------------------------------------------------------
def test_arena_address_is_the_mapping_in_proc_self_maps():
    arena = dmamem.DmaArena(64 << 10, 0x1000000000, name="tb-unit")
    try:
        with open("/proc/self/maps") as f:
            line = next(ln for ln in f if ln.startswith(f"{arena.vaddr:x}-"))
        assert "/memfd:tb-unit" in line and " rw-s " in line
        flags = dmamem.vma_flags(arena.vaddr)
        assert flags is not None and "sh" in flags
        a, b = arena.alloc(4096), arena.alloc(5000)
        assert (a.iova, b.iova, b.size) == (0x1000000000, 0x1000001000, 8192)
        b.view[:4] = b"abcd"
        assert arena.mm[4096:4100] == b"abcd"  # the chunk is the arena's memory
        with pytest.raises(MemoryError):
            arena.alloc(1 << 20)
    finally:
        arena.close()


def test_mmap_at_refuses_to_guess():
    fd = os.memfd_create("tb-unit-2")
    try:
        os.ftruncate(fd, 8192)
        with pytest.raises(dmamem.AddressError):
            dmamem.mmap_at(fd, 8192, 0, "/memfd:not-this-one")
        mm, addr = dmamem.mmap_at(fd, 8192, 0, "/memfd:tb-unit-2")
        assert addr % mmap.PAGESIZE == 0
        mm.close()
    finally:
        os.close(fd)


# -- IOMMU groups -------------------------------------------------------------------------------
def fake_sysfs(tmp_path, members):
    """A sysfs with one IOMMU group 7 holding ``members`` ({bdf: driver or None})."""
    pci, groups = tmp_path / "devices", tmp_path / "groups"
    (groups / "7" / "devices").mkdir(parents=True)
    for bdf, driver in members.items():
        d = pci / bdf
        d.mkdir(parents=True)
        (d / "iommu_group").symlink_to(groups / "7")
        (groups / "7" / "devices" / bdf).symlink_to(d)
        if driver:
            (tmp_path / "drivers" / driver).mkdir(parents=True, exist_ok=True)
            (d / "driver").symlink_to(tmp_path / "drivers" / driver)
    return str(pci), str(groups)


def test_group_viability(tmp_path, monkeypatch):
    pci, groups = fake_sysfs(tmp_path, {"0000:02:00.0": "pcieport", "0000:04:00.0": "nvme",
                                        "0000:04:00.1": "nvme", "0000:05:00.0": "ahci"})
    monkeypatch.setattr(vfiobind, "SYS_PCI", pci)
    monkeypatch.setattr(vfiobind, "IOMMU_GROUPS", groups)
    g = vfiobind.groups(["0000:04:00.0"])["0000:04:00.0"]
    assert g["group"] == 7
    assert g["foreign"] == {"0000:05:00.0": "ahci"}  # a disk is never taken
    assert g["along"] == ["0000:04:00.1"]  # the testbed's own NVMe goes along


def test_restore_forgets_a_removed_device(tmp_path, monkeypatch):
    monkeypatch.setattr(vfiobind, "SYS_PCI", str(tmp_path))
    monkeypatch.setattr(vfiobind, "STATE", str(tmp_path / "state.json"))
    (tmp_path / "state.json").write_text('{"drivers": {"0000:04:00.0": "nvme"}, "params": {}}')
    report = vfiobind.restore(timeout=1)
    assert report["restored"] == {"0000:04:00.0": "gone (removed from the guest)"}
    assert report["problems"] == [] and not (tmp_path / "state.json").exists()


# -- the oracle ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,unsafe", [("switch-cmb-intel-iommu", False),
                                         ("switch-cmb-iommu-pt", False),
                                         ("switch-cmb-virtio-iommu", True)])
def test_type1_is_ok_on_every_viommu(name, unsafe):
    p = predict_vfio(load_topology(name), "nvme0", "nvme1", "type1", IMAGE)
    assert (p.verdict, p.map_type, p.unsafe_interrupts) == ("ok", "iommu-mmio", unsafe)
    assert "follow_fault_pfn" in p.reason and hex(VFIO_BAR_IOVA) in p.reason


@pytest.mark.parametrize("method", ["pfnmap", "dmabuf", *REVOKE])
def test_iommufd_methods_need_iommufd(method):
    p = predict_vfio(load_topology("switch-cmb-intel-iommu"), "nvme0", "nvme1", method, IMAGE)
    assert (p.verdict, p.reason) == ("unsupported", "no IOMMUFD in this kernel's config")


def test_profile_kernel_predictions():
    topo = load_topology("switch-cmb-virtio-iommu")
    got = {m: predict_vfio(topo, "nvme0", "nvme1", m, PROFILE)
           for m in ("pfnmap", "dmabuf", "revoke-reset")}
    assert (got["pfnmap"].verdict, got["pfnmap"].errno, got["pfnmap"].map_type) == \
        ("rejected", 14, "none")
    assert got["dmabuf"].verdict == "ok" and "vfio_pci_dma_buf_iommufd_map" in \
        got["dmabuf"].reason
    assert got["revoke-reset"].verdict == "revoked" and "VFIO_DEVICE_RESET" in \
        got["revoke-reset"].reason
    assert all(p.unsafe_interrupts for p in got.values())  # virtio-iommu: no IR


def test_ci_profile_kernel_has_no_type1_and_unplugs_through_pciehp():
    topo = load_topology("switch-cmb-intel-iommu")  # machine.hotplug: native
    assert topo.machine.hotplug_mode.driver == "pciehp"
    got = {m: predict_vfio(topo, "nvme0", "nvme1", m, CI_PROFILE)
           for m in ("type1", "dmabuf", "revoke-close", "revoke-unplug")}
    assert got["type1"].verdict == "unsupported" and "type1 container" in got["type1"].reason
    assert (got["dmabuf"].verdict, got["revoke-close"].verdict) == ("ok", "revoked")
    assert got["revoke-unplug"].verdict == "revoked" and "pciehp" in \
        got["revoke-unplug"].reason
    assert predict_vfio(topo, "nvme0", "nvme1", "revoke-unplug", PROFILE).verdict == "revoked"
    # the same machine without pciehp in the kernel cannot see the device_del
    no_pciehp = VfioKernel(CI_PROFILE.release, {**CI_PROFILE.config,
                                                "CONFIG_HOTPLUG_PCI_PCIE": "n"})
    un = predict_vfio(topo, "nvme0", "nvme1", "revoke-unplug", no_pciehp)
    assert un.verdict == "unsupported" and "CONFIG_HOTPLUG_PCI_PCIE" in un.reason


def test_q35_default_hotplug_needs_acpiphp():
    """q35's default (ACPI hot-plug): the CI profile kernel has no acpiphp, so no unplug."""
    topo = load_topology("switch-cmb")
    assert topo.machine.hotplug is None and topo.machine.hotplug_mode.name == "acpi"
    topo = dataclasses.replace(topo, iommu=load_topology("switch-cmb-intel-iommu").iommu)
    un = predict_vfio(topo, "nvme0", "nvme1", "revoke-unplug", CI_PROFILE)
    assert un.verdict == "unsupported" and "CONFIG_HOTPLUG_PCI_ACPI" in un.reason
    assert predict_vfio(topo, "nvme0", "nvme1", "revoke-unplug", PROFILE).verdict == "revoked"


def test_a_built_in_module_is_never_modprobed(tmp_path, monkeypatch):
    release = os.uname().release
    monkeypatch.setattr(vfiobind, "SYS_MODULE", str(tmp_path / "sys"))
    monkeypatch.setattr(vfiobind, "LIB_MODULES", str(tmp_path / "lib"))
    (tmp_path / "sys" / "iommufd").mkdir(parents=True)
    assert vfiobind.modprobe("iommufd") is None  # /sys/module: built in (or loaded)
    why = vfiobind.modprobe("vfio_iommu_type1")  # no modules directory: not in the kernel
    assert why and "not in this kernel" in why and "modprobe" not in why
    (tmp_path / "lib" / release).mkdir(parents=True)
    (tmp_path / "lib" / release / "modules.builtin").write_text(
        "kernel/drivers/vfio/pci/vfio-pci.ko\n")
    assert vfiobind.modprobe("vfio-pci") is None  # modules.builtin, dashes or not


def test_no_viommu_and_no_viable_group_are_unsupported():
    p = predict_vfio(load_topology("switch-cmb"), "nvme0", "nvme1", "type1", IMAGE)
    assert p.verdict == "unsupported" and "no IOMMU group" in p.reason
    groups = GroupView({"nvme1": ("rp0", "nvme1", "0000:00:1f.2")},
                       {"nvme1": ("0000:00:1f.2",)})
    p = predict_vfio(load_topology("switch-cmb-intel-iommu"), "nvme0", "nvme1", "type1",
                     IMAGE, groups)
    assert p.verdict == "unsupported" and "not viable" in p.reason and "0000:00:1f.2" in p.reason


def test_kernel_without_config_falls_back_to_what_runs():
    k = VfioKernel.from_probe({"facts": {"dev_vfio": True, "dev_iommu": True,
                                         "vfio_cdev": True}})
    assert k.type1 and k.iommufd and k.cdev and k.dmabuf


# -- what a method showed -----------------------------------------------------------------------
OK_PRED = VfioPrediction("type1", "ok", "iommu-mmio", "why")
GOOD = {"map": {"ok": True, "iova": hex(VFIO_BAR_IOVA)}, "data_verified": True,
        "steps": {"p2p_read": {"ok": True}, "p2p_write": {"ok": True}}}


def test_observe_method_outcomes():
    assert observe_method(GOOD, {}, False, OK_PRED)[0] == "ok"
    faulted = {**GOOD, "data_verified": False}
    assert observe_method(faulted, {"iommu-fault": ["DMAR: [DMA Write] fault"]}, False,
                          OK_PRED) == ("iommu-fault", "DMAR: [DMA Write] fault")
    assert observe_method(faulted, {}, False, OK_PRED)[0] == "error"
    assert observe_method({"stage": "unsupported", "error": "no IOMMUFD"}, {}, False,
                          OK_PRED) == ("unsupported", "no IOMMUFD")
    assert observe_method({"stage": "bind", "error": "x"}, {}, False, OK_PRED)[0] == "error"
    assert observe_method(GOOD, {"trouble": ["WARNING: CPU: 0 PID: 1 at x"]}, False,
                          OK_PRED)[0] == "error"
    assert observe_method(None, {}, True, OK_PRED)[0] == "error"


def test_observe_mechanism():
    doc = {"bar_mmap": {"vmflags": ["rd", "pf", "io"]}, "mechanism": {"ok": True, "iommu": {
        "p2p_maps": [{"provider": "0000:04:00.0", "iova": hex(VFIO_BAR_IOVA),
                      "paddr": "0x100000000"}]}}}
    kind, mech, problem = observe_mechanism(doc, "0000:04:00.0")
    assert (kind, problem, mech["iommu_p2p_maps"], mech["bar_vmflags"]) == \
        ("iommu-mmio", "", 1, ["rd", "pf", "io"])
    assert observe_mechanism(doc, "0000:03:00.0")[0] == "none"
    doc["mechanism"]["iommu"]["p2p_maps"][0]["iova"] = "0x1000"
    assert "not at the testbed's IOVA" in observe_mechanism(doc, "0000:04:00.0")[2]
    kind, mech, _ = observe_mechanism({"mechanism": {"ok": False, "why": "no tracefs"}}, "x")
    assert kind is None and mech["unobserved"] == "no tracefs"


# -- revocation -----------------------------------------------------------------------------------
FAULT = "[  99.000001] DMAR: [DMA Write NO_PASID] Request device [03:00.0] fault addr " \
        "0x2000000000 [fault reason 0x05] PTE Write access is not set"
UNMAPPED = {"ok": True, "iommu": {"unmapped": [[hex(VFIO_BAR_IOVA), 1 << 20]]}, "events": [
    {"event": "dmabuf_move", "revoked": "1"}, {"event": "iommufd_revoke"}]}
AFTER = {"ok": True, "export": {"ok": True}, "mechanism": {"ok": True, "iommu": {"p2p_maps": [
    {"provider": "0000:04:00.0", "iova": hex(VFIO_BAR_IOVA), "paddr": "0x100000000"}]}}}


def trigger_doc(**changes):
    doc = {"trigger": {"command": "0x404"}, "attempt": {"completed": True, "ok": False,
           "status": {"error": "Read: Data Transfer Error (SCT 0x0 SC 0x4)"}},
           "kernel_log": [FAULT], "mechanism": UNMAPPED, "cmb_untouched": True,
           "after": AFTER}
    doc.update(changes)
    return doc


def test_revoked():
    from testbed.verdicts.vfio_observe import observe_revoke, revoke_mechanism
    verdict, detail = observe_revoke("decoding", {}, trigger_doc(), {}, False)
    assert verdict == "revoked" and "Data Transfer Error" in detail and "sentinel" in detail
    kind, mech, problem = revoke_mechanism(trigger_doc(), "0000:04:00.0")
    assert (kind, problem, mech["revocation_unmapped_iova"]) == ("iommu-mmio", "", True)
    assert [e["event"] for e in mech["revocation_events"]] == ["dmabuf_move", "iommufd_revoke"]


def test_not_revoked_and_failures():
    from testbed.verdicts.vfio_observe import observe_revoke, revoke_mechanism
    written = trigger_doc(cmb_untouched=False, attempt={"completed": True, "ok": True})
    assert observe_revoke("close", {}, written, {}, False)[0] == "not-revoked"
    silent = trigger_doc(kernel_log=[], mechanism={"ok": True, "iommu": {"unmapped": []}})
    assert observe_revoke("reset", {}, silent, {}, False)[0] == "not-revoked"
    assert "no unmap" in revoke_mechanism(silent, "0000:04:00.0")[2]
    warned = trigger_doc(kernel_log=[FAULT, "[ 99.1] WARNING: CPU: 1 PID: 9 at drivers/x.c:1"])
    assert observe_revoke("reset", {}, warned, {}, False)[0] == "error"
    broken_after = trigger_doc(after={"ok": False, "export": {"error": "ENODEV: x"}})
    assert observe_revoke("decoding", {}, broken_after, {}, False)[0] == "error"
    assert observe_revoke("unplug", {"stage": "unsupported", "error": "no IOMMUFD in this "
                          "kernel's config"}, None, {}, False) == \
        ("unsupported", "no IOMMUFD in this kernel's config")
    assert observe_revoke("unplug", {}, None, {}, True)[0] == "error"


def test_sigterm_unwinds_so_the_devices_are_given_back(tmp_path):
    """The host ends a background call with SIGTERM: its finally blocks still run."""
    import subprocess
    import sys
    import time
    marker = tmp_path / "restored"
    code = ("import sys, time\n"
            "from testbed.guest_tool import vfiobind\n"
            "vfiobind.exit_on_signals()\n"
            "try:\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(30)\n"
            "finally:\n"
            f"    open({str(marker)!r}, 'w').write('restore ran')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        start = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=10) == 128 + 15
        assert time.monotonic() - start < 10
    finally:
        proc.kill()
    assert marker.read_text() == "restore ran"
