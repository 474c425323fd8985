"""Prepare a custom kernel for booting: an explicit step that returns a frozen
description of what QEMU needs (the ``-kernel`` file, an initramfs, extra drives).

    prepared = prepare(resolve_kernel("/build/linux"), base_initrd=image.initrd)
    prepared.kernel, prepared.initrd, prepared.drives

For a kernel with modules: a per-kernel initramfs (busybox from the image's
initramfs, guest-images/kernel/initramfs-init, that kernel's boot-critical
modules) and a read-only modules disk (ext4 made with ``mke2fs -d``, no mounts)
that the initramfs mounts on ``/lib/modules/<release>`` of the per-run overlay
root.  A bzImage with a PVH entry is booted as its uncompressed vmlinux (saves
the decompressor, ~1.4 s under TCG).  Everything is cached under
``cache_dir()/kernels/`` and the least recently used entries are pruned.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from ..machines import X86_64, MachineProfile
from ..paths import cache_dir, guest_images_dir
from ..qemu.cmdline import Drive
from ..util.fingerprint import tree_fingerprint
from ..util.procs import find_tool
from .cpio import read_cpio
from .format import extract_vmlinux, has_pvh_entry, kernel_file_kind
from .initramfs import build_initramfs
from .resolve import KernelSpec

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
MODULES_SERIAL = "tb-modules"


def base_cmdline(profile: MachineProfile) -> tuple[str, ...]:
    """What the image needs from any kernel: root disk, filesystem, init, the machine's
    console."""
    return ("root=/dev/vda", "rootfstype=ext4", "rw", "init=/sbin/init",
            profile.console_word, "panic=-1")


BASE_CMDLINE = base_cmdline(X86_64)  # on the default machine

# Boot-critical modules (names; the missing and the built-in are skipped),
# in the three streams of the initramfs init (see testbed.kernel.initramfs).
EARLY_MODULES = ("virtio_pci", "virtio_iommu", "virtio_rng")
# ext4 before 6.15 finds crc32c through the crypto API (request_module, which needs
# modprobe): load the implementations first.
MAIN_MODULES = ("crc32c_generic", "crc32c_intel", "virtio_blk", "ext4")
PARALLEL_MODULES = ("virtio_net", "nvme", "pvpanic_mmio", "pvpanic_pci")

# prepared kernels kept in the cache (least recently used go first)
KEEP_ENTRIES = 6


@dataclass(frozen=True)
class PreparedKernel:
    """What a boot passes to QEMU for a kernel: frozen, built before the boot."""

    kernel: Path  # for -kernel: a vmlinux with a PVH entry, or the bzImage
    initrd: Path | None
    cmdline: tuple[str, ...]  # words the kernel needs on top of the image's
    drives: tuple[Drive, ...]  # e.g. the modules disk
    label: str  # short, for tables ("default", "7.3.4")
    description: str
    release: str | None
    p2pdma: bool | None = None
    build_tree: Path | None = None     # profile kernels: the kept build tree (make O=)
    profiles: tuple[str, ...] = ()     # profile kernels: the profile set
    config_sha256: str | None = None   # profile kernels: sha256 of the .config


def init_script() -> Path:
    return guest_images_dir() / "kernel" / "initramfs-init"


def kernels_cache() -> Path:
    return cache_dir() / "kernels"


def prepare(spec: KernelSpec, base_initrd: Path | None,
            profile: MachineProfile = X86_64) -> PreparedKernel:
    """Everything a boot of ``spec`` on a ``profile`` machine needs, built (or found in the
    cache) now.

    ``base_initrd`` is the image's initramfs: busybox comes from it."""
    kernel_file = _boot_file(spec, profile)
    drives: tuple[Drive, ...] = ()
    initrd = None
    if spec.modules_dir is not None:
        if base_initrd is None:
            raise ImageError("the image has no initramfs to take busybox from")
        directory = _prepared_directory(spec, base_initrd)
        initrd = directory / "initrd.cpio"
        drives = (Drive(directory / "modules.ext4", "tb-modules", MODULES_SERIAL),)
    return PreparedKernel(kernel=kernel_file, initrd=initrd, cmdline=base_cmdline(profile),
                          drives=drives, label=spec.label, description=spec.description,
                          release=spec.release, p2pdma=spec.p2pdma,
                          build_tree=spec.build_tree, profiles=spec.profiles,
                          config_sha256=spec.config_sha256)


def _file_identity(p: Path | None) -> str:
    if p is None:
        return "-"
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prune_cache(keep: int = KEEP_ENTRIES) -> None:
    """Keep the ``keep`` most recently used prepared kernels (and vmlinux extractions)."""
    base = kernels_cache()
    if not base.is_dir():
        return
    for prefix in ("vmlinux-", ""):
        entries = [d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and d.name.startswith("vmlinux-") == bool(prefix)]
        entries.sort(key=lambda d: d.stat().st_mtime, reverse=True)
        for d in entries[keep:]:
            shutil.rmtree(d, ignore_errors=True)
            (base / f".lock-{d.name}").unlink(missing_ok=True)


def _touch(d: Path) -> None:
    try:
        os.utime(d)
    except OSError:
        pass


def _prepared_directory(k: KernelSpec, base_initrd: Path) -> Path:
    """The cache directory with ``initrd.cpio`` and ``modules.ext4`` for ``k``."""
    assert k.modules_dir is not None and k.release is not None
    script = init_script()
    h = hashlib.sha256(f"p2pdma-testbed kernel layout {LAYOUT_VERSION}\0{k.release}\0".encode())
    h.update(script.read_bytes())
    h.update(_file_identity(base_initrd).encode())
    h.update(_file_identity(k.config_file).encode())
    h.update(tree_fingerprint(k.modules_dir).encode())
    h.update(repr((EARLY_MODULES, MAIN_MODULES, PARALLEL_MODULES)).encode())
    key = h.hexdigest()[:32]
    directory = kernels_cache() / key
    if not (directory / "manifest.json").is_file():
        kernels_cache().mkdir(parents=True, exist_ok=True)
        with open(kernels_cache() / f".lock-{key}", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (directory / "manifest.json").is_file():
                _build(k, base_initrd, script, directory)
                prune_cache()
    _touch(directory)
    return directory


def _boot_file(k: KernelSpec, profile: MachineProfile) -> Path:
    """The file for -kernel: where the machine boots an uncompressed ELF kernel directly (x86:
    a bzImage's vmlinux with a PVH entry, which saves the decompressor, ~1.4 s under TCG),
    that, cached by the kernel file's identity; else as given."""
    if profile.kernel_image.direct_elf != "pvh" or kernel_file_kind(k.image_file) != "bzImage":
        return k.image_file
    # one read: the key and the extraction come from the same bytes, even when a rebuild
    # replaces the file meanwhile (a key of the new file over the old one's vmlinux booted a
    # stale kernel: its build number and gcov stamps no longer matched its tree)
    data = k.image_file.read_bytes()
    key = hashlib.sha256(data).hexdigest()[:32]
    d = kernels_cache() / f"vmlinux-{key}"
    if (d / "vmlinux").is_file():
        _touch(d)
        return d / "vmlinux"
    if (d / "no-pvh").is_file():
        return k.image_file
    try:
        elf = extract_vmlinux(data)
        pvh = has_pvh_entry(elf)
    except Exception:  # noqa: BLE001 - any trouble: boot the bzImage as given
        elf, pvh = b"", False
    d.mkdir(parents=True, exist_ok=True)
    if not pvh:
        (d / "no-pvh").write_text("")
        return k.image_file
    tmp = d / f".vmlinux.{os.getpid()}"
    tmp.write_bytes(elf)
    tmp.replace(d / "vmlinux")
    log.info("kernel %s: booting its vmlinux through the PVH entry", k.label)
    return d / "vmlinux"


def _stage_tree(src: Path, dst: Path) -> int:
    """Hard-link (or copy) ``src`` into ``dst``; skips the top-level build/source links.
    Returns the number of bytes."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dst / rel if rel != "." else dst
        target_dir.mkdir(parents=True, exist_ok=True)
        names = list(filenames)
        for n in list(dirnames):
            if os.path.islink(os.path.join(dirpath, n)):
                dirnames.remove(n)
                names.append(n)
        for n in names:
            s = os.path.join(dirpath, n)
            t = target_dir / n
            if rel == "." and n in ("build", "source"):
                continue
            if os.path.islink(s):
                link = os.readlink(s)
                os.symlink(link, t)
                continue
            try:
                os.link(s, t)
            except OSError:
                shutil.copy2(s, t)
            total += os.path.getsize(s)
    return total


def _build(k: KernelSpec, base_initrd: Path, script: Path, directory: Path) -> None:
    assert k.modules_dir is not None and k.release is not None
    mke2fs = find_tool("mke2fs", "e2fsprogs")
    tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        log.info("kernel %s: staging modules from %s", k.label, k.modules_dir)
        root = tmp / "root"
        moddir = root / "lib/modules" / k.release
        size = _stage_tree(k.modules_dir, moddir)
        if not (moddir / "modules.dep").is_file():
            depmod = find_tool("depmod", "kmod")
            log.info("kernel %s: no modules.dep; running depmod", k.label)
            proc = subprocess.run([depmod, "-b", str(root), k.release], capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode != 0 or not (moddir / "modules.dep").is_file():
                raise ImageError(f"depmod failed for {k.modules_dir}: {proc.stderr.strip()}")
        if k.config_file is not None:
            (moddir / "build").mkdir(exist_ok=True)
            target = moddir / "build" / ".config"
            target.unlink(missing_ok=True)  # may be a hard link into the user's tree
            shutil.copyfile(k.config_file, target)

        busybox = [e for e in read_cpio(base_initrd.read_bytes()) if e.name == "bin/busybox"]
        if not busybox:
            raise ImageError(f"no bin/busybox in the image's initramfs {base_initrd}")
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (root / "usr/bin/busybox").write_bytes(busybox[0].data)

        cpio, plan = build_initramfs(root, k.release, script, early=list(EARLY_MODULES),
                                     main=list(MAIN_MODULES), parallel=list(PARALLEL_MODULES))
        (tmp / "initrd.cpio").write_bytes(cpio)
        (root / "usr/bin/busybox").unlink()

        files = sum(len(f) + len(dn) for _, dn, f in os.walk(moddir))
        mib = max(32, int(size * 1.3) // (1 << 20) + 32)
        log.info("kernel %s: modules disk (%d MiB, %d entries)", k.label, mib, files)
        proc = subprocess.run([mke2fs, "-q", "-F", "-t", "ext4", "-O", "^has_journal",
                               "-L", MODULES_SERIAL, "-N", str(files * 2 + 1024),
                               "-E", "root_owner=0:0", "-d", str(moddir),
                               str(tmp / "modules.ext4"), f"{mib}M"],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise ImageError(f"mke2fs of the modules disk failed: {proc.stderr.strip()}")
        shutil.rmtree(root)
        manifest = {"release": k.release, "source": str(k.path), "kind": k.kind,
                    "modules_dir": str(k.modules_dir), "initramfs_modules": plan.names(),
                    "config": str(k.config_file) if k.config_file else None}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
        loaded = plan.names()["early"] + plan.names()["main"] + plan.names()["parallel"]
        log.info("kernel %s: initramfs loads %s", k.label, ", ".join(loaded) or "nothing")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
