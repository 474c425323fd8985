"""Build (or fetch from the cache) the guest image of an architecture.

    image = ensure_image()                      # the x86-64 guest (amd64)
    image = ensure_image(profile=topo.profile)  # the topology's machine's

Layout: ``<cache_dir()>/images/<recipe-hash>/`` holds base.qcow2, the kernel (vmlinux
(PVH) and vmlinuz (bzImage) for amd64; vmlinuz, the arm64 Image, for arm64),
initrd.cpio, id_ed25519(.pub) (the client key), ssh_host_ed25519_key.pub (the guest's
host key) and manifest.json. A build happens in ``.tmp-<hash>-<pid>`` beside it and is
renamed into place at the end, under a lock file, so an interrupted build leaves nothing
half-built and two concurrent builds do not clash.  An image is built on first use only:
nothing builds the arm64 image until an arm64 topology asks for it.

The host's own architecture: the root tree is made with ``mmdebstrap --mode=root`` (so
building needs root); nothing is mounted by us: ``mke2fs -d`` fills the filesystem,
``qemu-img convert`` makes the qcow2.  Another architecture (:mod:`.foreign`,
:mod:`.stage2`): mmdebstrap only unpacks, and dpkg installs the packages inside one boot
of the image under QEMU.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImageError
from ..kernel.config import Kconfig
from ..kernel.format import extract_vmlinux, has_pvh_entry
from ..kernel.initramfs import ModulePlan, build_initramfs
from ..machines import X86_64, MachineProfile
from ..paths import cache_dir
from . import foreign
from .mirror import resolve_mirror
from .model import MANIFEST, Image
from .recipe import Recipe, load_recipe, recipe_hash
from .stage2 import run_stage2
from .steps import Stages, check_host_tools, mke2fs, remove_tree, run, tool
from .tree import dpkg_versions, find_kernel, place_testbed_files, tree_bytes

if TYPE_CHECKING:
    from .keys import KeyPair

log = logging.getLogger(__name__)

PYTHON_CHECK = "import mmap, ctypes, fcntl, os, json, hashlib, struct; hashlib.sha256(b'x'); ctypes.CDLL(None)"

# Packages whose versions the manifest records (and the machine's kernel package).
PACKAGES_OF_INTEREST = (
    "openssh-server", "nvme-cli", "fio", "pciutils", "kmod",
    "util-linux", "iproute2", "busybox-static", "python3", "python3.13", "libc6",
)


def images_dir() -> Path:
    return cache_dir() / "images"


def host_arch() -> str:
    """The host's Debian architecture (amd64 here)."""
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64")


def cached_image(key: str | None = None, profile: MachineProfile = X86_64) -> Image | None:
    """The cached image of the machine's current recipe, or None if it is not built."""
    key = key or recipe_hash(name=profile.image_recipe)
    directory = images_dir() / key
    if not (directory / MANIFEST).is_file():
        return None
    try:
        return Image.from_directory(directory)
    except ImageError:
        return None


def ensure_image(rebuild: bool = False, profile: MachineProfile = X86_64) -> Image:
    """The guest image for a ``profile`` machine: from the cache, or built now (the host's
    architecture: about a minute; another one: many, most of it dpkg under TCG)."""
    name = profile.image_recipe
    key = recipe_hash(name=name)
    if not rebuild:
        image = cached_image(key)
        if image is not None:
            return image
    root = images_dir()
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / f".lock-{key}"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another build of image %s (lock %s)", key[:12], lock_path)
            fcntl.flock(lock, fcntl.LOCK_EX)
            image = cached_image(key)
            if image is not None:
                return image  # the other build made it (even if we were asked to rebuild)
        if not rebuild:
            image = cached_image(key)
            if image is not None:
                return image
        return _build_locked(key, load_recipe(name), profile)


@dataclass(frozen=True)
class _Built:
    """What the architecture-specific part of a build hands to the common end."""

    release: str
    p2pdma: bool
    pvh: bool
    installed: list[str]
    versions: dict[str, str]
    plan: ModulePlan
    tree_bytes: int


def _needs_root() -> None:
    if os.geteuid() != 0:
        raise ImageError("building the guest image needs root (mmdebstrap --mode=root, "
                         "and mke2fs -d must see root-owned files)")


def _mmdebstrap(recipe: Recipe, mirror: str, target: Path, stages: Stages) -> None:
    _needs_root()
    argv = [tool("mmdebstrap"), "--mode=root", f"--variant={recipe.variant}",
            f"--architectures={recipe.architecture}",
            "--include=" + ",".join(recipe.packages),
            "--aptopt=Acquire::Retries \"3\"",
            "--aptopt=APT::Install-Recommends \"false\""]
    argv += [f"--dpkgopt=path-exclude={p}" for p in recipe.path_exclude]
    argv += [f"--dpkgopt=path-include={p}" for p in recipe.path_include]
    argv += [recipe.suite, str(target), *recipe.sources(mirror)]
    run(argv, "mmdebstrap", stages, stream=True)


def _kernel(recipe: Recipe, profile: MachineProfile, tree: Path, work: Path,
            stages: Stages) -> tuple[str, bool, bool]:
    """Copy the tree's kernel into the image directory; (release, p2pdma, pvh)."""
    release, vmlinuz, config_path = find_kernel(tree)
    config = Kconfig.read(config_path)
    missing = [c for c in recipe.require_config if not config.builtin(c)]
    if missing:
        raise ImageError(
            f"the guest kernel {release} lacks " + ", ".join(f"{c}=y" for c in missing)
            + f" (its config-{release} has "
            + ", ".join(f"{c}={config[c]}" for c in missing)
            + "); the testbed needs a kernel with PCI peer-to-peer DMA "
            f"(Debian's trixie-backports {profile.kernel_package} has it)")
    data = vmlinuz.read_bytes()
    (work / "vmlinuz").write_bytes(data)
    pvh = False
    if recipe.prefer_pvh and profile.kernel_image.direct_elf == "pvh":
        elf = extract_vmlinux(data)
        if has_pvh_entry(elf):
            (work / "vmlinux").write_bytes(elf)
            pvh = True
        else:
            stages.say("the kernel has no PVH entry note: booting the bzImage")
        del elf
    for initrd in (tree / "boot").glob("initrd.img-*"):
        initrd.unlink()  # tiny-initramfs's; the testbed boots with its own
    return release, config.p2pdma, pvh


def _initramfs(recipe: Recipe, tree: Path, release: str, work: Path) -> ModulePlan:
    cpio, plan = build_initramfs(tree, release, recipe.initramfs_init,
                                 early=recipe.early_modules, main=recipe.initramfs_modules,
                                 parallel=recipe.parallel_modules)
    (work / "initrd.cpio").write_bytes(cpio)
    return plan


def _disk_size(recipe: Recipe, used: int) -> int:
    size_mib = recipe.disk_size_mib
    if size_mib * 2**20 < used * 1.3 + 256 * 2**20:
        raise ImageError(f"disk size {size_mib} MiB is too small for a {used >> 20} MiB tree")
    return size_mib


def _native(recipe: Recipe, profile: MachineProfile, mirror: str, work: Path, tree: Path,
            host: KeyPair, client: KeyPair, stages: Stages) -> _Built:
    """The host's own architecture: mmdebstrap installs and configures everything here."""
    with stages("mmdebstrap"):
        _mmdebstrap(recipe, mirror, tree, stages)
    with stages("kernel"):
        release, p2pdma, pvh = _kernel(recipe, profile, tree, work, stages)
    with stages("customize"):
        for old in (tree / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        installed = place_testbed_files(recipe, tree, host.private, host.public, client.public)
        if (tree / "usr/bin/dropbearconvert").exists():
            # dropbear serves SSH (it starts far faster than sshd under TCG) with the
            # same pinned host key, converted to its own format
            (tree / "etc/dropbear").mkdir(exist_ok=True)
            for old in (tree / "etc/dropbear").glob("dropbear_*_host_key"):
                old.unlink()
            conv = subprocess.run([tool("chroot"), str(tree), "/usr/bin/dropbearconvert",
                                   "openssh", "dropbear", "/etc/ssh/ssh_host_ed25519_key",
                                   "/etc/dropbear/dropbear_ed25519_host_key"],
                                  capture_output=True, text=True, check=False)
            if conv.returncode != 0:
                raise ImageError(f"dropbearconvert failed: {conv.stderr.strip()}")
        proc = subprocess.run([tool("chroot"), str(tree), "/usr/bin/python3", "-c", PYTHON_CHECK],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ImageError("the guest's python3 lacks modules the guest tools need:\n"
                             + proc.stderr.strip())
        versions = dpkg_versions(tree)
    with stages("initramfs"):
        plan = _initramfs(recipe, tree, release, work)
    with stages("mke2fs"):
        used = tree_bytes(tree)
        raw = work / "root.raw"
        mke2fs(tree, raw, _disk_size(recipe, used), "testbed-root", stages)
    return _Built(release, p2pdma, pvh, installed, versions, plan, used)


def _foreign(recipe: Recipe, profile: MachineProfile, mirror: str, work: Path, tree: Path,
             host: KeyPair, client: KeyPair, stages: Stages) -> _Built:
    """Another architecture: unpack here, install in one boot of the image (TCG)."""
    _needs_root()
    with stages("mmdebstrap"):
        run(foreign.mmdebstrap_argv(recipe, mirror, tree), "mmdebstrap", stages, stream=True)
    with stages("kernel"):
        releases = sorted(p.parent.name for p in tree.glob("usr/lib/modules/*/vmlinuz"))
        if len(releases) != 1:
            raise ImageError(f"expected one unpacked kernel in /usr/lib/modules, found "
                             f"{releases or 'none'}")
        foreign.host_depmod(tree, releases[0])
        release, p2pdma, pvh = _kernel(recipe, profile, tree, work, stages)
    with stages("stage"):
        stage = work / "stage"
        debs = foreign.downloaded(tree)
        versions = {d.package: d.version for d in debs}
        installed = foreign.make_stage(recipe, tree, stage, host_private=host.private,
                                       host_public=host.public, client_public=client.public,
                                       python_check=PYTHON_CHECK)
    with stages("initramfs"):
        plan = _initramfs(recipe, tree, release, work)
    with stages("mke2fs"):
        used = tree_bytes(tree)  # dpkg unpacks the same files again, in place
        raw = work / "root.raw"
        mke2fs(tree, raw, _disk_size(recipe, used), "testbed-root", stages)
        stage_mib = tree_bytes(stage) * 12 // 10 // 2**20 + 64
        mke2fs(stage, work / "stage.raw", stage_mib, "testbed-stage", stages)
    with stages("second stage"):
        steps = run_stage2(recipe.architecture, kernel=work / "vmlinuz", initrd=work / "initrd.cpio",
                           root=raw, stage=work / "stage.raw", work=work,
                           init=foreign.STAGE_INIT, say=stages.say)
        for step, seconds in steps.items():
            stages.times[f"second stage: {step}"] = seconds
        (work / "stage.raw").unlink()
        remove_tree(stage)
    return _Built(release, p2pdma, pvh, installed, versions, plan, used)


def _build_locked(key: str, recipe: Recipe, profile: MachineProfile) -> Image:
    if recipe.architecture != profile.debian_arch:
        raise ImageError(f"the image recipe {recipe.name!r} is for {recipe.architecture}, the "
                         f"{profile.arch} machine needs {profile.debian_arch}")
    stages = Stages()
    is_foreign = recipe.architecture != host_arch()
    check_host_tools(foreign=is_foreign)
    mirror = resolve_mirror(recipe.mirror)
    images = images_dir()
    for stale in images.glob(f".tmp-{key}-*"):
        stages.say(f"removing stale build directory {stale.name}")
        remove_tree(stale)
    work = images / f".tmp-{key}-{os.getpid()}"
    work.mkdir()
    tree = work / "root"
    started = time.monotonic()
    stages.say(f"building the {recipe.architecture} guest image {key[:12]} in {work}")
    try:
        with stages("keys"):
            from .keys import generate_ed25519  # cryptography: only when building
            client = generate_ed25519("p2pdma-testbed-client")
            host = generate_ed25519("root@testbed")
            client.write(work / "id_ed25519")
            (work / "ssh_host_ed25519_key.pub").write_text(host.public + "\n")

        make = _foreign if is_foreign else _native
        built = make(recipe, profile, mirror, work, tree, host, client, stages)

        with stages("qcow2"):
            raw = work / "root.raw"
            run([tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                 str(work / "base.qcow2")], "qemu-img convert", stages)
            raw.unlink()
            remove_tree(tree)

        versions = built.versions
        manifest = {
            "recipe": recipe.name,
            "recipe_hash": key,
            "suite": recipe.suite,
            "mirror": mirror,
            "kernel_release": built.release,
            "p2pdma": built.p2pdma,
            "pvh": built.pvh,
            "cmdline": list(recipe.cmdline),
            "initramfs_modules": built.plan.names(),
            "host_public_key": host.public_blob,
            "files": {
                "disk": "base.qcow2",
                "kernel": "vmlinux" if built.pvh else "vmlinuz",
                "bzimage": "vmlinuz",
                "initrd": "initrd.cpio",
                "client_key": "id_ed25519",
                "host_public_key": "ssh_host_ed25519_key.pub",
            },
            "installed_files": built.installed,
            "architecture": recipe.architecture,
            "packages": {p: versions[p] for p in (profile.kernel_package, *PACKAGES_OF_INTEREST)
                         if p in versions},
            "linux_image_package": next(
                (f"{p} {v}" for p, v in sorted(versions.items())
                 if p.startswith("linux-image-") and p != profile.kernel_package), None),
            "package_count": len(versions),
            "tree_mib": round(built.tree_bytes / 2**20, 1),
            "disk_size_mib": recipe.disk_size_mib,
            "stage_seconds": stages.times,
            "build_seconds": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        Image.from_directory(work)  # validate before publishing

        dest = images / key
        if dest.exists():
            old = images / f".old-{key}-{os.getpid()}"
            dest.rename(old)
            work.rename(dest)
            remove_tree(old)
        else:
            work.rename(dest)
        stages.say(f"image {key[:12]} ready in {dest} ({manifest['build_seconds']}s)")
        return Image.from_directory(dest)
    except BaseException:
        try:
            remove_tree(work)
        except (ImageError, OSError) as exc:  # pragma: no cover - best effort
            stages.say(f"could not clean up {work}: {exc}")
        raise
