"""modules.dep resolution and module handling (pure, tiny fake trees)."""

import lzma

import pytest

from testbed.errors import ImageError
from testbed.kernel.initramfs import plan_modules
from testbed.kernel.kmod import (SIGNATURE_MAGIC, decompress_module, load_order, module_name,
                                parse_builtin, parse_modules_dep, strip_signature)

DEP = """\
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc/crc16.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/iommu/virtio-iommu.ko.xz:
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz kernel/drivers/nvme/common/nvme-auth.ko.xz
kernel/drivers/nvme/host/nvme-core.ko.xz: kernel/drivers/nvme/common/nvme-auth.ko.xz
kernel/drivers/nvme/common/nvme-auth.ko.xz:
"""


def test_dependencies_come_first_and_once():
    dep = parse_modules_dep(DEP)
    order = load_order(dep, ["ext4", "virtio_net", "nvme"])
    names = [module_name(p) for p in order]
    assert sorted(names) == sorted(set(names))
    for mod, deps in dep.deps.items():
        if mod in order:
            for d in deps:
                assert order.index(d) < order.index(mod)
    assert names[-1] == "nvme"
    assert names.index("failover") < names.index("net_failover") < names.index("virtio_net")


def test_dash_and_underscore_are_the_same_module():
    dep = parse_modules_dep(DEP)
    assert load_order(dep, ["virtio_iommu"]) == ["kernel/drivers/iommu/virtio-iommu.ko.xz"]
    assert load_order(dep, ["nvme-auth"]) == load_order(dep, ["nvme_auth"])


def test_builtin_and_missing_modules():
    dep = parse_modules_dep(DEP)
    builtin = parse_builtin("kernel/drivers/block/virtio_blk.ko\n")
    assert load_order(dep, ["virtio_blk", "crc16"], builtin) == ["kernel/lib/crc/crc16.ko.xz"]
    with pytest.raises(ImageError, match="neither built in"):
        load_order(dep, ["no_such_module"])
    assert load_order(dep, ["no_such_module"], missing_ok=True) == []


def test_cycles_and_dangling_dependencies_are_errors():
    cyc = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ImageError, match="cycle"):
        load_order(cyc, ["a"])
    dangling = parse_modules_dep("a.ko: gone.ko\n")
    with pytest.raises(ImageError, match="not as a module"):
        load_order(dangling, ["a"])
    with pytest.raises(ImageError):
        parse_modules_dep("garbage line\n")


def test_decompress_and_strip(tmp_path):
    body = b"\x7fELF" + bytes(100)
    signed = body + b"SIG" + bytes(8) + (3).to_bytes(4, "big") + SIGNATURE_MAGIC
    (tmp_path / "m.ko.xz").write_bytes(lzma.compress(signed))
    (tmp_path / "p.ko").write_bytes(body)
    assert decompress_module(tmp_path / "m.ko.xz") == signed
    assert strip_signature(decompress_module(tmp_path / "m.ko.xz")) == body
    assert decompress_module(tmp_path / "p.ko") == body
    (tmp_path / "bad.ko.xz").write_bytes(lzma.compress(b"not elf"))
    with pytest.raises(ImageError):
        decompress_module(tmp_path / "bad.ko.xz")


def test_plan_streams():
    dep = parse_modules_dep(DEP)
    plan = plan_modules(dep, set(), ["virtio_iommu"], ["ext4"], ["virtio_net", "nvme"])
    names = plan.names()
    assert names["early"] == ["virtio_iommu"]
    assert names["main"] == ["crc16", "mbcache", "jbd2", "ext4"]
    assert names["parallel"][-1] == "nvme" and "virtio_net" in names["parallel"]


def test_plan_serialises_streams_that_share_dependencies():
    dep = parse_modules_dep(DEP)
    # net_failover's dependency failover is in the main stream: no parallel stream.
    plan = plan_modules(dep, set(), [], ["failover"], ["virtio_net"])
    assert plan.parallel == []
    assert [module_name(p) for p in plan.main] == ["failover", "net_failover", "virtio_net"]
    # Modules already loaded early are not loaded again.
    plan = plan_modules(dep, set(), ["failover"], ["virtio_net"], ["ext4"])
    assert [module_name(p) for p in plan.main] == ["net_failover", "virtio_net"]
