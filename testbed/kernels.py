"""Custom guest kernels: ``--kernel SPEC`` for boot, run, matrix and the pytest plugin.

    kernel = resolve_kernel("/src/linux-build")        # None for "default"
    guest = boot(topo, options=BootOptions(kernel=kernel))

``SPEC`` is ``default`` (the image's own kernel), a bzImage file, or a directory:

- a built source tree: ``arch/x86/boot/bzImage``, the release from
  ``include/config/kernel.release``, the config from ``.config`` (modules, if
  any, from ``lib/modules/<release>`` inside it: ``make modules_install
  INSTALL_MOD_PATH=<the build tree>``);
- an ``INSTALL_MOD_PATH`` tree: ``lib/modules/<release>`` plus the kernel as
  ``boot/vmlinuz-<release>`` (``make install INSTALL_PATH=<tree>/boot``) or
  through the ``lib/modules/<release>/build`` link into the build tree;
- an unpacked distro kernel package (``dpkg-deb -x``, ``rpm2cpio | cpio -i``):
  ``boot/vmlinuz-<release>`` or ``usr/lib/modules/<release>/vmlinuz``, modules
  in ``usr/lib/modules/<release>`` or ``lib/modules/<release>``, config in
  ``boot/config-<release>``.

Resolution only looks at the files (no building, no image): bad input is a
:class:`UsageError` before anything boots. What a boot needs is prepared on
first use of :attr:`CustomKernel.initrd` / :attr:`CustomKernel.qemu_args`,
without touching the base image, and cached under ``cache_dir()/kernels/``
keyed by the modules tree's file list, sizes and mtimes:

- a per-kernel initramfs (busybox from the image's initramfs,
  guest-images/kernel/initramfs-init, that kernel's boot-critical modules:
  virtio_pci, virtio_iommu, virtio_rng, virtio_blk, ext4, virtio_net, nvme ...
  whichever are modules, with their dependencies);
- the modules disk: an ext4 image (``mke2fs -d``, no mounts) of
  ``lib/modules/<release>`` (``depmod`` is run on a staged copy when the tree
  has no modules.dep, and the kernel's config is added as ``build/.config`` for
  the guest tool), attached read-only as a virtio disk with serial
  ``tb-modules``; the initramfs mounts it on ``/lib/modules/<release>`` of the
  per-run overlay root, so ``modprobe`` works in the guest.

A kernel without modules boots with no initramfs and needs virtio-pci,
virtio-blk and ext4 built in (``testbed kernel build`` configures that); when
its config is known and they are not, resolution says so; otherwise the boot
fails fast on the kernel's "VFS: Unable to mount root fs" panic.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError, ToolMissing, UsageError
from .image.kernel import parse_config
from .paths import cache_dir, guest_images_dir

LAYOUT_VERSION = 1
MODULES_SERIAL = "tb-modules"
# What the image needs from any kernel: root disk, filesystem, init, console.
BASE_CMDLINE = ("root=/dev/vda", "rootfstype=ext4", "rw", "init=/sbin/init",
                "console=ttyS0", "panic=-1")

# Boot-critical modules (names; the missing and the built-in are skipped),
# in the three streams of the initramfs init (see testbed.image.initramfs).
EARLY_MODULES = ("virtio_pci", "virtio_iommu", "virtio_rng")
# ext4 before 6.15 finds crc32c through the crypto API (request_module, which needs
# modprobe): load the implementations first.
MAIN_MODULES = ("crc32c_generic", "crc32c_intel", "virtio_blk", "ext4")
PARALLEL_MODULES = ("virtio_net", "nvme", "pvpanic_mmio", "pvpanic_pci")

# With no modules at all, these must be built in to mount the image's root.
# prepared kernels kept in the cache (least recently used go first)
KEEP_ENTRIES = 6

REQUIRED_BUILTIN = ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS")


def init_script() -> Path:
    return guest_images_dir() / "kernel" / "initramfs-init"


def kernels_cache() -> Path:
    return cache_dir() / "kernels"


# -- small readers ---------------------------------------------------------------------

def kernel_file_kind(path: Path) -> str | None:
    """``bzImage`` or ``elf`` from the first bytes of ``path``; None if neither."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x210)
    except OSError:
        return None
    if len(head) >= 0x206 and head[0x202:0x206] == b"HdrS":
        return "bzImage"
    if head[:4] == b"\x7fELF":
        return "elf"
    return None


def bzimage_release(path: Path) -> str | None:
    """The release a bzImage's header names (first word of its version string).

    The x86 boot header's ``kernel_version`` (offset 0x20E) points, minus 0x200,
    at ``"7.3.4+bpo-amd64 (debian-kernel@lists.debian.org) #1 SMP ..."``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            ptr = struct.unpack_from("<H", head, 0x20E)[0]
            if not ptr:
                return None
            f.seek(ptr + 0x200)
            raw = f.read(256)
    except OSError:
        return None
    text = raw.split(b"\0", 1)[0].decode(errors="replace").strip()
    return text.split()[0] if text else None


# -- the resolved kernel -------------------------------------------------------------

@dataclass
class Prepared:
    kernel: Path
    initrd: Path | None
    qemu_args: list[str]
    modules_disk: Path | None


class CustomKernel:
    """A kernel other than the image's. The boot code reads ``kernel``, ``initrd``,
    ``cmdline``, ``qemu_args`` and ``description``; the first use of ``kernel``,
    ``initrd`` or ``qemu_args`` prepares what the boot needs (see the module doc)."""

    def __init__(self, spec: str, kind: str, path: Path, image_file: Path,
                 release: str | None, modules_dir: Path | None = None,
                 config_file: Path | None = None):
        self.spec = spec
        self.kind = kind  # bzimage | build-tree | install-mod-path | package
        self.path = path
        self.image_file = image_file
        self.release = release
        self.modules_dir = modules_dir
        self.config_file = config_file
        self.cmdline: tuple[str, ...] = BASE_CMDLINE
        self._prepared: Prepared | None = None

    def __repr__(self) -> str:
        return (f"CustomKernel(kind={self.kind!r}, image_file={str(self.image_file)!r}, "
                f"release={self.release!r}, modules_dir="
                f"{str(self.modules_dir) if self.modules_dir else None!r})")

    # -- facts known without preparing
    @property
    def label(self) -> str:
        """A short name for tables: the release, else the file name."""
        return self.release or self.image_file.name

    @property
    def description(self) -> str:
        mods = f", modules {self.modules_dir}" if self.modules_dir else ", no modules"
        return f"{self.kind} {self.path} (kernel {self.label}{mods})"

    @property
    def config(self) -> dict[str, str] | None:
        if self.config_file is None:
            return None
        try:
            return parse_config(self.config_file.read_text(errors="replace"))
        except OSError:
            return None

    @property
    def p2pdma(self) -> bool | None:
        """CONFIG_PCI_P2PDMA=y according to the kernel's config; None if unknown."""
        cfg = self.config
        return None if cfg is None else cfg.get("CONFIG_PCI_P2PDMA") == "y"

    def identity(self) -> str:
        """Identifies the kernel file and modules (for duplicate detection)."""
        mods = self.modules_dir.resolve() if self.modules_dir else ""
        return f"{self.image_file.resolve()}|{mods}"

    # -- what the boot reads
    @property
    def kernel(self) -> Path:
        return self.prepare().kernel

    @property
    def initrd(self) -> Path | None:
        return self.prepare().initrd

    @property
    def qemu_args(self) -> list[str]:
        return list(self.prepare().qemu_args)

    def prepare(self, image=None, progress=None) -> Prepared:
        if self._prepared is None:
            self._prepared = _prepare(self, image, progress)
        return self._prepared


# -- resolution -----------------------------------------------------------------------

def resolve_kernel(spec: str) -> CustomKernel | None:
    """``default`` -> None; otherwise a :class:`CustomKernel` (UsageError when unusable)."""
    if spec is None or str(spec).strip() in ("", "default"):
        return None
    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise UsageError(f"--kernel {spec}: no such file or directory (expected 'default', "
                         "a bzImage, a built source tree, an INSTALL_MOD_PATH tree or an "
                         "unpacked kernel package)")
    if path.is_file():
        return _from_file(spec, path)
    if path.is_dir():
        return _from_directory(spec, path)
    raise UsageError(f"--kernel {spec}: neither a file nor a directory")


def _check_kernel_file(spec: str, f: Path) -> None:
    kind = kernel_file_kind(f)
    if kind == "bzImage":
        return
    if kind == "elf":
        from .image.kernel import has_pvh_entry
        try:
            ok = has_pvh_entry(f.read_bytes())
        except (ImageError, OSError, struct.error):
            ok = False
        if ok:
            return
        raise UsageError(f"--kernel {spec}: {f} is an ELF vmlinux without a PVH entry note; "
                         "QEMU cannot boot it with -kernel: pass arch/x86/boot/bzImage")
    raise UsageError(f"--kernel {spec}: {f} is not an x86 kernel image (expected a bzImage: "
                     "no 'HdrS' boot header)")


def _from_file(spec: str, f: Path) -> CustomKernel:
    _check_kernel_file(spec, f)
    release = bzimage_release(f)
    modules = config = None
    # boot/vmlinuz-<release> of an unpacked package: use the package's modules too
    if f.parent.name == "boot" and f.name.startswith("vmlinuz-"):
        rel = f.name[len("vmlinuz-"):]
        root = f.parent.parent
        modules = _modules_in(root, rel)
        config = _existing(root / "boot" / f"config-{rel}")
        release = rel if modules else (release or rel)
        if modules:
            return _checked(CustomKernel(spec, "package", root, f, release, modules, config))
    return _checked(CustomKernel(spec, "bzimage", f, f, release, None, config))


def _existing(p: Path) -> Path | None:
    return p if p.is_file() else None


def _modules_in(root: Path, release: str) -> Path | None:
    for sub in ("usr/lib/modules", "lib/modules"):
        d = root / sub / release
        if d.is_dir() and any(d.iterdir()):
            return d
    return None


def _module_releases(root: Path) -> list[tuple[str, Path]]:
    """(release, directory) of every ``usr/lib/modules/*`` and ``lib/modules/*`` (once each
    when lib is a link to usr/lib)."""
    found: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for sub in ("usr/lib/modules", "lib/modules"):
        base = root / sub
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and d.resolve() not in seen:
                seen.add(d.resolve())
                found.append((d.name, d))
    return found


def _from_directory(spec: str, d: Path) -> CustomKernel:
    # 1. a built source tree (in-tree or the O= directory)
    bz = d / "arch/x86/boot/bzImage"
    if bz.is_file():
        _check_kernel_file(spec, bz)
        rel_file = d / "include/config/kernel.release"
        if not rel_file.is_file():
            raise UsageError(f"--kernel {spec}: has arch/x86/boot/bzImage but no "
                             "include/config/kernel.release (an incomplete build tree?)")
        release = rel_file.read_text().strip()
        modules = _modules_in(d, release)
        return _checked(CustomKernel(spec, "build-tree", d, bz, release, modules,
                                     _existing(d / ".config")))
    if (d / "Makefile").is_file() and (d / "Kconfig").is_file():
        raise UsageError(f"--kernel {spec}: a kernel source tree that has not been built (no "
                         "arch/x86/boot/bzImage); build it with 'testbed kernel build' and pass "
                         "the build directory")

    # 2. an unpacked package: boot/vmlinuz-* or usr/lib/modules/*/vmlinuz
    candidates: list[tuple[str, Path]] = []
    for f in sorted((d / "boot").glob("vmlinuz-*")) if (d / "boot").is_dir() else []:
        if f.is_file():
            candidates.append((f.name[len("vmlinuz-"):], f))
    for release, mdir in _module_releases(d):
        if (mdir / "vmlinuz").is_file() and release not in {r for r, _ in candidates}:
            candidates.append((release, mdir / "vmlinuz"))
    if len(candidates) > 1:
        raise UsageError(f"--kernel {spec}: more than one kernel in the directory ("
                         + ", ".join(str(f.relative_to(d)) for _, f in candidates)
                         + "): pass the vmlinuz file you mean")
    if candidates:
        release, f = candidates[0]
        _check_kernel_file(spec, f)
        modules = _modules_in(d, release)
        config = _existing(d / "boot" / f"config-{release}")
        if config is None and modules is not None:
            config = _existing(modules / "config")
        return _checked(CustomKernel(spec, "package", d, f, release, modules, config))

    # 3. an INSTALL_MOD_PATH tree: lib/modules/<release>, the kernel found beside it
    releases = _module_releases(d)
    if len(releases) > 1:
        raise UsageError(f"--kernel {spec}: modules for more than one release ("
                         + ", ".join(r for r, _ in releases) + "): pass a tree with one kernel")
    if releases:
        release, mdir = releases[0]
        looked = [d / f"vmlinuz-{release}", d / "bzImage",
                  mdir / "build" / "arch/x86/boot/bzImage"]
        for f in looked:
            if f.is_file():
                _check_kernel_file(spec, f)
                config = _existing(mdir / "build" / ".config")
                return _checked(CustomKernel(spec, "install-mod-path", d, f, release, mdir,
                                             config))
        raise UsageError(f"--kernel {spec}: modules for {release} but no kernel image; looked "
                         f"for boot/vmlinuz-{release}, "
                         + ", ".join(str(p.relative_to(d)) for p in looked)
                         + " (make install INSTALL_PATH=<tree>/boot puts it there)")

    raise UsageError(f"--kernel {spec}: not a kernel directory; expected a built source tree "
                     "(arch/x86/boot/bzImage), an unpacked kernel package (boot/vmlinuz-<release> "
                     "or usr/lib/modules/<release>/vmlinuz) or an INSTALL_MOD_PATH tree "
                     "(lib/modules/<release>)")


def _checked(k: CustomKernel) -> CustomKernel:
    """Refuse, before booting, a kernel whose config says it cannot mount the root, or
    whose modules need a host tool that is missing."""
    if k.modules_dir is not None:
        _tool("mke2fs", "e2fsprogs")
        if not (k.modules_dir / "modules.dep").is_file():
            _tool("depmod", "kmod")  # Debian's packages ship no modules.dep
        return k
    cfg = k.config
    if cfg is None:
        return k  # unknown: the boot fails fast on the console panic if it cannot
    if cfg.get("CONFIG_PCI") is None and cfg.get("CONFIG_VIRTIO_BLK") is None:
        return k  # not a full config
    lacking = [f"{name}={cfg.get(name, 'n')}" for name in REQUIRED_BUILTIN
               if cfg.get(name) != "y"]
    if lacking:
        raise UsageError(f"--kernel {k.spec}: kernel {k.label} has no modules here and its "
                         f"config ({k.config_file}) lacks built-in {', '.join(lacking)}: it "
                         "cannot mount the image's root (virtio disk, ext4). Build them in "
                         "(testbed kernel build does) or install the modules "
                         "(make modules_install INSTALL_MOD_PATH=<dir>) and pass that tree")
    return k


# -- preparation (initramfs, modules disk) --------------------------------------------

def tree_fingerprint(d: Path) -> str:
    """sha256 of a tree's file list with sizes and mtimes (symlinks: their target)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, d)
        for name in sorted(filenames + [n for n in dirnames if os.path.islink(
                os.path.join(dirpath, n))]):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if os.path.islink(p):
                h.update(f"{rel_dir}/{name}\0l\0{os.readlink(p)}\n".encode())
            else:
                h.update(f"{rel_dir}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise ToolMissing(name, package=package)
    return found


def _say(progress, msg: str) -> None:
    if progress:
        progress(msg)


def _prepare(k: CustomKernel, image, progress) -> Prepared:
    kernel_file = _boot_file(k, progress)
    if k.modules_dir is None:
        return Prepared(kernel_file, None, [], None)
    if image is None:
        from .image.build import ensure_image
        image = ensure_image(progress=progress)
    if image.initrd is None:
        raise ImageError("the image has no initramfs to take busybox from")
    script = init_script()
    h = hashlib.sha256(f"p2pdma-testbed kernel layout {LAYOUT_VERSION}\0{k.release}\0".encode())
    h.update(script.read_bytes())
    h.update(_file_identity(image.initrd).encode())
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
                _build(k, image, script, directory, progress)
                prune_cache()
    _touch(directory)
    initrd = directory / "initrd.cpio"
    disk = directory / "modules.ext4"
    args = ["-drive", f"file={disk},if=none,id=tb-modules,format=raw,readonly=on",
            "-device", f"virtio-blk-pci,drive=tb-modules,serial={MODULES_SERIAL},bus=pcie.0"]
    return Prepared(kernel_file, initrd, args, disk)


def _boot_file(k: CustomKernel, progress) -> Path:
    """The file for -kernel: the uncompressed vmlinux when it has a PVH entry (saves the
    decompressor, ~1.4 s under TCG), cached by the kernel file's identity; else as given."""
    if kernel_file_kind(k.image_file) != "bzImage":
        return k.image_file
    key = _file_sha256(k.image_file)[:32]
    d = kernels_cache() / f"vmlinux-{key}"
    if (d / "vmlinux").is_file():
        _touch(d)
        return d / "vmlinux"
    if (d / "no-pvh").is_file():
        return k.image_file
    from .image.kernel import extract_vmlinux, has_pvh_entry
    try:
        elf = extract_vmlinux(k.image_file.read_bytes())
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
    _say(progress, f"kernel {k.label}: booting its vmlinux through the PVH entry")
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


def _build(k: CustomKernel, image, script: Path, directory: Path, progress) -> None:
    from .image.cpio import read_cpio
    from .image.initramfs import build_initramfs

    mke2fs = _tool("mke2fs", "e2fsprogs")
    tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _say(progress, f"kernel {k.label}: staging modules from {k.modules_dir}")
        root = tmp / "root"
        moddir = root / "lib/modules" / k.release
        size = _stage_tree(k.modules_dir, moddir)
        if not (moddir / "modules.dep").is_file():
            depmod = _tool("depmod", "kmod")
            _say(progress, f"kernel {k.label}: no modules.dep; running depmod")
            proc = subprocess.run([depmod, "-b", str(root), k.release], capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode != 0 or not (moddir / "modules.dep").is_file():
                raise ImageError(f"depmod failed for {k.modules_dir}: {proc.stderr.strip()}")
        if k.config_file is not None:
            (moddir / "build").mkdir(exist_ok=True)
            target = moddir / "build" / ".config"
            target.unlink(missing_ok=True)  # may be a hard link into the user's tree
            shutil.copyfile(k.config_file, target)

        busybox = [e for e in read_cpio(image.initrd.read_bytes()) if e.name == "bin/busybox"]
        if not busybox:
            raise ImageError(f"no bin/busybox in the image's initramfs {image.initrd}")
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (root / "usr/bin/busybox").write_bytes(busybox[0].data)

        cpio, plan = build_initramfs(root, k.release, script, early=list(EARLY_MODULES),
                                     main=list(MAIN_MODULES), parallel=list(PARALLEL_MODULES))
        (tmp / "initrd.cpio").write_bytes(cpio)
        (root / "usr/bin/busybox").unlink()

        files = sum(len(f) + len(dn) for _, dn, f in os.walk(moddir))
        mib = max(32, int(size * 1.3) // (1 << 20) + 32)
        _say(progress, f"kernel {k.label}: modules disk ({mib} MiB, {files} entries)")
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
        _say(progress, f"kernel {k.label}: initramfs loads {', '.join(loaded) or 'nothing'}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def kernel_label(kernel: CustomKernel | None) -> str:
    return "default" if kernel is None else kernel.label


__all__ = ["CustomKernel", "resolve_kernel", "kernel_label"]
