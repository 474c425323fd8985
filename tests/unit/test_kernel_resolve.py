"""resolve_kernel on fake directory layouts (pure: no QEMU, no image, no building)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from testbed.errors import UsageError
from testbed.kernel.format import bzimage_release, kernel_file_kind
from testbed.kernel.prepare import BASE_CMDLINE, prepare, tree_fingerprint
from testbed.kernel.resolve import resolve_kernel

REL = "7.3.4-p2p"


def fake_bzimage(path: Path, release: str = REL) -> Path:
    """Just enough of an x86 bzImage: 'HdrS' at 0x202, the version string, and a (gzip)
    payload of the length the header gives after 4 setup sectors."""
    payload = gzip.compress(b"\x7fELF not really a kernel")
    data = bytearray(5 * 512)
    data[0x1F1] = 4  # setup sectors
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x20F)
    struct.pack_into("<H", data, 0x20E, 0x300)  # string at 0x300 + 0x200
    struct.pack_into("<II", data, 0x248, 0, len(payload))
    text = f"{release} (dev@host) #1 SMP PREEMPT_DYNAMIC".encode() + b"\0"
    data[0x500:0x500 + len(text)] = text
    data += payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def modules(root: Path, release: str = REL, dep: bool = True) -> Path:
    d = root / release
    (d / "kernel/drivers/nvme/host").mkdir(parents=True)
    (d / "kernel/drivers/nvme/host/nvme.ko.xz").write_bytes(b"x")
    if dep:
        (d / "modules.dep").write_text("kernel/drivers/nvme/host/nvme.ko.xz:\n")
    return d


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))


FULL_CONFIG = "CONFIG_PCI=y\nCONFIG_PCI_P2PDMA=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=y\n" \
              "CONFIG_EXT4_FS=y\n"


def test_default_is_none():
    assert resolve_kernel("default") is None


def test_bzimage_file(tmp_path):
    f = fake_bzimage(tmp_path / "bzImage")
    k = resolve_kernel(str(f))
    assert (k.kind, k.image_file, k.release, k.modules_dir) == ("bzimage", f, REL, None)
    assert k.label == REL
    assert k.p2pdma is None  # no config known
    assert kernel_file_kind(f) == "bzImage" and bzimage_release(f) == REL
    # modules-less: preparing needs no image and no initramfs
    prepared = prepare(k, base_initrd=None)
    assert prepared.initrd is None and prepared.drives == ()
    assert prepared.cmdline == BASE_CMDLINE


def test_build_tree(tmp_path):
    b = tmp_path / "build"
    fake_bzimage(b / "arch/x86/boot/bzImage", "7.3.4")
    (b / "include/config").mkdir(parents=True)
    (b / "include/config/kernel.release").write_text("7.3.4\n")
    (b / ".config").write_text(FULL_CONFIG)
    k = resolve_kernel(str(b))
    assert (k.kind, k.release, k.modules_dir) == ("build-tree", "7.3.4", None)
    assert k.image_file == b / "arch/x86/boot/bzImage"
    assert k.config_file == b / ".config" and k.p2pdma is True
    assert str(b) in k.description


def test_build_tree_with_modules_installed_into_it(tmp_path):
    b = tmp_path / "build"
    fake_bzimage(b / "arch/x86/boot/bzImage")
    (b / "include/config").mkdir(parents=True)
    (b / "include/config/kernel.release").write_text(REL)
    m = modules(b / "lib/modules")
    k = resolve_kernel(str(b))
    assert k.kind == "build-tree" and k.modules_dir == m


def test_build_tree_that_cannot_mount_root_is_refused_early(tmp_path):
    b = tmp_path / "build"
    fake_bzimage(b / "arch/x86/boot/bzImage")
    (b / "include/config").mkdir(parents=True)
    (b / "include/config/kernel.release").write_text(REL)
    (b / ".config").write_text(FULL_CONFIG.replace("CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_BLK=m"))
    with pytest.raises(UsageError, match=r"CONFIG_VIRTIO_BLK=m.*modules_install"):
        resolve_kernel(str(b))


def test_build_tree_without_release(tmp_path):
    fake_bzimage(tmp_path / "arch/x86/boot/bzImage")
    with pytest.raises(UsageError, match="kernel.release"):
        resolve_kernel(str(tmp_path))


def test_unbuilt_source_tree(tmp_path):
    (tmp_path / "Makefile").write_text("KERNELRELEASE = x\n")
    (tmp_path / "Kconfig").write_text("")
    with pytest.raises(UsageError, match="has not been built.*testbed kernel build"):
        resolve_kernel(str(tmp_path))


@pytest.mark.parametrize("moddir", ["usr/lib/modules", "lib/modules"])
def test_unpacked_debian_package(tmp_path, moddir, monkeypatch):
    monkeypatch.setattr("testbed.kernel.resolve.find_tool",
                        lambda name, package: name)  # depmod, mke2fs
    rel = "6.12.48+deb13-amd64"
    fake_bzimage(tmp_path / f"boot/vmlinuz-{rel}", rel)
    (tmp_path / f"boot/config-{rel}").write_text("# CONFIG_PCI_P2PDMA is not set\n")
    (tmp_path / f"boot/System.map-{rel}").write_text("")
    m = modules(tmp_path / moddir, rel, dep=False)
    k = resolve_kernel(str(tmp_path))
    assert (k.kind, k.release, k.modules_dir) == ("package", rel, m)
    assert k.image_file == tmp_path / f"boot/vmlinuz-{rel}"
    assert k.p2pdma is False
    # the vmlinuz itself, inside the unpacked package, finds the same modules
    k2 = resolve_kernel(str(tmp_path / f"boot/vmlinuz-{rel}"))
    assert (k2.kind, k2.modules_dir, k2.identity()) == ("package", m, k.identity())


def test_package_with_vmlinuz_in_the_modules_directory(tmp_path):
    m = modules(tmp_path / "usr/lib/modules")
    fake_bzimage(m / "vmlinuz")
    k = resolve_kernel(str(tmp_path))
    assert (k.kind, k.image_file, k.modules_dir) == ("package", m / "vmlinuz", m)


def test_package_with_two_kernels(tmp_path):
    fake_bzimage(tmp_path / "boot/vmlinuz-6.1")
    fake_bzimage(tmp_path / "boot/vmlinuz-6.2")
    with pytest.raises(UsageError, match="more than one kernel.*vmlinuz-6.1.*vmlinuz-6.2"):
        resolve_kernel(str(tmp_path))


def test_install_mod_path_tree_with_build_link(tmp_path):
    build = tmp_path / "build"
    fake_bzimage(build / "arch/x86/boot/bzImage")
    (build / ".config").write_text(FULL_CONFIG)
    mp = tmp_path / "mods"
    m = modules(mp / "lib/modules")
    (m / "build").symlink_to(build)
    k = resolve_kernel(str(mp))
    assert (k.kind, k.release, k.modules_dir) == ("install-mod-path", REL, m)
    assert k.image_file == m / "build/arch/x86/boot/bzImage"
    assert k.p2pdma is True


def test_install_mod_path_tree_without_kernel(tmp_path):
    modules(tmp_path / "lib/modules")
    with pytest.raises(UsageError, match=f"modules for {REL} but no kernel image"):
        resolve_kernel(str(tmp_path))


def test_install_mod_path_tree_with_two_releases(tmp_path):
    modules(tmp_path / "lib/modules", "6.1")
    modules(tmp_path / "lib/modules", "6.2")
    with pytest.raises(UsageError, match="more than one release"):
        resolve_kernel(str(tmp_path))


@pytest.mark.parametrize("make", [
    lambda p: p / "missing",
    lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt",
    lambda p: (p / "vmlinux").write_bytes(b"\x7fELF" + bytes(60)) and p / "vmlinux",
    lambda p: p,  # an empty directory
    lambda p: (p / "boot").mkdir() or (p / "boot/vmlinuz-1").write_text("junk") or p,
])
def test_garbage_is_a_usage_error_naming_the_path(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(UsageError) as info:
        resolve_kernel(str(path))
    assert str(path) in str(info.value)
    assert "expected" in str(info.value) or "PVH" in str(info.value)


def test_fingerprint_changes_with_size_or_mtime_not_otherwise(tmp_path):
    m = modules(tmp_path)
    a = tree_fingerprint(m)
    assert tree_fingerprint(m) == a
    f = m / "kernel/drivers/nvme/host/nvme.ko.xz"
    f.write_bytes(b"xy")
    b = tree_fingerprint(m)
    assert b != a
    import os
    os.utime(f, ns=(1, 1))
    assert tree_fingerprint(m) != b


def test_modules_without_modules_dep_need_depmod(tmp_path, monkeypatch):
    import shutil as sh
    from testbed.errors import ToolMissing
    rel = "6.12.48+deb13-amd64"
    fake_bzimage(tmp_path / f"boot/vmlinuz-{rel}", rel)
    modules(tmp_path / "usr/lib/modules", rel, dep=False)
    real = sh.which
    monkeypatch.setattr(sh, "which", lambda name, path=None: None if name == "depmod"
                        else real(name, path=path))
    with pytest.raises(ToolMissing, match="depmod.*kmod"):
        resolve_kernel(str(tmp_path))


@pytest.mark.parametrize("cut", ["truncated", "header-only"])
def test_incomplete_bzimages_are_refused(tmp_path, cut):
    f = fake_bzimage(tmp_path / "bzImage")
    data = f.read_bytes()
    f.write_bytes(data[:-5] if cut == "truncated" else data[:0x600])
    with pytest.raises(UsageError, match="not a complete bzImage"):
        resolve_kernel(str(f))


def fake_arm64_image(path: Path, gz: bool = False) -> Path:
    """Just enough of an arm64 Image: the 64-byte header with 'ARM\\x64' at 0x38."""
    data = bytearray(4096)
    data[0x38:0x3C] = b"ARM\x64"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    return path


def test_the_header_says_which_architecture_a_kernel_file_boots(tmp_path):
    from testbed.kernel.format import kernel_file_arch
    assert kernel_file_arch(fake_bzimage(tmp_path / "bzImage")) == "x86_64"
    assert kernel_file_kind(fake_arm64_image(tmp_path / "Image")) == "Image"
    assert kernel_file_arch(tmp_path / "Image") == "aarch64"
    assert kernel_file_kind(fake_arm64_image(tmp_path / "vmlinuz", gz=True)) == "Image.gz"
    assert kernel_file_arch(tmp_path / "vmlinuz") == "aarch64"
    elf = bytearray(64)
    elf[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<H", elf, 18, 183)  # EM_AARCH64
    (tmp_path / "vmlinux").write_bytes(bytes(elf))
    assert kernel_file_arch(tmp_path / "vmlinux") == "aarch64"
    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"just some text" * 10))
    assert kernel_file_kind(tmp_path / "notes.gz") is None


def test_a_kernel_file_must_boot_the_topologys_machine(tmp_path):
    from testbed.machines import PROFILES
    arm, x86 = PROFILES["aarch64"], PROFILES["x86_64"]
    image = fake_arm64_image(tmp_path / "Image")
    k = resolve_kernel(str(image), arm)
    assert k is not None and k.arch == "aarch64" and k.kind == "image"
    with pytest.raises(UsageError, match=r"is an aarch64 kernel; the topology's machine is "
                                         r"x86_64"):
        resolve_kernel(str(image), x86)
    bz = fake_bzimage(tmp_path / "bzImage")
    assert resolve_kernel(str(bz), x86).arch == "x86_64"
    with pytest.raises(UsageError, match=r"is an x86_64 kernel; the topology's machine is "
                                         r"aarch64 .*arch/arm64/boot/Image"):
        resolve_kernel(str(bz), arm)
    (tmp_path / "junk").write_bytes(b"\0" * 512)
    with pytest.raises(UsageError, match="not an arm64 kernel Image"):
        resolve_kernel(str(tmp_path / "junk"), arm)
    # a built arm64 tree: its image where the aarch64 profile says
    tree = tmp_path / "build"
    fake_arm64_image(tree / "arch/arm64/boot/Image")
    (tree / "include/config").mkdir(parents=True)
    (tree / "include/config/kernel.release").write_text(REL + "\n")
    k = resolve_kernel(str(tree), arm)
    assert k is not None and k.kind == "build-tree" and k.release == REL and k.arch == "aarch64"
