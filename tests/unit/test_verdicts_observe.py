"""Observed verdicts from guest-tool JSON and dmesg (pure)."""

from __future__ import annotations

from pathlib import Path

from testbed.verdicts.observe import (boot_trouble_record, kernel_trouble, observe, pull_dmesg,
                                     refusals)

OK = {"ok": True}
FAIL_EINVAL = {"ok": False, "errno": 22, "error": "Invalid argument"}


def result(read=OK, write=OK, verified=True):
    return {"steps": {"p2p_read": read, "p2p_write": write}, "data_verified": verified,
            "mismatched_blocks": [] if verified else [0, 1]}


REFUSAL = ("[   20.1] nvme 0000:02:00.0: cannot be used for peer-to-peer DMA as the client and "
           "provider (0000:01:00.0) do not share an upstream bridge or whitelisted host bridge")
DMAR = ("[   25.2] DMAR: [DMA Write NO_PASID] Request device [0000:04:00.0] fault addr "
        "0xf8020000 [fault reason 0x05] PTE Write access is not set")
VIOMMU = "[   30.0] virtio_iommu virtio0: page fault from EP 1024 at 0xf8020000"


def test_ok():
    assert observe(result(), {}, False)[0] == "ok"


def test_refusal_in_the_delta():
    v, detail = observe(result(FAIL_EINVAL, FAIL_EINVAL), pull_dmesg(REFUSAL), False)
    assert v == "rejected" and "upstream bridge" in detail


def test_silent_refusal_after_an_earlier_one_is_still_rejected():
    assert observe(result(FAIL_EINVAL, FAIL_EINVAL), {}, False, refused_earlier=True)[0] == \
        "rejected"
    assert observe(result(FAIL_EINVAL, FAIL_EINVAL), {}, False)[0] == "error"


def test_refusal_lines_name_provider_and_client():
    assert refusals("x\n" + REFUSAL + "\n") == {("0000:01:00.0", "0000:02:00.0")}


def test_iommu_fault_is_silent_success_with_bad_data():
    for line in (DMAR, VIOMMU):
        assert observe(result(verified=False), pull_dmesg(line), False)[0] == "iommu-fault"


# what QEMU 11.1's amd-iommu (dma-remap=on) made the 7.3.4 guest log for a bus-address
# transfer between two NVMe under one switch (switch-cmb-amd-iommu, 2026-12-03)
AMD_FAULTS = ("[   54.324121] amd_iommu_report_page_fault: 51408 callbacks suppressed\n"
              "[   54.324279] pci 0000:00:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT "
              "domain=0x0000 address=0x0 flags=0x000a]\n")


def test_amd_vi_faults_are_iommu_faults_named_by_a_real_event():
    verdict, detail = observe(result(verified=False), pull_dmesg(AMD_FAULTS), False)
    assert verdict == "iommu-fault"
    assert detail.startswith("[   54.324279] pci 0000:00:00.0: AMD-Vi: Event logged")
    assert "names no device or address" in detail
    # good data with a fault line elsewhere in the delta is still ok
    assert observe(result(), pull_dmesg(AMD_FAULTS), False)[0] == "ok"


# what the arm64 guest logged under QEMU 10.0's SMMUv3 (strict) for a bus-address transfer
SMMUV3 = """\
[   30.043415] arm-smmu-v3 9050000.smmuv3: unexpected global error reported (0x00000004), this could be serious
[   30.043588] arm-smmu-v3 9050000.smmuv3: EVTQ write aborted -- events may have been lost
[   30.046176] arm-smmu-v3 9050000.smmuv3: event 0x10 received:
[   30.046237] arm-smmu-v3 9050000.smmuv3: \t0x0000040000000010
[   30.046388] arm-smmu-v3 9050000.smmuv3: event: F_TRANSLATION client: 0000:04:00.0 sid: 0x400 ssid: 0x0 iova: 0x8000020000 ipa: 0x0
[   30.046450] arm-smmu-v3 9050000.smmuv3: unpriv data write s1 "Input address caused fault" stag: 0x0
"""


def test_smmuv3_translation_events_are_iommu_faults():
    """The SMMUv3 driver's decoded event line (it names the client and the IOVA) is the
    fault; its global-error and raw hex lines are not named."""
    dmesg = pull_dmesg(SMMUV3)
    assert [ln.split("] ")[1][:40] for ln in dmesg["iommu-fault"]] == \
        ["arm-smmu-v3 9050000.smmuv3: event: F_TRA"]
    v, detail = observe(result(verified=False), dmesg, False)
    assert v == "iommu-fault" and "client: 0000:04:00.0" in detail and "iova" in detail
    assert "trouble" not in dmesg


def test_bad_data_without_a_fault_is_corruption():
    v, detail = observe(result(verified=False), {}, False)
    assert v == "error" and "corruption" in detail


def test_allocation_and_kernel_support():
    assert observe({"stage": "allocate", "error": "no p2pmem"}, {}, False)[0] == "unsupported"
    assert observe({"stage": "allocate", "error": "ENOMEM"}, {}, False)[0] == "error"
    assert observe(result(), {}, False, kernel_p2pdma=False)[0] == "unsupported"


def test_timeouts():
    assert observe(None, {}, True)[0] == "error"
    assert observe(None, pull_dmesg(DMAR), True)[0] == "iommu-fault"


# -- kernel trouble in the dmesg delta -------------------------------------------------------
DMESG = Path(__file__).parent / "data" / "dmesg"


def test_trouble_lines_name_the_first_report_line():
    """Recorded dmesg text: hung-task.txt is a real 7.3.4 guest's (a writer blocked on a
    frozen filesystem); the others follow the kernel's report formats."""
    first = {name: kernel_trouble((DMESG / name).read_text())[0]
             for name in ("warning.txt", "bug-null-deref.txt", "kasan.txt", "hung-task.txt")}
    assert "WARNING: CPU: 1 PID: 1873 at drivers/pci/p2pdma.c:1031" in first["warning.txt"]
    assert "BUG: kernel NULL pointer dereference" in first["bug-null-deref.txt"]
    assert "BUG: KASAN: slab-use-after-free" in first["kasan.txt"]
    assert "INFO: task bash:249 blocked for more than 2 seconds." in first["hung-task.txt"]


def test_ordinary_lines_are_not_trouble():
    """Hot-plug chatter, the pool's documented refusal, a user process's trap (fio killed by
    a signal) and an ACPI "Warning" are no kernel trouble."""
    assert kernel_trouble((DMESG / "benign.txt").read_text()) == []


def test_trouble_turns_any_transfer_into_an_error_naming_the_line():
    text = (DMESG / "warning.txt").read_text()
    verdict, detail = observe(result(), pull_dmesg(text), False)
    assert verdict == "error" and "drivers/pci/p2pdma.c:1031" in detail
    # it wins over what the transfer alone would say
    assert observe(result(FAIL_EINVAL, FAIL_EINVAL), pull_dmesg(REFUSAL + "\n" + text),
                   False)[0] == "error"
    assert observe(result(), pull_dmesg((DMESG / "benign.txt").read_text()), False)[0] == "ok"


def test_trouble_before_the_workloads_is_a_failing_record_of_its_own():
    """A splat while the kernel booted and probed the fabric (KASAN, lockdep, DMA-API
    debug) is in no workload's delta: the run gets a judged ``kernel-log`` error for it,
    so a run on such a kernel cannot pass; a clean boot adds nothing."""
    assert boot_trouble_record((DMESG / "benign.txt").read_text()) is None
    rec = boot_trouble_record((DMESG / "kasan.txt").read_text())
    assert rec is not None and rec.name == "kernel-log" and rec.judged and not rec.passed
    assert "BUG: KASAN: slab-use-after-free" in rec.detail
    assert rec.dmesg["trouble"] == kernel_trouble((DMESG / "kasan.txt").read_text())
