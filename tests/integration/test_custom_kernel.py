"""Custom kernels on real guests: an unpacked distro package with its modules, and a
kernel that cannot mount the root failing fast on its console message."""

from __future__ import annotations

import shutil
import time

import pytest

from testbed.errors import BootError
from testbed.guest.boot import BootOptions, boot
from testbed.kernel.prepare import MODULES_SERIAL
from testbed.kernel.resolve import resolve_kernel
from testbed.run.runner import RunOptions, run_workloads
from testbed.spec import load_topology


def test_package_kernel_boots_with_its_modules(image_kernel_package, image, tmp_path,
                                               monkeypatch):
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    kernel = resolve_kernel(str(image_kernel_package))
    assert kernel.kind == "package" and kernel.release == image.kernel_release
    assert kernel.modules_dir is not None and kernel.p2pdma is True
    topo = load_topology("switch-cmb")
    with boot(topo, options=BootOptions(kernel=kernel)) as guest:
        # the guest runs that kernel, through its own initramfs, with the modules disk
        assert guest.check(["uname", "-r"]).stdout.strip() == kernel.release
        argv = " ".join(guest.argv)
        assert f"serial={MODULES_SERIAL}" in argv and str(guest.kernel.initrd) in argv
        moddir = f"/lib/modules/{kernel.release}"
        mount = guest.check(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", moddir]).stdout
        source = mount.split()[0]
        serial = guest.check(["cat", f"/sys/block/{source.rsplit('/', 1)[-1]}/serial"]).stdout
        assert serial.strip() == MODULES_SERIAL
        assert "ext4" in mount and "ro" in mount.split()[2].split(",")
        # modprobe works from the modules disk
        guest.check(["sh", "-c", "modprobe loop && grep -q '^loop ' /proc/modules"])
        # nvme is working and both CMBs are p2pmem
        inv = guest.inventory
        assert inv["kernel"]["release"] == kernel.release
        assert inv["kernel"]["p2pdma"] is True
        assert len([d for d in inv["pci"].values() if "p2pmem" in d]) == 2, inv
        assert guest.check("ls /sys/class/nvme").stdout.split() == ["nvme0", "nvme1"]
        out = guest.check(["sh", "-c", "cat /sys/bus/pci/devices/*/p2pmem/size"]).stdout
        assert out.split() == [str(64 << 20)] * 2
        # and a P2P transfer really works with this kernel
        recs, _ = run_workloads(guest, topo, ["p2p-copy"], RunOptions())
        assert [(r.observed, r.data_verified) for r in recs] == [("ok", True)] * 2, recs


def test_kernel_that_cannot_mount_root_fails_fast(image, tmp_path, monkeypatch, real_qemu):
    """Debian's bzImage alone: virtio_blk and ext4 are modules, so with no initramfs the
    kernel panics "VFS: Unable to mount root fs"; the boot fails on that line."""
    monkeypatch.setenv("TESTBED_STATE", str(tmp_path / "state"))
    lone = tmp_path / "bzImage"
    shutil.copyfile(image.bzimage, lone)
    kernel = resolve_kernel(str(lone))
    assert kernel.kind == "bzimage" and kernel.modules_dir is None
    start = time.monotonic()
    with pytest.raises(BootError) as info:
        boot(load_topology("switch-cmb"), options=BootOptions(kernel=kernel, timeout=170))
    elapsed = time.monotonic() - start
    msg = str(info.value)
    assert "Unable to mount root fs" in msg, msg
    assert "no SSH within" not in msg and "never printed" not in msg, msg
    assert elapsed < 120, f"took {elapsed:.0f} s: a timeout, not the console panic"
