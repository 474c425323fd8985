"""The workloads that cover the P2PDMA paths merged since 6.2, on one switch-cmb guest
(switch-cmb: every pair is expected ok through the switch), each where it should pass and
each failure mode caught: a fio verify error, a mixed iovec whose host half is corrupted, a
WARNING line in the dmesg delta, a p2p-copy block corrupted between seeding and the read
(it was test_workloads.py's, with a switch-cmb guest of its own).  The guest is shared by
the module's tests; hot-unplug runs last (it removes and re-adds a provider)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.topology("switch-cmb")
PAIR = ("nvme0", "nvme1")


def one(records):
    assert len(records) == 1, records
    return records[0]


def test_fio_moves_verified_data_through_p2pmem_beside_a_host_run(guest):
    r = one(guest.workload("fio", pairs=(PAIR,)))
    assert (r["predicted"], r["observed"]) == ("ok", "ok"), r["detail"]
    assert r["data_verified"] is True and r["mb_per_s"] > 0
    engines = {j["options"].get("ioengine") for j in r["data"]["jobs"]}
    assert engines == {"psync", "libaio", "io_uring"}
    assert all(j["error"] == 0 for j in r["data"]["jobs"])
    assert r["data"]["p2pmem"]["peak_used"] > 0  # fio's buffers came from the pool
    assert r["data"]["host"]["data_verified"] is True
    assert set(r["data"]["host_over_p2p"]) == {"read", "write"}


def test_a_fio_verify_error_is_an_error_verdict(guest):
    r = one(guest.workload("fio", pairs=(PAIR,), inject=("corrupt",),
                           fio_args=("bs=64k", "size=256k")))
    assert r["observed"] == "error" and r["data_verified"] is False
    assert r["detail"].startswith("fio verify failed (errno 84)"), r["detail"]


def test_mixed_iovecs_move_both_parts_in_both_orders(guest):
    r = one(guest.workload("mixed-iovec", pairs=(PAIR,)))
    assert (r["observed"], r["data_verified"]) == ("ok", True), r["detail"]
    routes = r["data"]["routes"]
    assert any(x.startswith("p2p:64K,host:64K") for x in routes)
    assert any(x.startswith("host:64K,p2p:64K") for x in routes)
    # <= 256 pages: part of the read came through the page cache; 512 pages: direct
    assert "via the page cache" in next(x for x in routes if x.startswith("p2p:64K,host:64K"))
    assert next(x for x in routes if x.startswith("host:1M,p2p:1M")).endswith("direct")


def test_a_mixed_iovec_whose_host_half_is_corrupted_is_caught(guest):
    r = one(guest.workload("mixed-iovec", pairs=(PAIR,), inject=("corrupt",)))
    assert (r["observed"], r["data_verified"]) == ("error", False)
    assert "data corruption in the read phase" in r["detail"] and "(host)" in r["detail"]


def test_split_beyond_the_queue_limits(guest):
    r = one(guest.workload("split", pairs=(PAIR,)))
    assert (r["observed"], r["data_verified"]) == ("ok", True), r["detail"]
    need = r["data"]["expected_min_requests"]
    assert max(need.values()) >= 2  # something really had to be split
    for case, seen in r["data"]["requests"].items():
        assert seen["write"] >= need[case] and seen["read"] >= need[case], (case, seen)


def test_concurrent_pairs_lose_and_cross_nothing(guest):
    records = guest.workload("concurrent")
    assert {(r["provider"], r["client"]) for r in records} == {PAIR, PAIR[::-1]}
    assert all(r["observed"] == "ok" and r["data_verified"] for r in records), records


def test_pool_exhausts_and_returns(guest):
    r = one(guest.workload("pool", pairs=(PAIR,)))
    assert r["observed"] == "ok", r["detail"]
    ex, kill = r["data"]["exhaust"], r["data"]["kill"]
    assert ex["failure"]["errname"] == "ENOMEM" and ex["returned"] and ex["mapped"] > 0
    assert kill["returned"] and kill["killed_by"] == 9


def test_a_warning_in_the_dmesg_delta_turns_the_record_to_error(guest):
    r = one(guest.workload("concurrent", pairs=(PAIR,), inject=("warning",)))
    assert r["observed"] == "error"
    assert "WARNING: CPU: 0 PID: 1 at testbed/self-check.c:1" in r["detail"]
    assert r["data_verified"] is True  # the data was fine: the kernel's word decides


def test_vfio_without_a_viommu_is_unsupported_and_takes_nothing(guest):
    """No vIOMMU: no IOMMU groups, so VFIO cannot take the devices; the guest says so
    before binding anything (issue 22's family, on this module's guest: no extra boot)."""
    (r,) = guest.workload("vfio-type1", pairs=(PAIR,))
    assert (r["predicted"], r["observed"]) == ("unsupported", "unsupported"), r["detail"]
    assert "no IOMMU group" in r["reason"] and "no IOMMU group" in r["detail"]
    assert "bind" not in r["data"]["session"]
    bdf = guest.names["nvme1"]
    assert guest.run(f"basename $(readlink /sys/bus/pci/devices/{bdf}/driver)"
                     ).stdout.strip() == "nvme"


def test_verification_catches_a_corrupted_block(guest):
    """Corrupt block 3 on the client between seeding and the P2P read: the copy must not
    be judged ok, and the bad block is named."""
    records = guest.workload("p2p-copy", copy_extra=("--corrupt-block", "3"))
    assert len(records) == 2
    for r in records:
        assert r["data_verified"] is False
        assert r["observed"] == "error" and "corruption" in r["detail"]
        assert r["data"]["mismatched_blocks"] == [3]


def test_the_same_copy_without_corruption_verifies(guest):
    records = guest.workload("p2p-copy")
    assert [r["observed"] for r in records] == ["ok", "ok"]
    assert all(r["data_verified"] for r in records)


def test_hot_unplug_keeps_the_kernel_healthy_and_the_provider_usable(guest):
    before = guest.names["nvme0"]
    r = one(guest.workload("hot-unplug", pairs=(PAIR,)))
    assert (r["predicted"], r["observed"]) == ("ok", "ok"), r["detail"]
    steps = [s["step"] for s in r["data"]["steps"]]
    assert steps == ["transfer", "device_del", "removed", "in-flight I/O", "device_add",
                     "republished", "fresh copy"], steps
    assert r["data_verified"] is True and "trouble" not in r["dmesg"]
    assert guest.names["nvme0"] == before
    # and the re-added provider keeps working for the next test
    assert [x["observed"] for x in guest.workload("p2p-copy", size=131072)] == ["ok", "ok"]
