"""Host side of the newer workloads, without a guest: fio arguments, split cases, input
checks, hot-plug slots and QMP steps (against a stand-in machine), the attached-guest
refusal of hot-unplug, and the pool's verdict."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from testbed.errors import HotplugError, UsageError
from testbed.qemu.hotplug import hotplug_slot, replug, unplug
from testbed.qemu.probe import CpuInfo
from testbed.run.plan import plan_matrix
from testbed.run.runner import RunOptions, plan
from testbed.spec import load_topology
from testbed.spec.parse import parse
from testbed.spec.yamlsource import load
from testbed.workloads.base import Context, WorkloadOptions
from testbed.workloads.fio import DEFAULT_JOBS, fio_args
from testbed.workloads.hotunplug import HotUnplug
from testbed.workloads.iovec import split_cases
from testbed.workloads.pool import Pool

QEMU64 = CpuInfo("qemu64", "AuthenticAMD", 15)
ON_ROOT = parse(load("""
pcie:
  - {nvme: a, cmb: 2M}
  - root_port: rp0
    device: {nvme: b}
""", "t.yaml"), "t.yaml")


# -- fio arguments ----------------------------------------------------------------------------
def test_default_fio_jobs_cover_engines_patterns_sizes_and_depths():
    args = fio_args([])
    assert args[0] == "--verify=crc32c" and args.count("--stonewall") == len(DEFAULT_JOBS) - 1
    for want in ("--ioengine=psync", "--ioengine=libaio", "--ioengine=io_uring", "--rw=write",
                 "--rw=randwrite", "--bs=4k", "--bs=1M", "--iodepth=8", "--numjobs=2"):
        assert want in args
    assert not any("thread" in a or "fixedbufs" in a for a in args)  # both break with p2pmem


def test_user_fio_args_override_a_verified_base():
    assert fio_args(["bs=4k", "--iodepth=16"])[-3:] == ["--bs=4k", "--iodepth=16", "--name=user"]
    assert fio_args(["/root/my.fio"])[-1] == "/root/my.fio"  # a job file: no extra job
    assert fio_args(["--name=x", "rw=randrw"])[-1] == "--rw=randrw"


# -- split cases ------------------------------------------------------------------------------
def test_split_cases_for_4k_blocks_have_no_sub_page_start():
    cases = dict(split_cases({"max_hw_sectors_kb": 128, "max_segments": 33,
                              "logical_block_size": 4096}))
    assert cases == {"p2p:320K": 3, "p2p:4096x41/gap=4096": 2, "p2p:64K/start=4096": 1,
                     "p2p:4096x16/start=4096/gap=4096": 1}


# -- input checks -----------------------------------------------------------------------------
def test_newer_workloads_check_their_input():
    topo = load_topology("switch-cmb")
    assert plan(topo, RunOptions(workloads=("fio", "hot-unplug"))) == ["fio", "hot-unplug"]
    with pytest.raises(UsageError, match="not a .provider, client. pair"):
        plan(topo, RunOptions(workloads=("fio",), pairs=(("nvme0", "nvme0"),)))
    with pytest.raises(UsageError, match="inject 'oops'"):
        plan(topo, RunOptions(workloads=("fio",), inject=("oops",)))
    with pytest.raises(UsageError, match="add -w fio"):
        plan(topo, RunOptions(workloads=("split",), fio_args=("bs=4k",)))
    with pytest.raises(UsageError, match="hot-pluggable slot"):
        plan(ON_ROOT, RunOptions(workloads=("hot-unplug",)))


def test_the_matrix_passes_fio_args_on():
    assert plan_matrix(["switch-cmb"], ["default"], ["fio"], fio_args=["bs=4k"]).fio_args \
        == ("bs=4k",)
    with pytest.raises(UsageError, match="add -w fio"):
        plan_matrix(["switch-cmb"], ["default"], ["p2p-copy"], fio_args=["bs=4k"])


def test_default_workloads_are_unchanged():
    assert plan(load_topology("switch-cmb"), RunOptions()) == \
        ["inventory", "p2p-copy", "host-baseline", "passthru"]


# -- hot-plug ---------------------------------------------------------------------------------
def test_hotplug_slots_come_from_the_device_table():
    s = hotplug_slot(load_topology("switch-cmb"), "nvme1")
    assert (s.bus, s.port_kind) == ("sw0-dp1", "switch downstream port")
    assert hotplug_slot(load_topology("rootports-cmb"), "nvme0").bus == "rp0"
    with pytest.raises(HotplugError, match="root complex"):
        hotplug_slot(ON_ROOT, "a")


class Machine:
    """A stand-in QemuMachine: records QMP commands, answers DEVICE_DELETED."""

    def __init__(self, deleted=True):
        self.calls, self.deleted, self.run_dir = [], deleted, Path("/run/x")

    def clear_events(self):
        pass

    def qmp(self, command, **args):
        self.calls.append((command, args))
        return [{"node-name": "tb-nvme0-ns1-r1"}] if command == "query-named-block-nodes" \
            else {}

    def event_wait(self, name, timeout, match=None):
        event = {"event": name, "data": {"device": "nvme0", "path": "/machine/peripheral/nvme0"}}
        return event if self.deleted and match(event) else None


def test_unplug_waits_for_device_deleted():
    slot = hotplug_slot(load_topology("switch-cmb"), "nvme0")
    m = Machine()
    assert unplug(m, slot)["event"]["device"] == "nvme0"
    assert m.calls == [("device_del", {"id": "nvme0"})]
    with pytest.raises(HotplugError, match="no DEVICE_DELETED"):
        unplug(Machine(deleted=False), slot, timeout=0.1)


def test_replug_reattaches_namespace_one_through_the_controller():
    slot = hotplug_slot(load_topology("switch-cmb"), "nvme0")
    m = Machine()
    step = replug(m, slot, Path("/run/x"))
    (_, query), (_, blockdev), (cmd, props) = m.calls
    assert blockdev == {"driver": "raw", "node-name": "tb-nvme0-ns1-r2", "file": {
        "driver": "file", "filename": "/run/x/nvme0-ns1.img", "locking": "off"}}
    assert cmd == "device_add" and props == {
        "driver": "nvme", "id": "nvme0", "serial": "nvme0", "bus": "sw0-dp0",
        "cmb_size_mb": 64, "drive": "tb-nvme0-ns1-r2"}
    assert step["node"] == "tb-nvme0-ns1-r2"


def test_hot_unplug_on_an_attached_guest_is_a_clear_error_record():
    guest = SimpleNamespace(qemu=None, names={"nvme0": "0000:03:00.0"},
                            inventory={"kernel": {"p2pdma": True}})
    ctx = Context(guest=guest, topology=load_topology("switch-cmb"), cpu=QEMU64,
                  options=WorkloadOptions(pairs=(("nvme0", "nvme1"),)))
    (rec,) = HotUnplug().run(ctx)
    assert (rec.predicted, rec.observed) == ("ok", "error")
    assert "attached" in rec.detail and "QMP" in rec.detail


# -- the pool's verdict -----------------------------------------------------------------------
def test_pool_verdict_names_what_went_wrong():
    ctx = SimpleNamespace(kernel_p2pdma=True)
    good = {"exhaust": {"failure": {"errname": "ENOMEM"}, "returned": True, "mapped": 63,
                        "chunk": 1 << 20, "start_available": 1, "touch_failures": []},
            "misuse": {"ok": True}}
    assert Pool.verdict(ctx, good, False, {})[0] == "ok"
    leak = {**good, "exhaust": {**good["exhaust"], "returned": False, "available_after": 0}}
    verdict, detail = Pool.verdict(ctx, leak, False, {})
    assert verdict == "error" and "after munmap" in detail
    oops = Pool.verdict(ctx, good, False, {"trouble": ["[1.0] BUG: unable to handle page"]})
    assert oops[0] == "error" and "BUG:" in oops[1]


# -- nvmet-p2pmem on a kernel without the NVMe target ----------------------------------------
def test_nvmet_without_a_target_is_one_unsupported_record(monkeypatch):
    from testbed.guest.result import CommandResult
    from testbed.workloads import nvmet
    guest = SimpleNamespace(qemu=None, names={"nvme0": "0000:04:00.0", "nvme1": "0000:03:00.0"},
                            inventory={"kernel": {"p2pdma": True}},
                            dmesg_delta=lambda: "")
    topo = load_topology("switch-cmb")
    ctx = Context(guest=guest, topology=topo, cpu=QEMU64)
    monkeypatch.setattr(Context, "block_devices", lambda self: {
        n.serial: {"block": f"nvme{i}n1"} for i, n in enumerate(topo.nvmes())})
    monkeypatch.setattr(nvmet, "multipath_head", lambda ctx, dev: False)
    why = "no NVMe target in this kernel (CONFIG_NVME_TARGET, module nvmet)"
    calls = []

    def tool(self, args, timeout=None):
        calls.append(args)
        return {"stage": "setup", "error": why}, CommandResult("t", 1, "", "", 0.1)
    monkeypatch.setattr(Context, "tool", tool)
    (rec,) = nvmet.NvmetP2pmem().run(ctx)
    assert (rec.predicted, rec.observed, rec.detail) == (None, None, f"unsupported ({why})")
    assert len(calls) == 1  # asked once, not once per pair


# -- the wait for the IOMMU fault printk ratelimit ------------------------------------------
def test_the_fault_ratelimit_wait_happens_only_after_a_logged_fault(monkeypatch):
    """Between transfers under a vIOMMU the run waits for the fault printk ratelimit only
    when the kernel logged a fault (or dropped lines, or the delta was unreadable) since the
    last wait: a run of refused or clean transfers does not sleep 5.5 s per pair."""
    from testbed.workloads import base
    slept: list[float] = []
    monkeypatch.setattr(base.time, "sleep", slept.append)
    deltas = iter([
        "[ 10.1] nvme 0000:03:00.0: cannot be used for peer-to-peer DMA ...\n",
        "",
        "[ 11.2] DMAR: [DMA Write NO_PASID] Request device [03:00.0] fault addr 0xfe000000\n"
        "[ 11.2] DMAR: [DMA Write NO_PASID] PTE Write access is not set\n",
        "",
        "[ 12.0] dmar_fault: 3 callbacks suppressed\n",
        "(dmesg unavailable: ssh closed)",
        "[ 13.0] virtio_iommu virtio0: page fault from EP 24 (read)\n",
        "",
    ])
    guest = SimpleNamespace(dmesg_delta=lambda: next(deltas))
    ctx = Context(guest=guest, topology=load_topology("switch-cmb-intel-iommu"), cpu=QEMU64)
    waited = []
    for _ in range(8):
        slept.clear()
        ctx.quiet_gap()
        waited.append(bool(slept))
        ctx.last_transfer = base.time.monotonic()  # a transfer ends; its delta is read
        ctx.dmesg_delta()
    slept.clear()
    ctx.quiet_gap()
    waited.append(bool(slept))
    assert waited == [False, False, False, True, False, True, True, True, False]
    assert all(4 < s <= base.FAULT_QUIET_SECONDS for s in slept)
    # without a vIOMMU nothing is waited for, faults or not
    plain = Context(guest=SimpleNamespace(dmesg_delta=lambda: "DMAR: PTE Read access is "
                                          "not set\n"), topology=load_topology("switch-cmb"),
                    cpu=QEMU64)
    slept.clear()
    for _ in range(3):
        plain.quiet_gap()
        plain.last_transfer = base.time.monotonic()
        plain.dmesg_delta()
    assert slept == []
