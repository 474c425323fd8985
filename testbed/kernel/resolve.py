"""Custom guest kernels: ``--kernel SPEC`` for boot, run, matrix and the pytest plugin.

    spec = resolve_kernel("/src/linux-build")          # None for "default"
    guest = boot(topo, options=BootOptions(kernel=spec))

``SPEC`` is ``default`` (the image's own kernel), ``profile:NAME[+NAME...][@SRC]`` (a
profile kernel: built now unless the same inputs were built before, from SRC, default
``debian`` = linux-source-7.3; see :mod:`testbed.kernel.profile_build`), a bzImage file,
or a directory:

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
:class:`UsageError` before anything boots, and the result is a frozen
:class:`KernelSpec`.  What a boot needs is made by an explicit step,
:func:`testbed.kernel.prepare.prepare`, without touching the base image, and
cached under ``cache_dir()/kernels/`` keyed by the modules tree's file list, sizes
and mtimes:

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

import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, UsageError
from ..machines import X86_64, MachineProfile
from ..util.procs import find_tool
from .config import Kconfig
from .format import (bzimage_payload, bzimage_release, has_pvh_entry, kernel_file_arch,
                     kernel_file_kind)
from .profile import parse_names
from .profile_build import build_profile_kernel

# With no modules at all, these must be built in to mount the image's root.
REQUIRED_BUILTIN = ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS")


@dataclass(frozen=True)
class KernelSpec:
    """A kernel other than the image's, as found on disk (nothing prepared yet)."""

    spec: str
    kind: str  # bzimage | image (arm64) | build-tree | install-mod-path | package | profile
    path: Path
    image_file: Path
    release: str | None
    modules_dir: Path | None = None
    config_file: Path | None = None
    build_tree: Path | None = None        # profile kernels: make O= (vmlinux, .gcno, ...)
    profiles: tuple[str, ...] = ()        # profile kernels: the profile set
    config_sha256: str | None = None      # profile kernels: sha256 of the .config
    arch: str | None = None               # the machine architecture it boots on: x86_64

    @property
    def label(self) -> str:
        """A short name for tables: the release (with a profile kernel's profile set), else
        the file name."""
        if self.profiles:
            return f"{self.release or '?'} {'+'.join(self.profiles)}"
        return self.release or self.image_file.name

    @property
    def description(self) -> str:
        if self.profiles:
            return (f"profile {'+'.join(self.profiles)} (kernel {self.label}, .config sha256 "
                    f"{(self.config_sha256 or '?')[:16]}, build tree {self.build_tree})")
        mods = f", modules {self.modules_dir}" if self.modules_dir else ", no modules"
        return f"{self.kind} {self.path} (kernel {self.label}{mods})"

    @property
    def config(self) -> Kconfig | None:
        if self.config_file is None:
            return None
        try:
            return Kconfig.read(self.config_file)
        except OSError:
            return None

    @property
    def p2pdma(self) -> bool | None:
        """CONFIG_PCI_P2PDMA=y according to the kernel's config; None if unknown."""
        cfg = self.config
        return None if cfg is None else cfg.p2pdma

    def identity(self) -> str:
        """Identifies the kernel file and modules (for duplicate detection)."""
        mods = self.modules_dir.resolve() if self.modules_dir else ""
        return f"{self.image_file.resolve()}|{mods}"


# -- resolution -----------------------------------------------------------------------

PROFILE_PREFIX = "profile:"


def parse_profile_spec(spec: str) -> tuple[list[str], str]:
    """``profile:base+coverage@/src/linux`` -> (['base', 'coverage'], '/src/linux').

    >>> parse_profile_spec("profile:vfio-iommufd+coverage")
    (['vfio-iommufd', 'coverage'], 'debian')
    """
    body = spec[len(PROFILE_PREFIX):]
    names, _, source = body.partition("@")
    try:
        return parse_names(names), source.strip() or "debian"
    except UsageError as exc:
        raise UsageError(f"--kernel {spec}: {exc} (profile:NAME[+NAME...][@SOURCE])") from None


def _from_profile(spec: str, profile: MachineProfile = X86_64) -> KernelSpec:
    names, source = parse_profile_spec(spec)
    k = build_profile_kernel(source, names, arch=profile.arch)
    assert k is not None
    return _checked(KernelSpec(spec, "profile", k.tree, k.image, k.release, None, k.config,
                               build_tree=k.tree, profiles=k.profiles,
                               config_sha256=k.config_sha256, arch=profile.arch))


def resolve_kernel(spec: str, profile: MachineProfile = X86_64) -> KernelSpec | None:
    """``default`` -> None; otherwise a :class:`KernelSpec` (UsageError when unusable) for a
    ``profile`` machine (where its build tree keeps the image: x86's arch/x86/boot/bzImage;
    which architecture a ``profile:`` kernel is built for)."""
    if spec is None or str(spec).strip() in ("", "default"):
        return None
    if str(spec).startswith(PROFILE_PREFIX):
        return _from_profile(str(spec), profile)
    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise UsageError(f"--kernel {spec}: no such file or directory (expected 'default', "
                         "a bzImage, a built source tree, an INSTALL_MOD_PATH tree or an "
                         "unpacked kernel package)")
    if path.is_file():
        return _from_file(spec, path, profile)
    if path.is_dir():
        return _from_directory(spec, path, profile)
    raise UsageError(f"--kernel {spec}: neither a file nor a directory")


def _check_kernel_file(spec: str, f: Path, profile: MachineProfile) -> str:
    """Refuse a file QEMU's ``-kernel`` cannot boot on ``profile``'s machine; its arch."""
    arch = kernel_file_arch(f)
    if arch is not None and arch != profile.arch:
        raise UsageError(f"--kernel {spec}: {f} is an {arch} kernel; the topology's machine is "
                         f"{profile.arch} (machine.arch): pass a {profile.arch} kernel "
                         f"({profile.kernel_image.path} of a build for it)")
    kind = kernel_file_kind(f)
    if profile.kernel_image.format == "Image":
        if kind in ("Image", "Image.gz"):
            return profile.arch
        raise UsageError(f"--kernel {spec}: {f} is not an arm64 kernel Image (no 'ARM\\x64' "
                         f"magic at offset 0x38, plain or gzip'd): pass "
                         f"{profile.kernel_image.path}")
    if kind == "bzImage":
        try:
            bzimage_payload(f.read_bytes())  # the header's payload must all be there
        except (ImageError, OSError, struct.error) as exc:
            raise UsageError(f"--kernel {spec}: {f} is not a complete bzImage ({exc}): a "
                             "truncated copy, or only the header?") from None
        return profile.arch
    if kind == "elf":
        try:
            ok = has_pvh_entry(f.read_bytes())
        except (ImageError, OSError, struct.error):
            ok = False
        if ok:
            return profile.arch
        raise UsageError(f"--kernel {spec}: {f} is an ELF vmlinux without a PVH entry note; "
                         "QEMU cannot boot it with -kernel: pass arch/x86/boot/bzImage")
    raise UsageError(f"--kernel {spec}: {f} is not an x86 kernel image (expected a bzImage: "
                     "no 'HdrS' boot header)")


def _from_file(spec: str, f: Path, profile: MachineProfile) -> KernelSpec:
    arch = _check_kernel_file(spec, f, profile)
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
            return _checked(KernelSpec(spec, "package", root, f, release, modules, config,
                                       arch=arch))
    kind = "bzimage" if arch == "x86_64" else "image"  # one file: x86 bzImage, arm64 Image
    return _checked(KernelSpec(spec, kind, f, f, release, None, config, arch=arch))


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


def _from_directory(spec: str, d: Path, profile: MachineProfile) -> KernelSpec:
    """``profile``: the machine it boots on (its build tree keeps the image where the
    profile says)."""
    image = profile.kernel_image.path
    # 1. a built source tree (in-tree or the O= directory)
    bz = d / image
    if bz.is_file():
        arch = _check_kernel_file(spec, bz, profile)
        rel_file = d / "include/config/kernel.release"
        if not rel_file.is_file():
            raise UsageError(f"--kernel {spec}: has {image} but no "
                             "include/config/kernel.release (an incomplete build tree?)")
        release = rel_file.read_text().strip()
        modules = _modules_in(d, release)
        return _checked(KernelSpec(spec, "build-tree", d, bz, release, modules,
                                   _existing(d / ".config"), arch=arch))
    if (d / "Makefile").is_file() and (d / "Kconfig").is_file():
        raise UsageError(f"--kernel {spec}: a kernel source tree that has not been built (no "
                         f"{image}); build it with 'testbed kernel build' and pass the build "
                         "directory")

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
        arch = _check_kernel_file(spec, f, profile)
        modules = _modules_in(d, release)
        config = _existing(d / "boot" / f"config-{release}")
        if config is None and modules is not None:
            config = _existing(modules / "config")
        return _checked(KernelSpec(spec, "package", d, f, release, modules, config,
                                   arch=arch))

    # 3. an INSTALL_MOD_PATH tree: lib/modules/<release>, the kernel found beside it
    releases = _module_releases(d)
    if len(releases) > 1:
        raise UsageError(f"--kernel {spec}: modules for more than one release ("
                         + ", ".join(r for r, _ in releases) + "): pass a tree with one kernel")
    if releases:
        release, mdir = releases[0]
        looked = [d / f"vmlinuz-{release}", d / Path(image).name, mdir / "build" / image]
        for f in looked:
            if f.is_file():
                arch = _check_kernel_file(spec, f, profile)
                config = _existing(mdir / "build" / ".config")
                return _checked(KernelSpec(spec, "install-mod-path", d, f, release, mdir,
                                           config, arch=arch))
        raise UsageError(f"--kernel {spec}: modules for {release} but no kernel image; looked "
                         f"for boot/vmlinuz-{release}, "
                         + ", ".join(str(p.relative_to(d)) for p in looked)
                         + " (make install INSTALL_PATH=<tree>/boot puts it there)")

    raise UsageError(f"--kernel {spec}: not a kernel directory; expected a built source tree "
                     f"({image}), an unpacked kernel package (boot/vmlinuz-<release> "
                     "or usr/lib/modules/<release>/vmlinuz) or an INSTALL_MOD_PATH tree "
                     "(lib/modules/<release>)")


def _checked(k: KernelSpec) -> KernelSpec:
    """Refuse, before booting, a kernel whose config says it cannot mount the root, or
    whose modules need a host tool that is missing."""
    if k.modules_dir is not None:
        find_tool("mke2fs", "e2fsprogs")
        if not (k.modules_dir / "modules.dep").is_file():
            find_tool("depmod", "kmod")  # Debian's packages ship no modules.dep
        return k
    cfg = k.config
    if cfg is None or not cfg.is_full:
        return k  # unknown: the boot fails fast on the console panic if it cannot
    lacking = [f"{name}={cfg[name]}" for name in REQUIRED_BUILTIN if not cfg.builtin(name)]
    if lacking:
        raise UsageError(f"--kernel {k.spec}: kernel {k.label} has no modules here and its "
                         f"config ({k.config_file}) lacks built-in {', '.join(lacking)}: it "
                         "cannot mount the image's root (virtio disk, ext4). Build them in "
                         "(testbed kernel build does) or install the modules "
                         "(make modules_install INSTALL_MOD_PATH=<dir>) and pass that tree")
    return k
